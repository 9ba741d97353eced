"""What the benchmarks share: the ids of random inputs, ours and BART built alike, the Trainer's optimizer, timing
variants in turn, medians, the report every script prints and writes, and train.py run as users run it."""

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import safetensors
import torch
import transformers
from transformers import BartConfig, BartForConditionalGeneration

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration

REPOSITORY = Path(__file__).resolve().parents[1]
PAD, BOS, EOS = 0, 1, 2  # the special ids of the project's tokenizer (train/data.py) and of the benchmark models
FIRST_ORDINARY_ID = 5  # random inputs draw ids from [5, vocab_size): no special token, no "+"
MODEL_NAMES = ("ours", "bart")
# What `alternate` reads: wall time, or this process's CPU time (all its threads). On a machine shared with other jobs
# a 1-thread run's CPU time leaves out the time another process held the core, which wall time counts; it still
# includes what sharing costs the run itself (caches, memory bandwidth). On a GPU only wall time means anything.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def build_model(
    name: str,
    *,
    vocab_size: int,
    d_model: int,
    encoder_layers: int,
    decoder_layers: int,
    num_attention_heads: int,
    ffn_dim: int,
    max_position_embeddings: int,
    dropout: float,
    position_embedding_type: str = "learned",
    seed: int = 0,
    occurrence_bias: bool = False,
) -> torch.nn.Module:
    """Ours or BART ("ours", "bart") with the same dimensions, GELU, tied embeddings, the same dropout and special
    ids, its weights drawn after `torch.manual_seed(seed)`. Ours has `position_embedding_type` (learned, like BART's,
    gives both the same parameter count) and, with `occurrence_bias`, the occurrence bias; each keeps its own norm placement (ours pre-norm, BART post-norm) and
    embedding scaling (BART none; ours × √d_model only with sinusoidal positions)."""
    special = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS)
    torch.manual_seed(seed)
    if name == "bart":
        config = BartConfig(
            vocab_size=vocab_size, d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
            encoder_attention_heads=num_attention_heads, decoder_attention_heads=num_attention_heads,
            encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, max_position_embeddings=max_position_embeddings,
            dropout=dropout, attention_dropout=0.0, activation_dropout=0.0, activation_function="gelu",
            forced_eos_token_id=None, **special,
        )  # fmt: skip
        return BartForConditionalGeneration(config)
    if name != "ours":
        raise ValueError(f"name must be one of {MODEL_NAMES}; got {name!r}")
    config = TinyTransformerConfig(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        num_attention_heads=num_attention_heads, ffn_dim=ffn_dim, max_position_embeddings=max_position_embeddings,
        dropout=dropout, activation_function="gelu", position_embedding_type=position_embedding_type,
        occurrence_bias=occurrence_bias, **special,
    )  # fmt: skip
    return TinyTransformerForConditionalGeneration(config)


def make_optimizer(
    model: torch.nn.Module,
    learning_rate: float = 1e-4,
    weight_decay: float = 0.0,
    fused: bool = True,
    bias_table_scale: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW as the Trainer builds it (no decay on biases and norms; `fused`: its default `adamw_torch_fused`), and as
    train.py's Trainer does, the relative position-bias and occurrence-bias tables at `bias_table_scale` times the
    learning rate (its --position_bias_learning_rate_scale)."""
    # Imported here, not with the module: the Trainer's imports (peft, datasets, accelerate) are half a second of every
    # process that imports bench.common, and the benchmarks' processes that only generate never build an optimizer.
    from transformers import Trainer

    from hf_tiny_transformer_train.trainer import position_bias_parameters

    decay = set(Trainer.get_decay_parameter_names(None, model))
    tables = {id(parameter) for parameter in position_bias_parameters(model)}
    groups = []
    for is_table, scale in ((False, 1.0), (True, bias_table_scale)):
        for decays in (True, False):
            params = [
                p for n, p in model.named_parameters() if (n in decay) == decays and (id(p) in tables) == is_table
            ]
            if params:
                groups.append(
                    {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": learning_rate * scale}
                )
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused)


def alternate(
    functions: dict[str, Callable[[], object]],
    repeats: int,
    synchronize: Callable[[], None] = lambda: None,
    warmup: int = 1,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of each function over `repeats` rounds, after `warmup` untimed calls of each.

    Round r calls the functions in their order when r is even and in reverse order when r is odd (A B, B A, ...), so
    that a slow spell of the machine, or a cache warmed by the previous call, does not always favour the same one.
    `synchronize` waits for queued device work (CUDA) before each clock reading; `clock` is a key of `CLOCKS`.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}; got {clock!r}")
    read_clock = CLOCKS[clock]
    for function in functions.values():
        for _ in range(warmup):
            function()
    seconds = {name: [] for name in functions}
    names = list(functions)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            synchronize()
            start = read_clock()
            functions[name]()
            synchronize()
            seconds[name].append(read_clock() - start)
    return seconds


def summarize(seconds: list[float], tokens: int | None = None) -> dict:
    """Median, least and most seconds of the calls; with the `tokens` of one call, steps and tokens per second."""
    median = statistics.median(seconds)
    summary = {"median_s": median, "min_s": min(seconds), "max_s": max(seconds), "seconds": seconds}
    if tokens is not None:
        summary |= {"steps_per_s": 1 / median, "tokens_per_s": tokens / median}
    return summary


def text_table(rows: list[tuple], left_columns: tuple[int, ...] = (0,)) -> str:
    """`rows` (the first is the header) as aligned text: `left_columns` left-aligned, the others right-aligned."""
    widths = [max(len(str(row[column])) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = (
            str(cell).ljust(width) if column in left_columns else str(cell).rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        )
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def machine_description() -> dict:
    description = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
            description["cpu"] = next(names)
    except (OSError, StopIteration):
        description["cpu"] = platform.processor()
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name()
    return description


class Report(dict):
    """A benchmark's report: when and where it ran (machine, load), what it measured (the keys the script adds) and
    how long it took; `finish` prints it and writes it as JSON."""

    def __init__(self, mode: str, **fields):
        super().__init__(
            date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            mode=mode,
            machine=machine_description(),
            **fields,
            load_average_start=os.getloadavg(),
        )
        self.started = time.perf_counter()

    def progress(self, message: str) -> None:
        """A line on stderr, with the seconds since the start, while a long benchmark runs."""
        print(f"[{time.perf_counter() - self.started:6.0f} s] {message}", file=sys.stderr, flush=True)

    def finish(self, table: str, workload: str, output: Path | None) -> None:
        """Print one line on the machine, `workload` and load, then `table`; write the report to `output` (JSON)."""
        self["load_average_end"] = os.getloadavg()
        self["wall_s"] = time.perf_counter() - self.started
        self["table"] = table
        machine = self["machine"]
        print(
            f"{self['date']}  {machine.get('gpu', machine['cpu'])}, {machine['cpu_count']} CPUs, "
            f"{machine['torch_threads']} torch threads; torch {machine['torch']}, transformers "
            f"{machine['transformers']}; {workload}; load average {self['load_average_start'][0]:.1f} -> "
            f"{self['load_average_end'][0]:.1f}; {self['mode']} run, {self['wall_s']:.0f} s"
        )
        print(table)
        write_report(output, self)


def write_report(path: Path | None, report: dict) -> None:
    """Write `report` as indented JSON to `path` (its folder created), or nothing when no path was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------- train.py as users run it
TRAIN_SCRIPT = REPOSITORY / "train" / "train.py"


def run_train_script(flags: list[str], output_dir: Path, cache_dir: Path, threads: int | None = None) -> dict:
    """`python train/train.py FLAGS --output_dir OUTPUT_DIR` in a fresh process, as a user runs it, with its Hub and
    datasets caches under `cache_dir` (no network) and `threads` intra-op threads (None: the inherited setting). Its
    wall time and the metrics it wrote (all_results.json); a failed run raises RuntimeError with its output's end."""
    environment = {**os.environ, "HF_HOME": str(cache_dir / "hf"), "HF_DATASETS_CACHE": str(cache_dir / "datasets"),
                   "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, str(TRAIN_SCRIPT), *flags, "--output_dir", str(output_dir), "--disable_tqdm", "true"]
    start = time.perf_counter()
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr)[-3000:]
        raise RuntimeError(f"train.py {' '.join(flags)} failed (exit status {completed.returncode}):\n{output}")
    return {"wall_s": wall, "results": json.loads((output_dir / "all_results.json").read_text())}


# A model that learns reverse (or copy) in a few hundred steps with the task's recipe (relative positions, 2+2 layers,
# d_model 128), on sequences of 1-20 integers; it stops at the recipe's validation target.
SHORT_RUN = {
    "data": {"min_length": 1, "max_length": 20, "train_size": 20000, "validation_size": 200, "test_size": 500},
    "flags": ["--max_steps", "600"],
}
# A few seconds of CPU: checks that a script runs and prints its table.
SMOKE_RUN = {
    "data": {"min_length": 1, "max_length": 4, "train_size": 2000, "validation_size": 32, "test_size": 64},
    "flags": ["--max_steps", "40", "--eval_steps", "40", "--warmup_steps", "5", "--per_device_train_batch_size", "32",
              "--d_model", "32", "--encoder_layers", "1", "--decoder_layers", "1", "--num_attention_heads", "2",
              "--ffn_dim", "64"],
}  # fmt: skip


def data_flags(task: str, data: dict) -> list[str]:
    """train.py's flags for `task` with `data` (lengths and split sizes, as in SHORT_RUN), without the typed-input
    and longer tests."""
    flags = ["--task", task, "--typed_inputs_size", "0", "--longer_test_size", "0"]
    for name, value in data.items():
        flags += [f"--{name}", str(value)]
    return flags


def given_or_short_model(
    folder: Path | None, task: str, data: dict, scratch: Path, report: Report, smoke: bool, threads: int | None = None
) -> Path:
    """The model folder a benchmark measures: `folder` when the user gave one; otherwise a `task` model trained on
    `data` with SHORT_RUN's steps (SMOKE_RUN's size and steps with `smoke`) into `scratch`, run_train_script's record
    of the run kept in `report["training"]`."""
    if folder is not None:
        return folder
    folder = scratch / "model"
    report.progress(f"training a short {task} model")
    run = SMOKE_RUN if smoke else SHORT_RUN
    flags = [*data_flags(task, data), *run["flags"], "--save_strategy", "no"]
    report["training"] = run_train_script(flags, folder, scratch / "caches", threads)
    return folder


def safetensors_parameters(path: Path) -> int:
    """The number of values stored in the safetensors file `path` (its header only is read)."""
    with safetensors.safe_open(path, framework="pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
