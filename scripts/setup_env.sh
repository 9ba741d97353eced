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
# torch: the CPU build, and only where none is installed (a plain `torch` requirement would pull a multi-GB CUDA build,
# and a GPU user's existing torch must be kept). Where the CPU wheel lies on disk (this project's machines), it is
# installed by path, the newest where there are several.
has_torch() { "$PY" -c "import torch" >/dev/null 2>&1; }
CPU_INDEX=https://download.pytorch.org/whl/cpu  # PyTorch's index of CPU builds, where no wheel lies on disk
NEEDS_TORCH=0
TORCH_WHEEL=""
if ! has_torch; then
    NEEDS_TORCH=1
    TORCH_WHEEL="$(ls /opt/wheels/torch-*cpu*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
fi
# uv installs torch and this package with its extras in one resolution, in seconds where pip takes longer (here 3.4 s
# against 5.3 s for torch's wheel alone and 27 s for the rest, most of pip's in resolving). pip does it all where uv
# cannot be installed or cannot reach the packages (uv does not read pip's configuration: a private index, say).
install_with_uv() {
    "$PY" -m pip install --quiet uv || return 1
    if [ "$NEEDS_TORCH" = 1 ] && [ -z "$TORCH_WHEEL" ]; then
        "$PY" -m uv pip install --quiet --python "$PY" torch --index-url "$CPU_INDEX" || return 1
    fi
    "$PY" -m uv pip install --quiet --python "$PY" ${TORCH_WHEEL:+"$TORCH_WHEEL"} -e "$ROOT[dev]"
}
install_with_pip() {
    if ! has_torch; then  # asked again: uv may have installed it before it failed
        if [ -n "$TORCH_WHEEL" ]; then
            "$PY" -m pip install --quiet --no-compile "$TORCH_WHEEL"
        else
            "$PY" -m pip install --quiet --no-compile torch --index-url "$CPU_INDEX"
        fi
    fi
    "$PY" -m pip install --quiet --no-compile -e "$ROOT[dev]"
}
if ! install_with_uv; then
    echo "set-up: uv could not install the packages (above); pip installs them instead" >&2
    install_with_pip
fi
# Each module's compiled form is written once, into the venv (and this package's __pycache__), by the first process
# that imports it; later processes load it (a train.py process imports for about 4 s compiled, 10 s from source).
# Where the environment sets PYTHONDONTWRITEBYTECODE (this project's machines do), every process would compile every
# module it imports again. Compiling everything installed up front instead (pip's default, or compileall on every
# core) costs 14-33 s here for 16,000 files, most of which no process imports; the modules the suite and train.py
# import take about 6 s to compile.
unset PYTHONDONTWRITEBYTECODE
export PY
