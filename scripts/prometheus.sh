#!/usr/bin/env bash
# Prometheus tooling from Debian's `prometheus` package: `promtool check metrics` validates
# the TaskManagers' Prometheus exposition in tests/test_flink_secrets_metrics.py.
#
#   scripts/prometheus.sh install     apt-get install prometheus if promtool is missing (idempotent;
#                                     the .debs are kept in .cache/apt); no server is started
#   scripts/prometheus.sh check URL   fetch URL (e.g. http://127.0.0.1:9250/metrics) and run
#                                     promtool check metrics on it
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${FLEXPRICE_CACHE_DIR:-$ROOT/.cache}"
log() { printf '[prometheus.sh] %s\n' "$*" >&2; }

cmd_install() {
  if command -v promtool >/dev/null 2>&1; then
    log "promtool present: $(promtool --version 2>&1 | head -1)"
    return 0
  fi
  command -v apt-get >/dev/null || { log "ERROR: promtool missing and no apt-get"; exit 1; }
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  local archives="$CACHE/apt/archives"
  mkdir -p "$archives/partial"
  log "installing Debian's prometheus package (promtool)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    -o "Dir::Cache::archives=$archives" prometheus >"$CACHE/apt/install.log" 2>&1 ||
    { tail -20 "$CACHE/apt/install.log" >&2; log "ERROR: apt-get install prometheus failed"; exit 1; }
  command -v promtool >/dev/null || { log "ERROR: promtool still missing"; exit 1; }
}

cmd_check() {
  curl -fsS --max-time 10 "$1" | promtool check metrics
}

case "${1:-}" in
  install) cmd_install ;;
  check) shift; cmd_check "$@" ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
