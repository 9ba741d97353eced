#!/usr/bin/env python
"""Training throughput of train.py's default model on CPU: DDP, 1 against 2 processes, bf16 autocast, torch.compile.

    python -m bench.distributed_training                    # the table (a few minutes on 2 quiet cores)
    python -m bench.distributed_training --output bench/results/distributed-cpu.json
    python -m bench.distributed_training --smoke            # a tiny model, two steps: checks it runs

The model, per-process batch, sequence lengths, learning rate, weight decay and gradient clipping are those of
`python train/train.py` (its default task, read from train.py itself); the batches are random ids of the longest
padded shape of that task. Each step is what the Trainer does: forward, backward, `clip_grad_norm_`, AdamW
(`fused=True`, no decay on biases and norms), `zero_grad`.

- **DDP**: `torchrun --nproc_per_node 2` (gloo), each process with half the cores, two DDP-wrapped copies of the
  model, one with `find_unused_parameters=True` (the Trainer's default) and one with False (train.py's default),
  stepping in turn (A B, B A, ...).
- **Scaling**: tokens/s of one process with half the cores (the same threads per process as each DDP rank) and with
  all of them (what `python train/train.py` gets), against the 2 DDP processes. Efficiency = tokens/s of 2 processes
  / (2 x tokens/s of 1 process with the same threads per process).
- **bf16 and compile**: one process, all cores, fp32 eager against bf16 autocast (what `--bf16` does on CPU) and
  `torch.compile(model)` (what `--torch_compile` does), in turn. Compile time = the first compiled step minus an
  eager step.

Figures are medians over the repeats. The script prints a table and writes JSON; it never asserts.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from bench.common import FIRST_ORDINARY_ID, REPOSITORY, Report, alternate, make_optimizer, summarize, text_table
from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration


def default_workload(task: str | None = None) -> dict:
    """train.py's defaults for `task` (None: its default task): the new model's config, the per-process batch, the
    longest source and target (each + </s>; the decoder sees the start token and the target) and the precision."""
    from hf_tiny_transformer_train.arguments import new_model_config, parse_arguments
    from hf_tiny_transformer_train.data import build_tokenizer, target_length

    model_args, data_args, training_args = parse_arguments([] if task is None else ["--task", task])
    config = new_model_config(model_args, build_tokenizer())
    return {
        "task": data_args.task,
        "config": config.to_dict(),
        "batch": training_args.per_device_train_batch_size,
        "source_length": data_args.max_length + 1,  # words (add: columns) and </s>
        "target_length": target_length(data_args.task, data_args.max_length) + 1,
        "learning_rate": training_args.learning_rate,
        "weight_decay": training_args.weight_decay,
        "max_grad_norm": training_args.max_grad_norm,
        "bf16": training_args.bf16,
        "compile_backend": "inductor",  # torch.compile's default, what --torch_compile uses
    }


def smoke_workload() -> dict:
    config = TinyTransformerConfig(
        vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1, num_attention_heads=2, ffn_dim=32,
        max_position_embeddings=16, dropout=0.0,
    )  # fmt: skip
    return {
        "task": "smoke", "config": config.to_dict(), "batch": 4, "source_length": 6, "target_length": 6,
        "learning_rate": 1e-3, "weight_decay": 0.0, "max_grad_norm": 1.0, "bf16": False,
        # Dynamo's tracing without Inductor's code generation: the compile path in seconds, not a minute.
        "compile_backend": "eager",
    }  # fmt: skip


def tokens_per_step(workload: dict) -> int:
    """Source + target tokens of one process's batch."""
    return workload["batch"] * (workload["source_length"] + workload["target_length"])


def workload_model(workload: dict) -> TinyTransformerForConditionalGeneration:
    torch.manual_seed(0)  # every copy, in every process, starts from the same weights
    return TinyTransformerForConditionalGeneration(TinyTransformerConfig.from_dict(workload["config"])).train()


def random_batch(workload: dict, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    vocab_size = workload["config"]["vocab_size"]
    shape = (workload["batch"], workload["source_length"])
    input_ids = torch.randint(FIRST_ORDINARY_ID, vocab_size, shape, generator=generator)
    labels = torch.randint(
        FIRST_ORDINARY_ID, vocab_size, (workload["batch"], workload["target_length"]), generator=generator
    )
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def training_step(model, unwrapped, workload: dict, inputs: dict, autocast_dtype: torch.dtype | None = None):
    """One Trainer-like optimizer step of `model` (`unwrapped` itself, or it wrapped by DDP or compiled) on `inputs`."""
    parameters = list(unwrapped.parameters())
    optimizer = make_optimizer(unwrapped, workload["learning_rate"], workload["weight_decay"])
    autocast = torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def step():
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, workload["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------------------------ the DDP worker
def ddp_worker(workload: dict, repeats: int, warmup: int, result_path: Path) -> None:
    """Runs in each torchrun process: DDP with and without the unused-parameter search, in turn."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    inputs = random_batch(workload, seed=1 + rank)  # each rank its own half of the global batch

    def ddp_step(find_unused: bool):
        model = workload_model(workload)
        return training_step(
            DistributedDataParallel(model, find_unused_parameters=find_unused), model, workload, inputs
        )

    steps = {f"find_unused_parameters={find_unused}": ddp_step(find_unused) for find_unused in (True, False)}
    # Both ranks call the same variants in the same order, so their all-reduces pair up.
    seconds = alternate(steps, repeats, warmup=warmup)
    if rank == 0:
        result = {"world_size": world_size, "threads_per_process": torch.get_num_threads()}
        for name, times in seconds.items():
            result[name] = summarize(times, world_size * tokens_per_step(workload))
        result_path.write_text(json.dumps(result))
    # Free the DDP models while the process group is still registered. Freed after it, a DDP reducer would drop the
    # group's last reference and run its destructor holding the GIL, which waits for gloo's worker threads, which may
    # need the GIL to release their last work: a teardown deadlock seen here with torch 2.13 (pytorch/pytorch#56297).
    del steps
    gc.collect()
    dist.destroy_process_group()


def measure_ddp(workload: dict, processes: int, threads: int, repeats: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        result_path = Path(folder) / "ddp.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "--module", "bench.distributed_training", "--ddp_worker", json.dumps(workload), "--repeats", str(repeats), "--warmup", str(warmup),
            "--result", str(result_path),
        ]  # fmt: skip
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # From the repository root, where the workers import this module as `python -m` does.
        completed = subprocess.run(
            command, env=environment, cwd=REPOSITORY, capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(f"the DDP processes failed:\n{completed.stderr[-5000:]}")
        return json.loads(result_path.read_text())


# ----------------------------------------------------------------------------------------------- one process
def measure_one_process(workload: dict, threads: int, repeats: int, warmup: int) -> dict:
    """fp32 eager tokens/s of one process with `threads` intra-op threads."""
    torch.set_num_threads(threads)
    model = workload_model(workload)
    seconds = alternate(
        {"fp32": training_step(model, model, workload, random_batch(workload, 1))}, repeats, warmup=warmup
    )
    return {"threads": threads, **summarize(seconds["fp32"], tokens_per_step(workload))}


def measure_precision_and_compile(workload: dict, threads: int, repeats: int, warmup: int) -> dict:
    """fp32 eager, bf16 autocast and torch.compile in turn, in one process with `threads` threads."""
    torch.set_num_threads(threads)
    inputs = random_batch(workload, 1)
    eager, mixed, to_compile = (workload_model(workload) for _ in range(3))
    steps = {
        "fp32 eager": training_step(eager, eager, workload, inputs),
        "bf16 autocast": training_step(mixed, mixed, workload, inputs, autocast_dtype=torch.bfloat16),
        "fp32 compiled": training_step(
            torch.compile(to_compile, backend=workload["compile_backend"]), to_compile, workload, inputs
        ),
    }
    steps["fp32 eager"]()  # allocator growth and lazy initialisation, outside the compile time
    eager_start = time.perf_counter()
    steps["fp32 eager"]()
    eager_s = time.perf_counter() - eager_start
    compile_start = time.perf_counter()
    steps["fp32 compiled"]()  # traces, compiles forward and backward, then runs the step
    first_compiled_s = time.perf_counter() - compile_start
    seconds = alternate(steps, repeats, warmup=warmup)
    tokens = tokens_per_step(workload)
    result = {"threads": threads, "compile_s": first_compiled_s - eager_s, "first_compiled_step_s": first_compiled_s}
    result.update({name: summarize(times, tokens) for name, times in seconds.items()})
    return result


# ---------------------------------------------------------------------------------------------------- report
def format_table(report: dict) -> str:
    ddp, one, all_cores, precision = report["ddp"], report["one_process"], report["all_cores"], report["precision"]
    unused, no_unused = ddp["find_unused_parameters=True"], ddp["find_unused_parameters=False"]
    processes, threads = ddp["world_size"], ddp["threads_per_process"]
    eager = precision["fp32 eager"]
    rows = [
        ("measure", "value", "ratio", "ratio of"),
        (f"DDP {processes} processes x {threads} threads, steps/s, find_unused_parameters=True",
         f"{unused['steps_per_s']:.2f}", "", ""),
        (f"DDP {processes} processes x {threads} threads, steps/s, find_unused_parameters=False",
         f"{no_unused['steps_per_s']:.2f}", f"{no_unused['steps_per_s'] / unused['steps_per_s']:.2f}x",
         "False / True"),
        (f"tokens/s, 1 process x {one['threads']} threads (fp32)", f"{one['tokens_per_s']:,.0f}", "", ""),
        (f"tokens/s, 1 process x {all_cores['threads']} threads (fp32)", f"{all_cores['tokens_per_s']:,.0f}",
         f"{all_cores['tokens_per_s'] / one['tokens_per_s']:.2f}x", f"/ 1 x {one['threads']}"),
        (f"tokens/s, {processes} processes x {threads} threads (DDP, fp32)", f"{no_unused['tokens_per_s']:,.0f}",
         f"{no_unused['tokens_per_s'] / all_cores['tokens_per_s']:.2f}x", f"/ 1 x {all_cores['threads']}"),
        (f"scaling efficiency, {processes} processes", f"{no_unused['tokens_per_s'] / (processes * one['tokens_per_s']):.0%}",
         "", f"/ ({processes} x 1 x {one['threads']})"),
        (f"tokens/s, fp32 eager, 1 process x {precision['threads']} threads", f"{eager['tokens_per_s']:,.0f}", "", ""),
        ("tokens/s, bf16 autocast (--bf16)", f"{precision['bf16 autocast']['tokens_per_s']:,.0f}",
         f"{precision['bf16 autocast']['tokens_per_s'] / eager['tokens_per_s']:.2f}x", "/ fp32 eager"),
        ("tokens/s, torch.compile (--torch_compile)", f"{precision['fp32 compiled']['tokens_per_s']:,.0f}",
         f"{precision['fp32 compiled']['tokens_per_s'] / eager['tokens_per_s']:.2f}x", "/ fp32 eager"),
        ("torch.compile time, s (first step minus an eager step)", f"{precision['compile_s']:.1f}", "", ""),
    ]  # fmt: skip
    return text_table(rows, left_columns=(0, 3))


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model, two steps each, compiled without code generation: checks that it runs",
    )
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument("--repeats", type=int, help="timed steps of each variant (default 40; --smoke 2)")
    parser.add_argument("--threads", type=int, help="all the cores to use (default: torch's own choice)")
    parser.add_argument("--ddp_worker", metavar="WORKLOAD_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each variant first (default 3)")
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(json.loads(args.ddp_worker), args.repeats, args.warmup, args.result)
        return None

    transformers.logging.set_verbosity_error()
    workload = smoke_workload() if args.smoke else default_workload()
    repeats = args.repeats or (2 if args.smoke else 40)
    warmup = 1 if args.smoke else args.warmup
    all_threads = args.threads or torch.get_num_threads()
    processes = 2
    threads_per_process = max(1, all_threads // processes)
    report = Report(
        "smoke" if args.smoke else "full",
        workload={key: value for key, value in workload.items() if key != "config"},
        parameters=sum(parameter.numel() for parameter in workload_model(workload).parameters()),
        repeats=repeats,
    )
    progress = report.progress

    progress(f"DDP, {processes} processes x {threads_per_process} threads")
    report["ddp"] = measure_ddp(workload, processes, threads_per_process, repeats, warmup)
    progress(f"1 process x {threads_per_process} threads")
    report["one_process"] = measure_one_process(workload, threads_per_process, repeats, warmup)
    progress(f"1 process x {all_threads} threads")
    report["all_cores"] = measure_one_process(workload, all_threads, repeats, warmup)
    progress("fp32 eager, bf16 autocast, torch.compile")
    report["precision"] = measure_precision_and_compile(workload, all_threads, repeats, warmup)
    shape = report["workload"]
    report.finish(
        format_table(report),
        f"{shape['task']} task, {report['parameters']:,} parameters, batch {shape['batch']} x "
        f"({shape['source_length']} + {shape['target_length']}) tokens per process",
        args.output,
    )
    return report


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
