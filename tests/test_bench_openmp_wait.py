"""bench/openmp_wait.py: both wait policies timed with and without a busy neighbour, each in its own process (OpenMP
reads the policy once, as torch loads); the script's `main` runs in this process with a user's arguments."""


def test_openmp_wait_policy_comparison_reports_both_policies_with_and_without_a_busy_neighbour(bench_run):
    report, printed = bench_run("openmp_wait", ["--smoke", "--rows", "sort", "--repeats", "1", "--steps", "2"])
    for row in ("sort step, CPUs otherwise free", "sort step, next to a busy process"):
        assert row in printed
    rows = report["rows"]
    assert [(row["row"], row["busy_neighbour"]) for row in rows] == [("sort", False), ("sort", True)]
    assert all(row["spin_ms"] > 0 and row["sleep_ms"] > 0 and row["sleep_over_spin"] > 0 for row in rows)
