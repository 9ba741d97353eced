"""Shared fixtures: tiny configs, seeded tiny models and padded batches; no network."""

import importlib
import os
from pathlib import Path

# No network in tests: every model, tokenizer and dataset is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration  # noqa: E402
from hf_tiny_transformer.configuration_tiny_transformer import POSITION_EMBEDDING_TYPES  # noqa: E402

# Under pytest-xdist (scripts/test.sh) each core already runs a worker or its child processes: a worker's second
# intra-op thread would only wait, at every parallel region, for a core that another process holds (tiny models'
# tests ran up to 10x slower so). Child processes keep their own settings.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(params=POSITION_EMBEDDING_TYPES)
def position_embedding_type(request) -> str:
    """Every test built on `make_config`/`make_model` runs once per position scheme."""
    return request.param


# The tiny model of every test: vocabulary 40, width 32.
TINY_FIELDS = dict(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4, ffn_dim=64)


def tiny_config(**overrides) -> TinyTransformerConfig:
    """The tiny config; keyword arguments (the position scheme among them) override its fields."""
    return TinyTransformerConfig(**{**TINY_FIELDS, **overrides})


def seeded_model(
    config: TinyTransformerConfig, seed: int = 0, attn_implementation: str | None = None
) -> TinyTransformerForConditionalGeneration:
    """A model of `config` with weights drawn after `torch.manual_seed(seed)`, in eval mode; `attn_implementation`
    picks the attention backend."""
    torch.manual_seed(seed)
    model = TinyTransformerForConditionalGeneration(config).eval()
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    return model


@pytest.fixture
def make_config(position_embedding_type):
    """A tiny config with the position scheme of this run of the test; keyword arguments override its fields."""

    def make(**overrides) -> TinyTransformerConfig:
        return tiny_config(**{"position_embedding_type": position_embedding_type, **overrides})

    return make


@pytest.fixture
def make_model(make_config):
    """A seeded, tiny model in eval mode with the position scheme of this run of the test; `attn_implementation`
    picks the attention backend."""

    def make(attn_implementation: str | None = None, seed: int = 0, **overrides):
        return seeded_model(make_config(**overrides), seed, attn_implementation)

    return make


@pytest.fixture
def tiny_model_of_each_scheme() -> dict[str, TinyTransformerForConditionalGeneration]:
    """The seeded tiny model once per position scheme: for a test that checks them all in one new process (each
    process costs seconds of imports)."""
    return {scheme: seeded_model(tiny_config(position_embedding_type=scheme)) for scheme in POSITION_EMBEDDING_TYPES}


@pytest.fixture
def batch():
    """`batch(vocab_size, lengths, side="right", seed=0)`: random ids >= 3 (not pad/bos/eos), padded with 0 on
    `side` to the longest length, and the matching attention mask."""

    def make(vocab_size: int, lengths: list[int], side: str = "right", seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        longest = max(lengths)
        input_ids = torch.zeros(len(lengths), longest, dtype=torch.long)
        attention_mask = torch.zeros(len(lengths), longest, dtype=torch.long)
        for row, length in enumerate(lengths):
            positions = slice(0, length) if side == "right" else slice(longest - length, longest)
            input_ids[row, positions] = torch.randint(3, vocab_size, (length,), generator=generator)
            attention_mask[row, positions] = 1
        return input_ids, attention_mask

    return make


@pytest.fixture
def bench():
    """`bench(script)`: the module bench.<script>, as `python -m bench.<script>` imports it from the repository root
    (pytest's `pythonpath`, pyproject.toml), so that a test runs its `main(arguments)` in this process instead of
    paying a new interpreter's seconds of imports. The thread count and transformers' verbosity that the scripts'
    mains set are restored afterwards."""
    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    yield lambda script: importlib.import_module(f"bench.{script}")
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity(verbosity)


def child_environment(tmp: Path) -> dict[str, str]:
    """The environment of a child process (a training run, a launcher): no network, caches under `tmp`, and one
    thread per process (torchrun's own default)."""
    return {
        **os.environ,
        "HF_HOME": str(tmp / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def environment():
    """`environment(tmp)`: child_environment, for tests and fixtures of any scope."""
    return child_environment
