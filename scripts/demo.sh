#!/usr/bin/env bash
# Set everything up and run the built-in demo (generated street scenes; nothing to download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh "cityscapes,plot"
"${SEGDISTILL_VENV:-.venv}/bin/segdistill" demo "$@"
