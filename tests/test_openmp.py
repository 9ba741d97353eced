"""train.py's choice of how idle OpenMP threads wait: spin on free CPUs, sleep next to busy processes, and never
override the user's OMP_WAIT_POLICY."""

import importlib.util
import os
import subprocess
import sys
import time
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


def test_train_py_makes_threads_sleep_before_torch_starts_them_where_other_processes_are_busy():
    # A new process, as `python train/train.py` starts: notes whether torch was loaded when the choice was made
    # (OpenMP reads the policy once, as torch loads it). The load is the threshold's, as measured next to a busy
    # process (busy_cpus is checked against one above).
    probe = (
        "import importlib.util, os, sys\n"
        "from hf_tiny_transformer_train import openmp\n"
        "choose = openmp.choose_wait_policy\n"
        "def noting_torch(environ):\n"
        "    print('torch loaded:', 'torch' in sys.modules)\n"
        "    return choose(environ, lambda: openmp.BUSY_CPUS_THRESHOLD)\n"
        "openmp.choose_wait_policy = noting_torch\n"
        f"spec = importlib.util.spec_from_file_location('train_script', {str(TRAIN_SCRIPT)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('policy:', os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    completed = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["torch loaded: False", "policy: PASSIVE"]


def test_importing_train_after_torch_leaves_the_policy_alone(monkeypatch):
    # A benchmark or test imports train.py's module after torch (as this process has): a policy could no longer reach
    # its threads, and would only be passed on to the processes it starts, chosen by the load of the moment.
    assert "torch" in sys.modules

    def must_not_choose(environ) -> None:
        raise AssertionError("train.py chose a wait policy although torch was already loaded")

    monkeypatch.setattr(openmp, "choose_wait_policy", must_not_choose)
    # train.py's module code, run under another module name as `python train/train.py` runs it.
    spec = importlib.util.spec_from_file_location("train_script", TRAIN_SCRIPT)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
