#!/usr/bin/env bash
# Creates (or reuses) the project venv and installs the project with its training and test extras.
# Sourced by scripts/train.sh and scripts/test.sh; leaves $PY pointing at the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch first, CPU build, and only where none is installed: a plain `torch` requirement would pull a
# multi-GB CUDA build, and a GPU user's existing torch must be kept.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if ls /opt/wheels/torch-*cpu*.whl >/dev/null 2>&1; then
        "$PY" -m pip install --quiet "torch==2.13.0"
    else
        "$PY" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi
"$PY" -m pip install --quiet -e "$ROOT[dev]"
export PY
