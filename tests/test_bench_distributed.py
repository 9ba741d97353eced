"""bench/distributed_training.py as a user runs it (`python -m bench.distributed_training` from the repository root,
a command that launches its torchrun workers), on a tiny model with two steps per variant: every figure is reported. It times nothing here (figures on a test machine mean nothing)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_distributed_benchmark_reports_every_measurement(tmp_path):
    output = tmp_path / "distributed.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.distributed_training", "--smoke", "--output", str(output)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-5000:]
    printed = completed.stdout
    report = json.loads(output.read_text())
    assert report["ddp"]["world_size"] == 2
    for variant in ("find_unused_parameters=True", "find_unused_parameters=False"):
        assert report["ddp"][variant]["steps_per_s"] > 0 and report["ddp"][variant]["tokens_per_s"] > 0
    assert report["one_process"]["tokens_per_s"] > 0 and report["all_cores"]["tokens_per_s"] > 0
    for variant in ("fp32 eager", "bf16 autocast", "fp32 compiled"):
        assert report["precision"][variant]["tokens_per_s"] > 0
    assert report["precision"]["first_compiled_step_s"] > 0
    for row in ("steps/s, find_unused_parameters=False", "scaling efficiency, 2 processes", "bf16 autocast (--bf16)",
                "torch.compile (--torch_compile)", "torch.compile time"):  # fmt: skip
        assert row in printed
