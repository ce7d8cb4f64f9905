#!/usr/bin/env bash
# Create .venv (when missing) and install the pinned requirements and the package into it.
# Idempotent and quick when nothing changed: a stamp remembers what was installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
stamp=.venv/.flexprice-beam-installed
want="$(cat requirements.txt requirements-dev.txt setup.py standin/pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing Python dependencies (first run takes a minute or two)"
  log=.venv/bootstrap.log
  { .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install -r requirements-dev.txt &&
    .venv/bin/python -m pip install --no-deps -e . ; } > "$log" 2>&1 ||
    { tail -40 "$log"; echo "bootstrap: pip install failed (full log: $log)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
