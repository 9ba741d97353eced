"""Crashes mid-training: a run killed with SIGKILL and started again with the same command loses nothing.

End-to-end tests (marked slow) run train/train.py as a child process on a tiny model and corpus (about 15 s each,
mostly imports) and compare the final `model.safetensors` bitwise, and the test metrics exactly, with an
uninterrupted run of the same command. The checks of `train/checkpoints.py` on hand-made folders are fast.
"""

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_tiny_transformer_train import train
from hf_tiny_transformer_train.checkpoints import checkpoint_problem, last_complete_checkpoint
from tests.train_flags import corpus_flags, new_model_flags

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train" / "train.py"
# 40 steps of batch 16 with dropout, a checkpoint every 5 steps and an evaluation at step 20: the restarted run has
# to restore the weights, the optimizer, the scheduler, the data order and the dropout RNG to match bitwise.
FLAGS = [
    *corpus_flags("copy", min_length=1, max_length=4, train_size=512, validation_size=16, test_size=16),
    "--typed_inputs_size", "0", "--longer_test_size", "0",  # the test split's metrics suffice (3 s less a run)
    *new_model_flags(d_model=16, layers=1, num_attention_heads=2, ffn_dim=32), "--dropout", "0.1",
    "--max_steps", "40", "--save_steps", "5", "--save_total_limit", "3", "--eval_steps", "20", "--logging_steps", "5",
    "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
    "--learning_rate", "1e-2", "--warmup_steps", "2", "--seed", "0", "--use_cpu", "--disable_tqdm", "true",
]  # fmt: skip
TIMING_METRICS = ("runtime", "per_second")


@pytest.fixture(scope="module")
def child_env(tmp_path_factory, environment) -> dict[str, str]:
    # One thread (environment's): the same arithmetic in every run, and no fight over the machine's cores.
    return environment(tmp_path_factory.mktemp("faults"))


def command(output_dir: Path) -> list[str]:
    return [sys.executable, str(TRAIN_SCRIPT), *FLAGS, "--output_dir", str(output_dir)]


def run_to_the_end(output_dir: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command(output_dir), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def kill_when(output_dir: Path, env: dict[str, str], ready, what: str) -> None:
    """Start the command and SIGKILL it as soon as `ready()` is true; fail if the run ends first."""
    process = subprocess.Popen(command(output_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, f"the run ended before the kill at {what}"


def assert_same_result(output_dir: Path, reference_dir: Path) -> None:
    weights = load_file(output_dir / "model.safetensors")
    reference_weights = load_file(reference_dir / "model.safetensors")
    assert weights.keys() == reference_weights.keys()
    different = [name for name in weights if not torch.equal(weights[name], reference_weights[name])]
    assert not different, f"weights differ from the uninterrupted run: {different}"
    metrics, reference_metrics = (
        {key: value for key, value in json.loads((path / "test_results.json").read_text()).items()
         if not key.endswith(TIMING_METRICS)}
        for path in (output_dir, reference_dir)
    )  # fmt: skip
    assert metrics == reference_metrics and "test_loss" in metrics


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, child_env) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_to_the_end(output_dir, child_env)
    return output_dir


@pytest.mark.slow
def test_same_seed_and_command_give_identical_weights_and_metrics(uninterrupted_run, child_env, tmp_path):
    run_to_the_end(tmp_path / "again", child_env)
    assert_same_result(tmp_path / "again", uninterrupted_run)


@pytest.mark.slow
def test_kill_while_the_first_checkpoint_is_written_then_rerun_matches_uninterrupted_run(
    uninterrupted_run, child_env, tmp_path
):
    output_dir = tmp_path / "killed"
    kill_when(output_dir, child_env, (output_dir / "checkpoint-5").exists, "checkpoint-5 appeared")
    run_to_the_end(output_dir, child_env)
    assert_same_result(output_dir, uninterrupted_run)


@pytest.mark.slow
def test_kill_at_a_random_moment_then_rerun_resumes_and_matches_uninterrupted_run(
    uninterrupted_run, child_env, tmp_path
):
    # A random moment within training: some time after checkpoint `step` starts being written (mid-write, between
    # two checkpoints, or during the evaluation at step 20).
    choice = random.Random(time.time_ns())
    step, delay = choice.choice([10, 15, 20, 25, 30]), choice.uniform(0.0, 0.05)
    output_dir = tmp_path / "killed"
    started = []

    def ready() -> bool:
        if not started and (output_dir / f"checkpoint-{step}").exists():
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] >= delay

    kill_when(output_dir, child_env, ready, f"{delay:.3f} s after checkpoint-{step} appeared")
    output = run_to_the_end(output_dir, child_env)
    resumed = re.search(rf"resuming training at {re.escape(str(output_dir))}/checkpoint-(\d+)\.", output)
    moment = f"killed {delay:.3f} s after checkpoint-{step} appeared"
    assert resumed and int(resumed.group(1)) >= step - 5, f"{moment}, but the rerun did not resume from {step - 5}+"
    assert_same_result(output_dir, uninterrupted_run)


@pytest.mark.slow
def test_half_written_checkpoints_are_skipped_with_a_warning_and_the_run_resumes_before_them(
    uninterrupted_run, child_env, tmp_path
):
    # What a kill leaves behind, made by hand: the run stopped while writing checkpoint-35, or checkpoint-40.
    output_dir = tmp_path / "damaged"
    output_dir.mkdir()
    for step in (30, 35, 40):
        shutil.copytree(uninterrupted_run / f"checkpoint-{step}", output_dir / f"checkpoint-{step}")
    (output_dir / "checkpoint-35" / "trainer_state.json").unlink()
    truncate(output_dir / "checkpoint-40" / "optimizer.pt")

    output = run_to_the_end(output_dir, child_env)
    assert f"Skipping {output_dir}/checkpoint-40: optimizer.pt is truncated" in output
    assert f"Skipping {output_dir}/checkpoint-35: trainer_state.json is missing" in output
    assert f"resuming training at {output_dir}/checkpoint-30." in output
    assert_same_result(output_dir, uninterrupted_run)
    # Each logging step once: 5-30 from the checkpoint's history, 35-40 from the resumed run.
    log_history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in log_history if "loss" in entry] == list(range(5, 41, 5))


# ---------------------------------------------------------------------------------------------------------------------
# train/checkpoints.py on hand-made checkpoint folders (fast).
# ---------------------------------------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def make_checkpoint(output_dir: Path, step: int) -> Path:
    """A folder with the files the Trainer writes, small but well-formed."""
    checkpoint = output_dir / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    save_file({"weight": torch.ones(64, 64)}, checkpoint / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(64)}, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return checkpoint


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda folder: (folder / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda folder: truncate(folder / "trainer_state.json"), "trainer_state.json is truncated"),
        (lambda folder: (folder / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda folder: truncate(folder / "model.safetensors"), "model.safetensors is damaged"),
        (lambda folder: (folder / "model.safetensors").write_bytes(b""), "model.safetensors is damaged"),
        (lambda folder: truncate(folder / "optimizer.pt"), "optimizer.pt is truncated"),
        (lambda folder: truncate(folder / "rng_state.pth"), "rng_state.pth is truncated"),
        (lambda folder: (folder / "scheduler.pt").write_bytes(b""), "scheduler.pt is truncated"),
    ],
    ids=["no-state", "cut-state", "no-weights", "cut-weights", "empty-weights", "cut-optimizer", "cut-rng", "empty-lr"],
)
def test_an_incomplete_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, caplog, damage, problem):
    make_checkpoint(tmp_path, 5)
    previous = make_checkpoint(tmp_path, 10)
    latest = make_checkpoint(tmp_path, 15)
    assert checkpoint_problem(latest) is None
    damage(latest)
    assert checkpoint_problem(latest).startswith(problem)
    assert last_complete_checkpoint(tmp_path) == str(previous)
    assert f"Skipping {latest}: {problem}" in caplog.text


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    make_checkpoint(tmp_path, 9)
    latest = make_checkpoint(tmp_path, 10)
    assert last_complete_checkpoint(tmp_path) == str(latest)


def test_folders_without_a_complete_checkpoint_give_none(tmp_path):
    assert last_complete_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-7").mkdir()  # created, nothing written yet
    (tmp_path / "checkpoint-8.tmp").mkdir()
    (tmp_path / "checkpoint-9").write_text("a file, not a folder")
    make_checkpoint(tmp_path / "elsewhere", 20)
    assert last_complete_checkpoint(tmp_path) is None


# ---------------------------------------------------------------------------------------------------------------------
# Nonsense Trainer arguments. tests/test_training.py checks the script's own flags (task, sizes, lengths beyond the
# model); these Trainer flags would otherwise fail later, after the corpus is built, with a torch traceback (batch
# sizes, learning rate) or never act at all (save/eval steps).
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
        (["--learning_rate", "-1"], "--learning_rate"),
        (["--save_steps", "0"], "--save_steps"),
        (["--eval_steps", "-1"], "--eval_steps"),
        (["--warmup_steps", "-3"], "warmup_steps"),
        (["--logging_steps", "0"], "--logging_steps"),
    ],
)
def test_nonsense_trainer_arguments_stop_before_any_work(flags, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        train.parse_arguments([*flags, "--output_dir", str(tmp_path / "never")])
    assert stopped.value.code == 2
    assert flag in capsys.readouterr().err.splitlines()[-1]
