"""train.py's choice of how idle OpenMP threads wait: spin on free CPUs, sleep next to busy processes, and never
override the user's OMP_WAIT_POLICY."""

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hf_tiny_transformer_train import openmp
from hf_tiny_transformer_train.openmp import BUSY_CPUS_THRESHOLD, busy_cpus, choose_wait_policy

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train" / "train.py"
BUSY_LOOP = (sys.executable, "-c", "while True: pass")


def must_not_measure() -> float:
    raise AssertionError("the load was measured although the user chose a policy")


def test_a_policy_the_user_set_is_kept_and_the_load_not_measured():
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert choose_wait_policy(environ, must_not_measure) == "ACTIVE"
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_one_thread_per_process_needs_no_policy_and_no_measurement():
    environ = {"OMP_NUM_THREADS": "1"}
    assert choose_wait_policy(environ, must_not_measure) is None
    assert environ == {"OMP_NUM_THREADS": "1"}


def test_busy_cpus_make_idle_threads_sleep():
    environ = {}
    assert choose_wait_policy(environ, lambda: BUSY_CPUS_THRESHOLD) == "PASSIVE"
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_free_cpus_keep_the_default_spinning():
    environ = {}
    assert choose_wait_policy(environ, lambda: BUSY_CPUS_THRESHOLD / 2) is None
    assert environ == {}


@pytest.fixture
def busy_process():
    """A process that keeps one CPU busy while the test runs."""
    process = subprocess.Popen(BUSY_LOOP)
    time.sleep(0.5)  # past its start-up
    yield process
    process.kill()
    process.wait()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the load is read from Linux's /proc/stat")
def test_busy_cpus_sees_a_process_that_keeps_a_cpu_busy(busy_process):
    assert busy_cpus(0.3) >= BUSY_CPUS_THRESHOLD


def recording_restart(calls: list) -> Callable[[str, list[str]], None]:
    def restart(executable: str, argv: list[str]) -> None:
        calls.append((executable, argv))

    return restart


@pytest.mark.parametrize("load, policy", [(BUSY_CPUS_THRESHOLD, "PASSIVE"), (BUSY_CPUS_THRESHOLD / 2, None)])
def test_the_program_restarts_with_sleeping_threads_only_where_other_processes_are_busy(load, policy, monkeypatch):
    # The load is forced both ways, so that both paths are checked whatever the machine is doing.
    calls, environ = [], {}
    monkeypatch.setattr(openmp, "choose_wait_policy", lambda environ: choose_wait_policy(environ, lambda: load))
    monkeypatch.setattr(os, "execv", recording_restart(calls))
    openmp.restart_with_wait_policy(environ)
    assert environ.get("OMP_WAIT_POLICY") == policy
    # The same interpreter, options and arguments: the new program reads the policy as it loads torch.
    assert calls == ([(sys.executable, sys.orig_argv)] if policy else [])


def test_a_policy_the_user_set_never_restarts_the_program(monkeypatch):
    calls, environ = [], {"OMP_WAIT_POLICY": "ACTIVE"}
    monkeypatch.setattr(openmp, "choose_wait_policy", lambda environ: choose_wait_policy(environ, must_not_measure))
    monkeypatch.setattr(os, "execv", recording_restart(calls))
    openmp.restart_with_wait_policy(environ)
    assert calls == [] and environ == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize("load, restarted", [(BUSY_CPUS_THRESHOLD, True), (0.0, False)])
def test_python_train_py_chooses_the_policy_before_it_trains(load, restarted):
    # A new process runs train/train.py as `python train/train.py --help` does, with the load forced: where other
    # processes are busy it restarts (recorded, not done) with the policy set, before main(); where the CPUs are
    # free, main() runs (--help prints the usage) with libgomp's default.
    probe = (
        "import os, runpy, sys\n"
        "from hf_tiny_transformer_train import openmp\n"
        "choose = openmp.choose_wait_policy\n"
        f"openmp.choose_wait_policy = lambda environ: choose(environ, lambda: {load})\n"
        "def restart(executable, argv):\n"
        "    print('restart:', executable == sys.executable and argv == sys.orig_argv, os.environ['OMP_WAIT_POLICY'])\n"
        "    raise SystemExit(0)\n"
        "os.execv = restart\n"
        f"sys.argv = [{str(TRAIN_SCRIPT)!r}, '--help']\n"
        f"runpy.run_path({str(TRAIN_SCRIPT)!r}, run_name='__main__')\n"
    )
    environment = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    completed = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    if restarted:
        assert completed.stdout.splitlines() == ["restart: True PASSIVE"]
    else:
        assert completed.stdout.startswith("usage:") and "restart:" not in completed.stdout


def test_importing_train_after_torch_leaves_the_policy_alone(monkeypatch):
    # A benchmark or test imports train.py's module after torch (as this process has): a policy could no longer reach
    # its threads, and would only be passed on to the processes it starts, chosen by the load of the moment. Only
    # train.py's __main__ block chooses.
    assert "torch" in sys.modules

    def must_not_choose(environ) -> None:
        raise AssertionError("train.py chose a wait policy although torch was already loaded")

    monkeypatch.setattr(openmp, "choose_wait_policy", must_not_choose)
    # train.py's module code, run under another module name as `python train/train.py` runs it.
    spec = importlib.util.spec_from_file_location("train_script", TRAIN_SCRIPT)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


# ---------------------------------------------------------------------------------------------------------------------
# Threads that follow the load once the run has started (ThreadsFollowLoadCallback).
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def restored_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_threads_drop_to_the_cpus_others_leave_free_and_come_back_when_they_are_free(restored_threads, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    torch.set_num_threads(4)
    loads = iter([0.2, 1.0, 3.0, 3.9, None, 0.4, 0.0])
    callback = openmp.ThreadsFollowLoadCallback(interval=0.0, measure=lambda: next(loads))
    followed = []
    for _ in range(6):
        callback.on_step_end(None, None, None)
        followed.append(torch.get_num_threads())
    # 3.8 CPUs free: all 4; 3 free: 3; 1: 1; 0.1: still 1; no reading: unchanged; 3.6 free: back to all 4.
    assert followed == [4, 3, 1, 1, 1, 4]
    callback.on_prediction_step(None, None, None)  # evaluations and predictions after training follow it too
    assert torch.get_num_threads() == 4


def test_threads_never_exceed_the_runs_own_count_nor_measure_more_often_than_the_interval(restored_threads):
    torch.set_num_threads(2)
    measured = []
    callback = openmp.ThreadsFollowLoadCallback(interval=3600.0, measure=lambda: measured.append(1) or 0.0)
    callback.last_check = 0.0  # the first check is due
    for _ in range(5):
        callback.on_step_end(None, None, None)
    assert measured == [1] and torch.get_num_threads() == 2  # free CPUs: the run's 2, not os.cpu_count()'s


def test_the_load_of_other_processes_is_every_cpus_busy_time_less_this_processs_own(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # (busy, total) ticks of all CPUs, this process's CPU seconds and the wall clock, at the first and second reading.
    readings = iter([((1000, 4000), 10.0, 100.0), ((1150, 4200), 10.5, 101.0)])
    monkeypatch.setattr(openmp.OtherProcessesLoad, "reading", staticmethod(lambda: next(readings)))
    load = openmp.OtherProcessesLoad()
    # 150 of 200 ticks busy on 2 CPUs: 1.5 CPUs, of which this process 0.5 CPU-seconds in 1 s.
    assert load() == pytest.approx(1.0)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the load is read from Linux's /proc/stat")
def test_the_load_of_other_processes_sees_a_process_that_keeps_a_cpu_busy(busy_process):
    load = openmp.OtherProcessesLoad()
    time.sleep(0.5)
    busy = load()
    assert busy is not None and busy >= 0.7


def test_threads_follow_the_load_only_for_one_process_on_a_cpu_with_threads_the_user_left_to_torch(
    restored_threads, tmp_path
):
    from transformers import TrainingArguments

    arguments = TrainingArguments(output_dir=str(tmp_path / "never"), use_cpu=True, report_to="none")
    torch.set_num_threads(2)
    assert openmp.threads_may_follow_load(arguments, {})
    assert not openmp.threads_may_follow_load(arguments, {"OMP_NUM_THREADS": "2"})  # the user's, or a launcher's
    torch.set_num_threads(1)
    assert not openmp.threads_may_follow_load(arguments, {})  # one thread: nothing to give back
