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
# Byte-compile on every core what was installed (left undone above: pip's own, file by file, was 33 of the set-up's
# 75 s here) and this package's own sources (installed editable, they are otherwise compiled at each import where
# PYTHONDONTWRITEBYTECODE is set); compiled files keep every process's imports fast. The installed packages' own test
# suites (*/tests/, a fifth of the files) are never imported and are skipped. Files written for other Python versions
# (torch ships a py312-only one) fail here as under pip, at no cost, so compileall's status is ignored.
"$PY" -m compileall -q -j 0 -x '/tests/' "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    "$ROOT/hf_tiny_transformer" "$ROOT/train" >/dev/null || true
export PY
