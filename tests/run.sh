#!/usr/bin/env bash
# The test command (named in the README): the whole suite on CPU, with Triton kernels
# run in Triton's interpreter (tests/conftest.py turns it on when there is no GPU).
# GPU tests skip themselves without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=$(python3 -c "import os; print(max(1, min(4, os.cpu_count() or 1)))")
python3 -m pytest -q -n "$workers" --durations=15 "$@"
