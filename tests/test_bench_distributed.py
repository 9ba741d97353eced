"""bench/distributed_training.py with a user's arguments (its `main` runs in this process, as `python -m
bench.distributed_training` runs it from the repository root, and launches its torchrun workers as that command does),
on a tiny model with two steps per variant: every figure is reported. It times nothing here (figures on a test machine
mean nothing)."""

import pytest


@pytest.mark.slow
def test_distributed_benchmark_reports_every_measurement(bench_run):
    report, printed = bench_run("distributed_training", ["--smoke"])
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
