#!/usr/bin/env bash
# Create .venv (if missing) and install segdistill with the given extras, torch first.
#   SEGDISTILL_TORCH  the torch requirement to install first (default "torch": pip picks the build
#                     for this machine, CUDA on Linux). On a CPU-only machine pin a CPU build,
#                     e.g. SEGDISTILL_TORCH="torch==2.13.0".
#   SEGDISTILL_VENV   the virtual environment folder (default .venv in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
venv="${SEGDISTILL_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet "${SEGDISTILL_TORCH:-torch}"
"$py" -m pip install --quiet -e ".[$extras]"
"$py" -c "import torch, segdistill; print(f'segdistill {segdistill.__version__} with torch {torch.__version__}')"
