#!/usr/bin/env bash
# Command 1 of the README: set up what is missing and run the collector locally.
#
#   ./run_local.sh                 # stand-in Flexprice on 127.0.0.1, 100 generated events
#   GENERATE_COUNT=100000 ./run_local.sh
#   FLEXPRICE_API_HOST=api.cloud.flexprice.io FLEXPRICE_API_KEY=fp_xxx ./run_local.sh
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p .cache
./scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

mock_pid=""
cleanup() { [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${FLEXPRICE_API_HOST:-}" ]; then
  port="${MOCK_PORT:-18080}"
  export FLEXPRICE_API_HOST="127.0.0.1:$port" FLEXPRICE_API_SCHEME=http
  export FLEXPRICE_API_KEY="${FLEXPRICE_API_KEY:-local-dev-key}"
  flexprice-beam mock-server --host 127.0.0.1 --port "$port" --api-key "$FLEXPRICE_API_KEY" \
    > .cache/mock-server.log 2>&1 &
  mock_pid=$!
  for _ in $(seq 1 100); do
    grep -q "listening" .cache/mock-server.log 2>/dev/null && break
    kill -0 "$mock_pid" 2>/dev/null || { cat .cache/mock-server.log; exit 1; }
    sleep 0.1
  done
  echo "Using the local Flexprice stand-in at http://$FLEXPRICE_API_HOST (log: .cache/mock-server.log)"
else
  echo "Using Flexprice at ${FLEXPRICE_API_SCHEME:-https}://$FLEXPRICE_API_HOST"
fi

status=0
flexprice-beam run -c "${CONFIG:-examples/generate.yaml}" "$@" || status=$?

if [ -n "$mock_pid" ]; then
  echo "What the stand-in holds now:"
  python - "$FLEXPRICE_API_HOST" <<'PY'
import json, sys, urllib.request
stats = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/_mock/stats"))
print(json.dumps(stats, indent=2))
PY
fi
exit "$status"
