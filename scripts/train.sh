#!/usr/bin/env bash
# The README's main job: set up the venv, then train the default model on the built-in synthetic corpus.
# Extra arguments go to train/train.py (e.g. --task reverse --output_dir outputs/reverse).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$PY" train/train.py "$@"
