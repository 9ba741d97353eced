#!/usr/bin/env bash
# The README's test command: set up the venv, then run the whole suite (slow end-to-end tests included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# One worker per core, at most 8 (the suite has few long modules, and each worker holds torch and transformers):
# most of the suite's time is child processes (training runs, launches, benchmarks) and imports, which share the
# cores better than they take them in turn. A module's tests stay on one worker (loadscope), so that a module-scoped
# run (a trained folder, an uninterrupted run) is made once; modules go to the workers in the order tests/conftest.py
# collects them, the longest first (--no-loadscope-reorder). `-n 0` runs everything in this process.
# TINY_TRANSFORMER_TEST_THREADS=N forces torch's intra-op threads to N in every test process and in every process the
# tests start (tests/conftest.py); unset, workers and started processes run one thread each.
exec "$PY" -m pytest -n auto --maxprocesses 8 --dist loadscope --no-loadscope-reorder "$@"
