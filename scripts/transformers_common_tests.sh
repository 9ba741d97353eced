#!/usr/bin/env bash
# transformers' own common model tests against TinyTransformer (tests/test_transformers_common.py).
#
# Fetches the test suite of the installed transformers release into a cache folder once (the PyPI source
# distribution, which carries tests/test_modeling_common.py but not tests/generation/ or tests/exporters/), then runs
# the module. To run the generation and exporter mixins too, point TRANSFORMERS_TESTS_DIR at a folder holding the full
# `tests/` of that release (a git checkout of its tag) instead. Extra arguments go to pytest (e.g. -k export, -n 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-${VENV:-$ROOT/.venv}/bin/python}"
VERSION="$("$PY" -c 'import transformers; print(transformers.__version__)')"
export TRANSFORMERS_TESTS_DIR="${TRANSFORMERS_TESTS_DIR:-$HOME/.cache/hf_tiny_transformer/transformers-$VERSION}"
if [ ! -f "$TRANSFORMERS_TESTS_DIR/tests/test_modeling_common.py" ]; then
    DOWNLOAD="$(mktemp -d)"
    trap 'rm -rf "$DOWNLOAD"' EXIT
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "transformers==$VERSION" -d "$DOWNLOAD"
    mkdir -p "$TRANSFORMERS_TESTS_DIR"
    tar -xzf "$DOWNLOAD/transformers-$VERSION.tar.gz" -C "$DOWNLOAD"
    cp -r "$DOWNLOAD/transformers-$VERSION/tests" "$TRANSFORMERS_TESTS_DIR/"
fi
cd "$ROOT"
exec "$PY" -m pytest -p no:cacheprovider tests/test_transformers_common.py "$@"
