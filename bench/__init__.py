"""The benchmarks of hf_tiny_transformer: scripts run from the repository root as modules (`python -m bench.learning`),
each printing a table of figures and ratios (and writing JSON with --output); they never assert. Their shared helpers
are in `bench.common`. See bench/README.md for what each measures and the figures measured so far."""

# First, before any script imports transformers' model code: the package then drops the lines torchao logs on its
# first import (hf_tiny_transformer/__init__.py, TORCHAO_IMPORT_NOISE), which would open every script's output.
import hf_tiny_transformer  # noqa: F401
