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
        "$PY" -m pip install --quiet --no-compile "torch==2.13.0"
    else
        "$PY" -m pip install --quiet --no-compile torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi
# Then this package with its extras. uv resolves and installs them in seconds where pip takes half a minute (here 4.6 s
# against 27 s, most of pip's in resolving); torch, installed above, is kept as it is. pip does the same where uv
# cannot be installed or cannot reach the packages (uv does not read pip's configuration: a private index, say).
if ! { "$PY" -m pip install --quiet uv && "$PY" -m uv pip install --quiet --python "$PY" -e "$ROOT[dev]"; }; then
    echo "set-up: uv could not install the packages (above); pip installs them instead" >&2
    "$PY" -m pip install --quiet --no-compile -e "$ROOT[dev]"
fi
# Each module's compiled form is written once, into the venv (and this package's __pycache__), by the first process
# that imports it; later processes load it (a train.py process imports for about 4 s compiled, 10 s from source).
# Where the environment sets PYTHONDONTWRITEBYTECODE (this project's machines do), every process would compile every
# module it imports again. Compiling everything installed up front instead (pip's default, or compileall on every
# core) costs 14-33 s here for 16,000 files, most of which no process imports; the modules the suite and train.py
# import take about 6 s to compile.
unset PYTHONDONTWRITEBYTECODE
export PY
