"""The benchmark scripts run: each measurement on a tiny size, the table, and the kernel comparisons.

They time nothing here (figures on a test machine mean nothing); they check that the code a user runs from the
README works and reports sensible fields.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import benchmark  # noqa: E402
import design_kernels  # noqa: E402

TINY = benchmark.Size("tiny", d_model=16, layers=1, heads=2, ffn_dim=32, vocab_size=32, max_positions=300)


@pytest.fixture
def cpu():
    return benchmark.pick_device("cpu")


def test_both_models_get_the_same_size(cpu):
    models = benchmark.build_models(TINY, cpu)
    counts = {name: benchmark.count_parameters(model) for name, model in models.items()}
    assert abs(counts["ours"] / counts["bart"] - 1) < 0.05


def test_training_and_generation_measurements_report_every_field(cpu):
    training = benchmark.benchmark_training(TINY, cpu, peak=1e9, repeats=2, batch=2, length=6)
    generation = benchmark.benchmark_generation(TINY, cpu, [(1, 1), (2, 2)], repeats=2, new_tokens=4, length=6)
    per_token = benchmark.benchmark_per_token_time(TINY, cpu, batch=1, repeats=1, length=6)
    for name in benchmark.MODEL_NAMES:
        assert training[name]["tokens_per_s"] > 0 and 0 < training[name]["mfu"]
        assert len(training[name]["seconds"]) == 2
        assert all(result[name]["tokens_per_s"] > 0 for result in generation)
        assert per_token[name]["ratio_256_to_32"] > 0
    report = {
        "parameters": {"tiny": {"ours": 100, "bart": 101}},
        "training": [training],
        "generation": generation,
        "per_token": [per_token],
    }
    table = benchmark.format_table(report)
    assert "training tokens/s, tiny" in table and "generation tokens/s, tiny, 2-beam, batch 2" in table


def test_kernel_comparisons_run(capsys):
    design_kernels.main(["--repeats", "1", "--threads", str(torch.get_num_threads())])
    printed = capsys.readouterr().out
    for what in ("projection 32 x 512 -> 1536", "dropout forward + backward", "cache append, batch 32"):
        assert what in printed
