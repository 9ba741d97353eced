#!/usr/bin/env bash
# The README's test command: set up the venv, then run the whole suite (slow end-to-end tests included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$PY" -m pytest "$@"
