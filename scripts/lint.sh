#!/usr/bin/env bash
# Formatting and lint as CI checks them: `ruff format --check` and `ruff check` (rules in pyproject.toml). Exits non-zero
# when either finds something; `ruff format . && ruff check --fix .` (in the venv) repairs most of it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
"$PY" -m ruff format --check .
"$PY" -m ruff check .
