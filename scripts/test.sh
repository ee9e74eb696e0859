#!/usr/bin/env bash
# Set everything up and run the whole test suite (the default pytest run plus the tests marked slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
"${SEGDISTILL_VENV:-.venv}/bin/python" -m pytest -m "slow or not slow" -q "$@"
