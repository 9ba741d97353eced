"""The benchmark scripts run as a user runs them, on a tiny model with one repeat, and report every figure.

They time nothing here (figures on a test machine mean nothing); they check that the commands in the README and
bench/README.md work and print their tables.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_script(name: str, *arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCH / name), *arguments], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return completed.stdout


@pytest.mark.slow
def test_speed_benchmark_reports_every_measurement(tmp_path):
    output = tmp_path / "report.json"
    printed = run_script("benchmark.py", "--smoke", "--sections", "training,generation,memory", "--output", str(output))
    report = json.loads(output.read_text())
    counts = report["parameters"]["tiny"]
    assert abs(counts["ours"] / counts["bart"] - 1) < 0.05  # both models get the same size
    for name in ("ours", "bart"):
        assert report["training"][0][name]["tokens_per_s"] > 0 and report["training"][0][name]["mfu"] > 0
        assert all(result[name]["tokens_per_s"] > 0 for result in report["generation"])
        assert report["per_token"][0][name]["ratio_256_to_32"] > 0
        assert all(result[name]["peak_rss_delta_bytes"] > 0 for result in report["memory"])
    for row in ("training tokens/s, tiny", "generation tokens/s, tiny, 4-beam, batch 32", "peak memory, training tiny"):
        assert row in printed


def test_speed_path_comparisons_run():
    printed = run_script("speed_paths.py", "--smoke", "--repeats", "1")
    for what in (
        "CPU dropout: training step",
        "in-place cache: greedy, b2",
        "lean step inputs",
        "[in, out] projections",
        "eager attention for bf16 on CPU: training step",
    ):
        assert what in printed


def test_openmp_wait_policy_comparison_reports_both_policies_with_and_without_a_busy_neighbour(tmp_path):
    output = tmp_path / "report.json"
    arguments = ("--smoke", "--rows", "sort", "--repeats", "1", "--steps", "2", "--output", str(output))
    printed = run_script("openmp_wait.py", *arguments)
    for row in ("sort step, CPUs otherwise free", "sort step, next to a busy process"):
        assert row in printed
    rows = json.loads(output.read_text())["rows"]
    assert [(row["row"], row["busy_neighbour"]) for row in rows] == [("sort", False), ("sort", True)]
    assert all(row["spin_ms"] > 0 and row["sleep_ms"] > 0 and row["sleep_over_spin"] > 0 for row in rows)


def test_openmp_wait_policy_comparison_refuses_an_unknown_row():
    completed = subprocess.run(
        [sys.executable, str(BENCH / "openmp_wait.py"), "--rows", "sort,transpose"], capture_output=True, text=True
    )
    assert completed.returncode == 2 and "--rows: unknown transpose" in completed.stderr


@pytest.mark.slow
def test_learning_benchmark_trains_ours_and_bart_and_reports_length_generalisation(tmp_path):
    output = tmp_path / "length.json"
    printed = run_script("learning.py", "length", "--smoke", "--tasks", "copy", "--seeds", "1", "--output", str(output))
    report = json.loads(output.read_text())["length"]["copy"]
    assert set(report) == {"ours, sinusoidal", "ours, learned", "ours, relative", "BART (learned)"}
    for result in report.values():
        assert set(result["exact_match"]) == {"1-25", "26-50", "51-100"}
    assert "copy, ours, relative" in printed


@pytest.mark.slow
def test_distributed_benchmark_reports_every_measurement(tmp_path):
    output = tmp_path / "distributed.json"
    printed = run_script("distributed.py", "--smoke", "--output", str(output))
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


def test_learning_ablation_lists_each_tasks_variants_and_refuses_a_task_without_them():
    # Run in bench/, as a user runs its scripts, so that `learning` imports its sibling modules. Every variant's flags
    # must be ones train.py accepts for its task, or the ablation would fail after an hour of runs.
    listing = (
        "import json, learning; from hf_tiny_transformer_train import train; "
        "variants = {t: learning.ablation_variants(t) for t in ('reverse', 'sort')}; "
        "[train.parse_arguments(['--task', t, *flags]) for t in variants for flags in variants[t].values()]; "
        "print(json.dumps(variants))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", listing], cwd=BENCH, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    for task, variants in json.loads(completed.stdout.splitlines()[-1]).items():
        assert next(iter(variants.values())) == [], task  # the first row is the task's recipe itself
        assert len(variants) >= 3 and all(list(variants.values())[1:]), task
    completed = subprocess.run(
        [sys.executable, str(BENCH / "learning.py"), "ablation", "--tasks", "copy"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "the ablation covers reverse (the default task) and sort, not 'copy'" in completed.stderr
