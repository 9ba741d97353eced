"""Shared fixtures: tiny configs, seeded tiny models and padded batches; no network.

A test passes on every machine or it is a failing test. Floats are compared exactly only where both sides were
computed in one process, with the same threads and precision: the last bits of a sum depend on how the work is split
among threads and on the CPU's instructions. A float computed in a child process is compared with one computed
here within a tolerance whose comment says what it allows, even with both sides pinned to the same threads
(`same_threads_as_child_processes`; children start with `OMP_NUM_THREADS`, set below): with more threads than cores,
two processes' kernels may still split a sum differently (seen on an AMD EPYC). Two child processes started alike are
compared exactly only where identity is the promise under test (a resumed run against an uninterrupted one, the
same seed twice): they passed so with 1, 2 and 4 threads on both CPUs. Two paths that
should agree but multiply matrices of other shapes (cached and uncached decoding, eager and SDPA, int8 and float32)
round by the CPU's kernels: a float32 tolerance must hold on every CPU (an AMD EPYC's differ from an Intel Xeon's by
10x), and where a tight check is the point, both paths run in float64.

Threads: `TINY_TRANSFORMER_TEST_THREADS=N` forces torch's intra-op threads to N in every test process and in every
process the tests start (it sets `OMP_NUM_THREADS`, which torch and torchrun read as they start). Unset, a
pytest-xdist worker runs one thread, a plain `pytest -n 0` torch's default, and child processes one thread.
"""

import gc
import importlib
import json
import os
from pathlib import Path

# No network in tests: every model, tokenizer and dataset is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch.compile in this process and in those the tests start compiles in the process itself: with more than one compile
# thread, inductor first starts a pool of worker processes, each importing torch (seconds of a core each), to compile
# the few kernels of a tiny model on cores that the other test workers already keep busy.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration  # noqa: E402
from hf_tiny_transformer.configuration_tiny_transformer import POSITION_EMBEDDING_TYPES  # noqa: E402

THREADS_VARIABLE = "TINY_TRANSFORMER_TEST_THREADS"
# generate's arguments that make it return a dict holding every step's scores (the logits after its processors), or
# every step's logits as the model computed them; tests import them (`from conftest import STEP_SCORES`).
STEP_SCORES = dict(return_dict_in_generate=True, output_scores=True)
STEP_LOGITS = dict(return_dict_in_generate=True, output_logits=True)


def forced_threads() -> int | None:
    """The intra-op thread count forced by TINY_TRANSFORMER_TEST_THREADS, or None where it is unset or empty."""
    value = os.environ.get(THREADS_VARIABLE, "")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_VARIABLE}={value!r}: expected a whole number of threads >= 1")
    return int(value)


FORCED_THREADS = forced_threads()
# Child processes (train.py runs, launchers and their ranks, fresh loads) run one thread unless forced: tiny models
# gain nothing from more, and the cores are shared with the workers. torch reads OMP_NUM_THREADS as it starts, so
# this process's own threads (already started) are set below.
CHILD_THREADS = FORCED_THREADS or 1
os.environ["OMP_NUM_THREADS"] = str(CHILD_THREADS)
if FORCED_THREADS:
    torch.set_num_threads(FORCED_THREADS)
elif os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (scripts/test.sh) each core already runs a worker or its child processes: a worker's second
    # intra-op thread would only wait, at every parallel region, for a core that another process holds (tiny models'
    # tests ran up to 10x slower so).
    torch.set_num_threads(1)


# The modules that take longest, longest first: seconds of their tests (setup included) in a cold run of
# scripts/test.sh on a 2-core AMD EPYC (`--durations=0`, summed per module; stop 36). scripts/test.sh gives each
# worker whole modules in the order collected (`--no-loadscope-reorder`), so that the long modules start first and the
# short ones fill in at the end. In pytest-xdist's own order (most tests first) the long modules, which hold few
# tests, came last: one worker ran on alone for 45 s. An outdated list only balances the workers less well.
LONGEST_MODULES_FIRST = (
    "test_compile_and_export.py",  # 93 s: inductor's C++ kernels, compiled from an empty cache
    "test_distributed.py",  # 64 s: launchers and their ranks
    "test_onnx.py",  # 55 s: four exports
    "test_faults.py",  # 46 s: killed and restarted training runs
    "test_modeling.py",  # 36 s: flex attention's kernels
    "test_training.py",  # 34 s
    "test_demo.py",  # 27 s
    "test_bench_openmp_wait.py",  # 21 s
    "test_bench_speed.py",  # 20 s
    "test_bench_peft_vs_full.py",  # 18 s
    "test_train_user_data.py",  # 15 s
    "test_openmp.py",  # 14 s
    "test_bench_distributed.py",  # 11 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the modules of LONGEST_MODULES_FIRST first, in its order; the others keep their order, after them."""
    rank = {name: position for position, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: a module's tests keep theirs


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every test module is imported now, and with them torch, transformers, datasets, peft and the others: their
    objects live as long as this process, so `gc.freeze()` takes them out of the cyclic collector's sight, as
    train.py's `__main__` does. Its full collections while the tests run, and the last at exit, no longer walk them
    (tests/test_modeling.py and test_generation.py in one process: 16.1 s -> 14.1 s)."""
    gc.freeze()


@pytest.fixture(scope="session")
def child_threads() -> int:
    """The intra-op threads of the processes tests start (their inherited `OMP_NUM_THREADS`)."""
    return CHILD_THREADS


@pytest.fixture
def same_threads_as_child_processes(child_threads) -> int:
    """Runs the test in this process with the child processes' thread count, so that floats computed here and in a
    child are computed alike; the count before is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(child_threads)
    yield child_threads
    torch.set_num_threads(threads)


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


def occurrence_bias_model(seed: int = 0, attn_implementation: str | None = None, **overrides):
    """A seeded tiny model with the occurrence bias (`overrides` set other fields), its table drawn from N(0, 3²) so
    that outputs depend on it: with the initial table (std 0.02) a wrong occurrence index would hardly change them."""
    model = seeded_model(tiny_config(occurrence_bias=True, **overrides), seed, attn_implementation)
    with torch.no_grad():
        model.model.decoder.occurrence_bias.bias.weight.normal_(0, 3, generator=torch.Generator().manual_seed(seed))
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


@pytest.fixture
def bench_run(bench, capsys, tmp_path):
    """`bench_run(script, flags)`: bench.<script>'s `main(flags)` in this process (as `bench` imports it), writing its
    report to a file under tmp_path (`--output`); the report read back from that JSON, and the text it printed."""

    def run(script: str, flags: list[str]) -> tuple[dict, str]:
        output = tmp_path / "report.json"
        bench(script).main([*flags, "--output", str(output)])
        return json.loads(output.read_text()), capsys.readouterr().out

    return run


def child_environment(tmp: Path) -> dict[str, str]:
    """The environment of a child process (a training run, a launcher): no network, caches under `tmp`, and the
    child processes' threads (CHILD_THREADS: one, torchrun's own default, unless TINY_TRANSFORMER_TEST_THREADS forces
    another count)."""
    return {
        **os.environ,
        "HF_HOME": str(tmp / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(CHILD_THREADS),
    }


@pytest.fixture(scope="session")
def environment():
    """`environment(tmp)`: child_environment, for tests and fixtures of any scope."""
    return child_environment
