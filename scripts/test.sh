#!/usr/bin/env bash
# Set everything up, then lint (ruff), type-check (mypy) and run the whole test suite (the default
# pytest run plus the tests marked slow; skip reasons are shown).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
py="${SEGDISTILL_VENV:-.venv}/bin/python"
"$py" -m ruff check segdistill tests scripts benchmarks
"$py" -m mypy
"$py" -m pytest -m "slow or not slow" -q -rs "$@"
