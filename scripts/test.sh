#!/usr/bin/env bash
# Run the whole test suite (unit + real-data tests, marked slow, which run here too).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exec "$PY" -m pytest -q tests "$@"
