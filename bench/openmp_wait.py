#!/usr/bin/env python
"""What train.py's choice of OpenMP wait policy (train/openmp.py) is worth: training steps with idle threads spinning
(libgomp's default) and sleeping (`OMP_WAIT_POLICY=PASSIVE`), on free CPUs and next to a process that keeps one CPU
busy.

    python bench/openmp_wait.py [--repeats 5] [--steps 30] [--rows reverse,sort] [--output report.json]

OpenMP reads the policy once, as torch loads, so each measurement is a fresh process (this script with `--child`)
timing `--steps` optimizer steps of a built-in task's model and batch after 3 untimed ones; the two policies run in
turn, `--repeats` times each. Printed: the median of the processes' median step times, and sleeping / spinning
(above 1: spinning pays).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# The built-in tasks' training steps, as train.py's defaults run them: model, batch, length of source and target.
ROWS = {
    # bf16: where the hardware multiplies it, as train.py's sort defaults
    "reverse": dict(position_embedding_type="relative", batch=32, length=51, bf16=False),
    "sort": dict(position_embedding_type="learned", batch=64, length=51, bf16=True),
}
SIZES = dict(vocab_size=105, d_model=128, encoder_layers=2, decoder_layers=2, num_attention_heads=4, ffn_dim=512)
SMOKE_SIZES = dict(vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1, num_attention_heads=2, ffn_dim=32)
BUSY_LOOP = (sys.executable, "-c", "while True: pass")


def time_steps(row: str, bf16: bool, steps: int, smoke: bool) -> float:
    """Median milliseconds of `steps` optimizer steps of `row`'s model (in this process, under its wait policy)."""
    import torch
    from speed_paths import training_step

    from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration

    setting = ROWS[row]
    torch.manual_seed(0)
    config = TinyTransformerConfig(
        **(SMOKE_SIZES if smoke else SIZES), dropout=0.0, position_embedding_type=setting["position_embedding_type"]
    )
    model = TinyTransformerForConditionalGeneration(config)
    step = training_step(model, 2 if smoke else setting["batch"], 6 if smoke else setting["length"], bf16)
    for _ in range(3):
        step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1e3


def measure(row: str, policy: str | None, steps: int, smoke: bool) -> float:
    """A fresh process's median step time under `policy` (None: libgomp's default)."""
    # bf16 as train.py's defaults use it: where the hardware multiplies it. (Imported here, in the parent: train.py
    # chooses a wait policy as it is imported, which must not touch the children's.)
    from hf_tiny_transformer_train.train import computes_bf16_natively

    bf16 = ROWS[row]["bf16"] and computes_bf16_natively()
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy is not None:
        environment["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--child", row, "--steps", str(steps)]
    command += ["--bf16"] * bf16 + ["--smoke"] * smoke
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])["step_ms"]


def compare(row: str, neighbour: bool, repeats: int, steps: int, smoke: bool) -> dict:
    busy = subprocess.Popen(BUSY_LOOP) if neighbour else None
    try:
        times = {"spin": [], "sleep": []}
        for repeat in range(repeats):
            order = [("spin", None), ("sleep", "PASSIVE")]
            for name, policy in order if repeat % 2 == 0 else order[::-1]:
                times[name].append(measure(row, policy, steps, smoke))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    ratio = statistics.median(sleep / spin for spin, sleep in zip(times["spin"], times["sleep"]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    where = "next to a busy process" if neighbour else "CPUs otherwise free"
    print(
        f"{row + ' step, ' + where:45s} spin {medians['spin']:7.1f} ms   sleep {medians['sleep']:7.1f} ms   "
        f"sleep/spin {ratio:5.2f}x"
    )
    return {"row": row, "busy_neighbour": neighbour, "spin_ms": medians["spin"], "sleep_ms": medians["sleep"],
            "sleep_over_spin": ratio}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per policy and row (default 5)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process (default 30)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default {','.join(ROWS)})")
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument("--smoke", action="store_true", help="a tiny model: checks the script runs")
    parser.add_argument("--child", choices=list(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = args.rows.split(",")
    if unknown := set(chosen) - set(ROWS):
        parser.error(f"--rows: unknown {', '.join(sorted(unknown))}; choose among {', '.join(ROWS)}")
    if args.child:
        print(json.dumps({"step_ms": time_steps(args.child, args.bf16, args.steps, args.smoke)}))
        return []
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; medians over {args.repeats} processes per policy")
    load_before = os.getloadavg()
    rows = [
        compare(row, neighbour, args.repeats, args.steps, args.smoke) for neighbour in (False, True) for row in chosen
    ]
    if args.output:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "repeats": args.repeats,
            "steps": args.steps,
            "load_average_start": load_before,
            "load_average_end": os.getloadavg(),
            "rows": rows,
        }
        args.output.write_text(json.dumps(report, indent=1))
    return rows


if __name__ == "__main__":
    main()
