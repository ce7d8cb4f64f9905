#!/usr/bin/env bash
# "Container executable" for apache_beam.runners.worker.worker_pool_main
# (--container_executable=scripts/flink/sdk_worker.sh), started once per SDK worker with
#   --id=... --logging_endpoint=... --artifact_endpoint=... --provision_endpoint=... --control_endpoint=...
# It stands in for Beam's Go container boot binary: see sdk_worker_boot.py.
# stdout/stderr go to a log file because worker_pool_main pipes the child's stdout
# and never reads it (a chatty worker would otherwise block on a full pipe).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
logdir="${FLEXPRICE_FLINK_LOG_DIR:-$root/.cache/flink/logs}"
mkdir -p "$logdir"
exec "$py" "$here/sdk_worker_boot.py" "$@" >>"$logdir/sdk-workers.log" 2>&1
