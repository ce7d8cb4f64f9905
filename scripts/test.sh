#!/usr/bin/env bash
# Command 2 of the README (what .ci/run calls): install everything, start the real
# components the tests need (Kafka broker, Flink cluster, MinIO), run pytest, stop them again.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh -k sink         # extra arguments go to pytest
#   SKIP_SERVICES=1 ./scripts/test.sh tests/test_config.py   # no broker/cluster needed
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p .cache
started=$(date +%s)
./scripts/bootstrap.sh
# The package's layers (pyproject.toml, docs/architecture.md): imports only go down, no cycles.
.venv/bin/lint-imports --no-cache > .cache/lint-imports.log 2>&1 ||
  { cat .cache/lint-imports.log; echo "test.sh: lint-imports found a broken layer contract" >&2; exit 1; }
echo "test.sh: layer contracts kept ($(grep -c KEPT .cache/lint-imports.log) of them)"

stop_services() {
  [ -x scripts/minio.sh ] && scripts/minio.sh stop >/dev/null 2>&1 || true
  [ -x scripts/flink.sh ] && scripts/flink.sh stop >/dev/null 2>&1 || true
  [ -x scripts/kafka.sh ] && scripts/kafka.sh stop >/dev/null 2>&1 || true
}
if [ -z "${SKIP_SERVICES:-}" ]; then
  trap stop_services EXIT
  # MinIO's cold build (go install) takes minutes: run it while the JVM services install.
  minio_install=""
  if [ -x scripts/minio.sh ]; then
    scripts/minio.sh install > .cache/minio-install.log 2>&1 &
    minio_install=$!
  fi
  if [ -x scripts/kafka.sh ]; then
    scripts/kafka.sh install
    scripts/kafka.sh install-prism     # local streaming runner for unbounded Kafka input
    scripts/kafka.sh start
    scripts/kafka.sh wait
    eval "$(scripts/kafka.sh env)"
  fi
  [ -x scripts/prometheus.sh ] && scripts/prometheus.sh install   # promtool (Debian's prometheus)
  if [ -x scripts/flink.sh ]; then
    scripts/flink.sh install
    # started after `kafka.sh env`: the job server and TaskManagers resolve
    # ${env:KAFKA_SASL_PASSWORD} for sasl.password_env jobs (docs/runners.md, "Secrets")
    scripts/flink.sh start
    eval "$(scripts/flink.sh env)"
  fi
  if [ -n "$minio_install" ]; then
    wait "$minio_install" || { tail -20 .cache/minio-install.log; echo "test.sh: MinIO build failed" >&2; exit 1; }
    scripts/minio.sh start
    eval "$(scripts/minio.sh env)"
  fi
  echo "test.sh: services ready after $(( $(date +%s) - started ))s"
fi

status=0
# Every tool is installed above: a test of one that is missing fails (tests/conftest.py).
[ -z "${SKIP_SERVICES:-}" ] && export FLEXPRICE_TEST_TOOLS=required
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests — that is a failure here" >&2
  status=1
fi
echo "test.sh: finished in $(( $(date +%s) - started ))s with status $status"
exit "$status"
