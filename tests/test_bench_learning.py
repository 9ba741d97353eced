"""bench/learning.py: the length-generalisation comparison on a tiny budget, and the ablation's variants; the
script's `main` runs in this process with a user's arguments (it times nothing here)."""

import pytest

from hf_tiny_transformer_train import train
from hf_tiny_transformer_train.typed_inputs import FAMILIES


@pytest.mark.slow
def test_learning_benchmark_trains_ours_and_bart_and_reports_length_generalisation(bench_run):
    written, printed = bench_run("learning", ["length", "--smoke", "--tasks", "copy", "--seeds", "1"])
    report = written["length"]["copy"]
    assert set(report) == {
        "ours, sinusoidal",
        "ours, learned",
        "ours, relative",
        "ours, relative, bias not scaled",
        "BART (learned)",
    }
    families = {f"{family} {lengths}" for family in FAMILIES for lengths in ("1-25", "26-50", "51-100")}
    for result in report.values():
        # Uniform inputs and every typed-input family at each length range (short repeats only at 1-25).
        assert set(result["exact_match"]) == {"1-25", "26-50", "51-100"} | families - {
            "short_repeats 26-50",
            "short_repeats 51-100",
        }
        assert all(0 <= value <= 1 for value in result["exact_match"].values())
    assert "copy, ours, relative" in printed
    assert "copy, ours, relative, 51-100" in printed.split("Typed inputs")[1]


def test_length_benchmark_trains_add_on_1_to_10_digits_and_tests_up_to_40(bench_run):
    report, printed = bench_run("learning", ["length", "--smoke", "--tasks", "add", "--seeds", "1"])
    for result in report["length"]["add"].values():
        assert set(result["exact_match"]) == {"1-10", "11-20", "21-40"}  # no typed-input families: two numbers
    assert "add, ours, relative, 1-10" in printed and "Typed inputs" not in printed


def test_learning_ablation_lists_each_tasks_variants_as_flags_train_accepts(bench):
    # Every variant's flags must be ones train.py accepts for its task, or the ablation would fail after an hour of
    # runs. (The tasks and places it refuses: tests/test_bench_flags.py.)
    learning = bench("learning")
    for task in ("reverse", "sort"):
        variants = learning.ablation_variants(task)
        assert next(iter(variants.values())) == [], task  # the first row is the task's recipe itself
        assert len(variants) >= 3 and all(list(variants.values())[1:]), task
        for flags in variants.values():
            train.parse_arguments(["--task", task, *flags])


@pytest.mark.parametrize(
    "precision, forced", [("recipe", []), ("fp32", ["--bf16", "false"]), ("bf16", ["--bf16", "true"])]
)
def test_commands_force_the_precision_asked_for_in_every_run_and_label_the_rows_with_it(
    bench, monkeypatch, precision, forced
):
    learning = bench("learning")
    started = []

    def run_command(flags, seed):  # train.py's run itself is not what this checks
        started.append((flags, seed))
        return {"flags": flags, "seed": seed, "wall_s": 1.0, "train_s": 1.0, "steps": 10, "test_exact_match": 1.0,
                "longer_test_exact_match": 1.0, "typed_inputs": {}}  # fmt: skip

    monkeypatch.setattr(learning, "run_command", run_command)
    report, table = learning.benchmark_commands(["copy", "sort"], [1, 2], precision)
    assert started == [(["--task", task, *forced], seed) for task in ("copy", "sort") for seed in (1, 2)]
    assert set(report) == {"copy", "sort"}
    for task in ("copy", "sort"):
        train.parse_arguments(["--task", task, *forced])  # flags train.py accepts for every task
        assert " ".join(["python train/train.py --task", task, *forced]) in table
