"""bench/compare_with_bart.py and bench/speed_paths.py on a tiny model with one repeat: every measurement is reported.

They time nothing here (figures on a test machine mean nothing); they check that the commands in the README and
bench/README.md work and print their tables. Each script's `main` runs in this process with a user's arguments.
"""

import time

import pytest


@pytest.mark.slow
def test_speed_benchmark_reports_every_measurement(bench_run):
    report, printed = bench_run("compare_with_bart", ["--smoke", "--sections", "training,generation,memory"])
    counts = report["parameters"]["tiny"]
    assert abs(counts["ours"] / counts["bart"] - 1) < 0.05  # both models get the same size
    for name in ("ours", "bart"):
        assert report["training"][0][name]["tokens_per_s"] > 0 and report["training"][0][name]["mfu"] > 0
        assert all(result[name]["tokens_per_s"] > 0 for result in report["generation"])
        assert report["per_token"][0][name]["ratio_256_to_32"] > 0
        assert all(result[name]["peak_rss_delta_bytes"] > 0 for result in report["memory"])
    for row in ("training tokens/s, tiny", "generation tokens/s, tiny, 4-beam, batch 32", "peak memory, training tiny"):
        assert row in printed


def test_speed_benchmark_times_both_models_with_a_static_cache_on_the_cpu_clock(bench_run):
    report, printed = bench_run(
        "compare_with_bart",
        ["--smoke", "--sections", "generation", "--cache_implementation", "static", "--clock", "cpu"],
    )
    assert "static cache, cpu clock" in printed
    assert all(result[name]["tokens_per_s"] > 0 for result in report["generation"] for name in ("ours", "bart"))


def test_compile_decoding_compiles_the_named_models_and_gives_them_a_static_cache(bench):
    """`--compile_decoding ours|both`: the decoding step compiled as transformers documents it (a compiled forward,
    a static cache) for the models named; the others keep generate's default cache. Checked without compiling: a
    compilation would cost the suite tens of seconds on a fresh machine, and the compiled step's tokens are tested in
    tests/test_compile_and_export.py."""
    compare = bench("compare_with_bart")
    device = compare.pick_device("cpu")
    models = compare.build_models(compare.TINY, device)
    plain_forward = models["bart"].forward
    compare.prepare_for_generation(models, device, frozenset({"ours"}))
    assert models["ours"].forward is not type(models["ours"]).forward
    assert getattr(models["ours"].forward, "_torchdynamo_orig_callable", None) is not None  # torch.compile's wrapper
    assert models["bart"].forward == plain_forward and not models["bart"].training
    assert compare.config_for("ours", frozenset({"ours"}), 8, 1, None).cache_implementation == "static"
    assert compare.config_for("bart", frozenset({"ours"}), 8, 1, None).cache_implementation is None
    with pytest.raises(SystemExit):
        compare.main(["--smoke", "--compile_decoding", "bart"])  # ours or both only


def test_speed_path_comparisons_run(bench, capsys):
    bench("speed_paths").main(["--smoke", "--repeats", "1", "--clock", "cpu"])
    printed = capsys.readouterr().out
    for what in (
        "CPU dropout: training step",
        "lean step inputs",
        "eager attention for bf16 on CPU: training step",
        "static cache, written slots only",
        "generate's own cache written in place",
        "(cpu clock)",
    ):
        assert what in printed


def test_cpu_clock_counts_this_process_work_not_time_spent_waiting(bench):
    """`--clock cpu` is for a shared machine: a run that waits (here: sleeps, as a descheduled process would) is
    charged its wall time by the wall clock and next to nothing by the CPU clock."""
    common = bench("common")
    runs = {"wait": lambda: time.sleep(0.05)}
    assert min(common.alternate(runs, repeats=2, warmup=0, clock="wall")["wait"]) >= 0.05
    assert max(common.alternate(runs, repeats=2, warmup=0, clock="cpu")["wait"]) < 0.025
    with pytest.raises(ValueError, match="clock"):
        common.alternate(runs, repeats=1, clock="gpu")
