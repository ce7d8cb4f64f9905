#!/usr/bin/env bash
# Local S3-compatible object store (MinIO) for the dead letters on s3:// — built from the Go
# module proxy (no Docker, no binary download), started on 127.0.0.1.
#
# Usage: scripts/minio.sh <command>
#   install     build the pinned MinIO server into .cache/bin/minio (idempotent; a cold
#               build takes several minutes: see docs/reliability.md)
#   start       install if needed, start the server, wait until ready, create the bucket
#   stop        stop the server started by `start`
#   status      exit 0 when running, 3 when not
#   env         print `export ...` lines (endpoint, credentials, bucket) for tests and runs
#   wait        wait (<= MINIO_WAIT_TIMEOUT s, default 60) until the server answers
#
# Everything lives under <repo>/.cache (gitignored): .cache/bin/minio, .cache/minio/{data,logs}.
#
# Environment knobs: MINIO_CACHE_DIR or FLEXPRICE_CACHE_DIR (cache root), MINIO_PORT (default 19000),
# MINIO_CONSOLE_PORT (default 19001), MINIO_BUCKET (default flexprice-dead-letters),
# MINIO_VERSION (Go pseudo-version of github.com/minio/minio), MINIO_WAIT_TIMEOUT.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="${MINIO_CACHE_DIR:-${FLEXPRICE_CACHE_DIR:-$ROOT/.cache}}"
MDIR="$CACHE/minio"
BIN="$CACHE/bin/minio"
PIDFILE="$MDIR/minio.pid"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

# The newest commit the Go module proxy served on 2026-12-01 (`go list -m
# github.com/minio/minio@latest`); MinIO stopped tagging module versions, so it is a
# pseudo-version. Pinned: the same server in every run.
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
HOST=127.0.0.1
PORT="${MINIO_PORT:-19000}"
CONSOLE_PORT="${MINIO_CONSOLE_PORT:-19001}"
BUCKET="${MINIO_BUCKET:-flexprice-dead-letters}"
ACCESS_KEY=flexprice
SECRET_KEY=flexprice-secret

log() { printf '[minio.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

running_pid() {
  [[ -f $PIDFILE ]] || return 1
  local pid
  pid=$(<"$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$BIN server" && echo "$pid"
}

cmd_install() {
  if [[ -x $BIN && -f $BIN.version && $(cat "$BIN.version") == "$MINIO_VERSION" ]]; then
    log "minio $MINIO_VERSION: already installed at $BIN"
    return
  fi
  command -v go >/dev/null || die "go not found"
  mkdir -p "$CACHE/bin"
  log "building minio $MINIO_VERSION into $BIN (cold: several minutes)"
  local t0=$SECONDS
  GOBIN="$CACHE/bin" GOFLAGS=-mod=mod CGO_ENABLED=0 go install \
    "github.com/minio/minio@$MINIO_VERSION"
  echo "$MINIO_VERSION" >"$BIN.version"
  log "built in $((SECONDS - t0)) s"
}

ready() { curl -fsS --max-time 2 "http://$HOST:$PORT/minio/health/ready" >/dev/null 2>&1; }

cmd_wait() {
  local deadline=$((SECONDS + ${MINIO_WAIT_TIMEOUT:-60}))
  until ready; do
    ((SECONDS < deadline)) || die "MinIO not ready on $HOST:$PORT (see $MDIR/logs/minio.log)"
    sleep 0.5
  done
}

make_bucket() {
  "$PYTHON" - "$HOST:$PORT" "$ACCESS_KEY" "$SECRET_KEY" "$BUCKET" <<'EOF'
import sys
import boto3
from botocore.exceptions import ClientError
endpoint, key, secret, bucket = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}", aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="us-east-1")
try:
    s3.create_bucket(Bucket=bucket)
except ClientError as exc:
    if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
EOF
}

cmd_start() {
  if running_pid >/dev/null; then
    log "already running (pid $(running_pid)) on $HOST:$PORT"
  else
    [[ -x $BIN ]] || cmd_install
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null && die "port $PORT is taken by something else"
    mkdir -p "$MDIR/data" "$MDIR/logs"
    log "starting MinIO on $HOST:$PORT (data $MDIR/data)"
    (cd "$MDIR" && exec setsid env MINIO_ROOT_USER="$ACCESS_KEY" MINIO_ROOT_PASSWORD="$SECRET_KEY" \
      MINIO_UPDATE=off MINIO_BROWSER=off MINIO_CI_CD=1 \
      "$BIN" server "$MDIR/data" --address "$HOST:$PORT" --console-address "$HOST:$CONSOLE_PORT" \
      </dev/null >>"$MDIR/logs/minio.log" 2>&1) &
    echo $! >"$PIDFILE"
  fi
  cmd_wait
  make_bucket
  log "ready: s3://$BUCKET at http://$HOST:$PORT"
}

cmd_stop() {
  local pid i
  pid=$(running_pid) || { rm -f "$PIDFILE"; log "not running"; return 0; }
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  log "stopped"
}

cmd_status() {
  if running_pid >/dev/null && ready; then
    echo "minio up pid $(running_pid) http://$HOST:$PORT bucket $BUCKET"
  else
    echo "minio down"
    return 3
  fi
}

cmd_env() {
  cat <<EOF
export FLEXPRICE_S3_ENDPOINT=http://$HOST:$PORT
export FLEXPRICE_S3_BUCKET=$BUCKET
export FLEXPRICE_S3_ACCESS_KEY=$ACCESS_KEY
export FLEXPRICE_S3_SECRET_KEY=$SECRET_KEY
EOF
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    wait) cmd_wait ;;
    env) cmd_env ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
