#!/usr/bin/env python
"""What train.py's choice of OpenMP wait policy (train/openmp.py) is worth: training steps with idle threads spinning
(libgomp's default) and sleeping (`OMP_WAIT_POLICY=PASSIVE`), on free CPUs and next to a process that keeps one CPU
busy.

    python -m bench.openmp_wait [--repeats 5] [--steps 30] [--rows reverse,sort] [--output report.json]

OpenMP reads the policy once, as torch loads, so each measurement is a fresh process (this script with `--child`)
timing `--steps` Trainer-like optimizer steps (bench/distributed_training.py's: clipping, fused AdamW, autocast where train.py
uses bf16) of a built-in task's model, batch and longest sequences as train.py's defaults make them, after 3 untimed
ones; the two policies run in turn, `--repeats` times each. The busy neighbour, a `while True: pass` process, is
started by each measuring process once its imports are done and stopped after its last step: it spins through every
step, and not through the imports, which nothing times. Printed: the median of the processes' median step times, and
sleeping / spinning (above 1: spinning pays).
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import REPOSITORY, Report, alternate
from bench.distributed_training import default_workload, random_batch, smoke_workload, training_step, workload_model

TASKS = ("reverse", "sort")  # reverse: relative positions, float32, b32; sort: learned, bf16 where native, b64
BUSY_LOOP = (sys.executable, "-c", "while True: pass")


def time_steps(workload: dict, steps: int, neighbour: bool) -> float:
    """Median milliseconds of `steps` optimizer steps of `workload` (in this process, under its wait policy), with a
    busy neighbour process beside them throughout where `neighbour` (started here, after this process's imports: it
    spins through the model's construction and the untimed steps too, and is stopped after the last step)."""
    busy = subprocess.Popen(BUSY_LOOP) if neighbour else None
    try:
        model = workload_model(workload)
        autocast_dtype = torch.bfloat16 if workload["bf16"] else None
        step = training_step(model, model, workload, random_batch(workload, seed=1), autocast_dtype)
        return statistics.median(alternate({"step": step}, steps, warmup=3)["step"]) * 1e3
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def measure(workload: dict, policy: str | None, steps: int, neighbour: bool) -> float:
    """A fresh process's median step time under `policy` (None: libgomp's default), beside a busy process where
    `neighbour`."""
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy is not None:
        environment["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-m", "bench.openmp_wait", "--child", json.dumps(workload), "--steps", str(steps)]
    if neighbour:
        command.append("--busy_neighbour")
    completed = subprocess.run(command, env=environment, cwd=REPOSITORY, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])["step_ms"]


def compare(task: str, workload: dict, neighbour: bool, repeats: int, steps: int) -> dict:
    times = {"spin": [], "sleep": []}
    for repeat in range(repeats):
        order = [("spin", None), ("sleep", "PASSIVE")]
        for name, policy in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(measure(workload, policy, steps, neighbour))
    ratio = statistics.median(sleep / spin for spin, sleep in zip(times["spin"], times["sleep"]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    where = "next to a busy process" if neighbour else "CPUs otherwise free"
    line = (
        f"{task + ' step, ' + where:45s} spin {medians['spin']:7.1f} ms   sleep {medians['sleep']:7.1f} ms   "
        f"sleep/spin {ratio:5.2f}x"
    )
    return {"row": task, "busy_neighbour": neighbour, "spin_ms": medians["spin"], "sleep_ms": medians["sleep"],
            "sleep_over_spin": ratio, "line": line}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per policy and row (default 5)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process (default 30)")
    parser.add_argument("--rows", default=",".join(TASKS), help=f"comma-separated tasks (default {','.join(TASKS)})")
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument("--smoke", action="store_true", help="a tiny model: checks the script runs")
    parser.add_argument("--child", metavar="WORKLOAD_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--busy_neighbour", action="store_true", help=argparse.SUPPRESS)  # with --child
    args = parser.parse_args(argv)
    chosen = args.rows.split(",")
    if unknown := set(chosen) - set(TASKS):
        parser.error(f"--rows: unknown {', '.join(sorted(unknown))}; choose among {', '.join(TASKS)}")
    if args.child:
        print(json.dumps({"step_ms": time_steps(json.loads(args.child), args.steps, args.busy_neighbour)}))
        return []
    report = Report("smoke" if args.smoke else "full", repeats=args.repeats, steps=args.steps)
    workloads = {task: smoke_workload() if args.smoke else default_workload(task) for task in chosen}
    rows = [
        compare(task, workloads[task], neighbour, args.repeats, args.steps)
        for neighbour in (False, True)
        for task in chosen
    ]
    report["rows"] = rows
    table = "\n".join(row["line"] for row in rows)
    report.finish(table, f"medians over {args.repeats} processes per policy, {args.steps} steps each", args.output)
    return rows


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
