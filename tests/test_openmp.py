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
