#!/bin/sh
# Beam runners start an SDK harness container with flags only (--id=… --provision_endpoint=…):
# hand those to Beam's boot. Anything else is a flexprice-beam command (default: run the
# generator example).
set -e
case "${1:-}" in
  --*) exec /opt/apache/beam/boot "$@" ;;
  "") exec flexprice-beam run -c examples/generate.yaml ;;
  *) exec flexprice-beam "$@" ;;
esac
