"""Distributed and mixed-precision training as users run it: train.py's DDP defaults, FSDP2 over two CPU processes
against one process, and --bf16 / --torch_compile through train.py end to end.

The benchmark's smoke run is in test_bench_distributed.py.
"""

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from hf_tiny_transformer import TinyTransformerForConditionalGeneration
from hf_tiny_transformer_train import train
from hf_tiny_transformer_train.model_card import cpu_name
from tests.train_flags import corpus_flags, new_model_flags

TESTS = Path(__file__).resolve().parent
FULLY_SHARD_SCRIPT = TESTS / "launched" / "train_with_fully_shard.py"
DDP_CONFIG = TESTS.parent / "train" / "accelerate" / "ddp.yaml"
TORCHRUN_2 = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")

# FSDP against one process after 4 AdamW steps (lr 1e-3): the gradients are averaged over the ranks in another order
# than one process sums them, so the weights may differ by rounding; 1e-5 is 1% of one step's update (measured:
# 1.4e-6).
FSDP_WEIGHT_TOLERANCE = 1e-5
# bf16 autocast against fp32, every logged loss of the 20-step run below, relative (measured: at most 0.005%).
BF16_LOSS_TOLERANCE = 0.005
# Compiled against eager, every logged loss (the Trainer logs losses rounded to 4 decimals; measured: equal).
COMPILE_LOSS_TOLERANCE = 5e-4

# A one-layer model on copies of exactly 4 integers: one input shape, so torch.compile compiles once; 20 steps.
SHORT_RUN = [
    *corpus_flags("copy", min_length=4, max_length=4, train_size=640, validation_size=32, test_size=32),
    *new_model_flags(d_model=32, layers=1, num_attention_heads=4, ffn_dim=64),
    "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "32",
    "--max_steps", "20", "--learning_rate", "3e-3", "--warmup_steps", "2", "--logging_steps", "1",
    "--eval_strategy", "no", "--disable_tqdm", "true",
    # No test predictions: these runs check what training computes in, and generating answers is another test's.
    "--do_predict", "false", "--typed_inputs_size", "0", "--longer_test_size", "0",
]  # fmt: skip

# Runs train.py's main as `python train/train.py` would, then reports what the Trainer did.
PROBE = """
import gc, json, sys
import torch
from safetensors import safe_open
from hf_tiny_transformer_train import train

gc.freeze()  # as train.py's __main__ does
trainer = train.main(sys.argv[1:])
output_dir = trainer.args.output_dir
# The Trainer (Accelerate) wraps the model's forward in autocast; a layer's output dtype shows what it computed in.
dtypes = []
trainer.model.lm_head.register_forward_hook(lambda module, inputs, output: dtypes.append(str(output.dtype)))
ids = torch.tensor([[5, 6, 7, 8, 2]])
with torch.no_grad():
    trainer.model(input_ids=ids, labels=ids)
with safe_open(f"{output_dir}/model.safetensors", "pt") as saved:
    saved_dtypes = sorted({str(saved.get_tensor(name).dtype) for name in saved.keys()})
report = {
    "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    "mixed_precision": trainer.accelerator.mixed_precision,
    "lm_head_output_dtype": dtypes[0],
    "wrapped_model": type(trainer.model_wrapped).__name__,
    "saved_dtypes": saved_dtypes,
}
with open(f"{output_dir}/probe.json", "w") as file:
    json.dump(report, file)
"""

# Runs train.py's main in each launched process and reports how the Trainer distributed the work.
LAUNCH_PROBE = """
import gc, hashlib, json, sys
import torch
from hf_tiny_transformer_train import train

gc.freeze()  # as train.py's __main__ does
trainer = train.main(sys.argv[1:])
args = trainer.args
parameters = torch.cat([parameter.detach().flatten() for parameter in trainer.model.parameters()])
report = {
    # train.py ends the group itself: left to interpreter exit, gloo's threads can abort a finished process.
    "process_group_ended": not torch.distributed.is_initialized(),
    "rank": args.process_index,
    "world_size": args.world_size,
    "distributed_type": str(trainer.accelerator.distributed_type),
    "wrapped_model": type(trainer.model_wrapped).__name__,
    "find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
    "batches_per_rank": len(trainer.get_train_dataloader()),
    "global_step": trainer.state.global_step,
    "parameters_sha256": hashlib.sha256(parameters.numpy().tobytes()).hexdigest(),
}
with open(f"{args.output_dir}/rank{args.process_index}.json", "w") as file:
    json.dump(report, file)
"""


def run(command: list[str], tmp: Path, env: dict[str, str]) -> None:
    completed = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-5000:]


def run_probe(tmp: Path, env: dict[str, str], *flags: str) -> dict:
    probe = tmp / "probe.py"
    probe.write_text(PROBE)
    output_dir = tmp / "run"
    run([sys.executable, str(probe), *SHORT_RUN, "--output_dir", str(output_dir), *flags], tmp, env)
    return json.loads((output_dir / "probe.json").read_text())


@pytest.fixture(scope="module")
def fp32_eager_run(tmp_path_factory, environment) -> dict:
    tmp = tmp_path_factory.mktemp("fp32")
    return run_probe(tmp, environment(tmp))


# DDP: train.py's defaults.


def test_train_script_skips_ddp_unused_parameter_search_by_default():
    _, _, training_args = train.parse_arguments([])
    assert training_args.ddp_find_unused_parameters is False
    _, _, training_args = train.parse_arguments(["--ddp_find_unused_parameters", "true"])
    assert training_args.ddp_find_unused_parameters is True


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the default of a machine without accelerator")
def test_train_script_uses_the_cpu_explicitly_where_there_is_no_accelerator():
    # Without use_cpu, torchrun's ranks would each train alone and --bf16 would be refused.
    _, _, training_args = train.parse_arguments([])
    assert training_args.use_cpu is True


@pytest.mark.slow
def test_accelerate_launch_with_the_ddp_config_shares_the_batch_over_two_cpu_processes(tmp_path, environment):
    # The GPU config of the README, on a machine without GPU: train.py's use_cpu default makes it DDP over gloo.
    # Accelerate starts the processes with torch.distributed.run, the launcher of `torchrun --nproc_per_node 2`.
    probe = tmp_path / "launch_probe.py"
    probe.write_text(LAUNCH_PROBE)
    output_dir = tmp_path / "ddp"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(DDP_CONFIG),
        "--num_processes",
        "2",
    ]
    flags = ["--train_size", "256", "--per_device_train_batch_size", "8", "--max_steps", "-1",
             "--num_train_epochs", "1", "--do_predict", "true", "--output_dir", str(output_dir)]  # fmt: skip
    run([*launch, str(probe), *SHORT_RUN, *flags], tmp_path, environment(tmp_path))
    reports = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, report in enumerate(reports):
        assert {key: value for key, value in report.items() if key != "parameters_sha256"} == {
            "process_group_ended": True,
            "rank": rank,
            "world_size": 2,
            "distributed_type": "DistributedType.MULTI_CPU",
            "wrapped_model": "DistributedDataParallel",
            "find_unused_parameters": False,  # train.py's default: no search for unused parameters
            # Each rank sees half of the 256 examples, 8 at a time: every optimizer step consumes 2 x 8 examples.
            "batches_per_rank": 256 // (2 * 8),
            "global_step": 256 // (2 * 8),
        }
    assert reports[0]["parameters_sha256"] == reports[1]["parameters_sha256"]
    assert (output_dir / "model.safetensors").is_file()
    assert json.loads((output_dir / "test_results.json").read_text())["test_exact_match"] >= 0


# Two nodes, each started by its own launcher as on two machines.

# 4 steps of a global batch of 2 x 8 on a one-layer model, a checkpoint every 2 steps.
MULTI_NODE_RUN = [
    *corpus_flags("copy", min_length=1, max_length=4, train_size=200, validation_size=20, test_size=20),
    "--longer_test_size", "0", "--typed_inputs_size", "0", "--max_steps", "4",
    *new_model_flags(d_model=16, layers=1, num_attention_heads=2, ffn_dim=32),
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "20", "--learning_rate", "1e-2",
    "--warmup_steps", "0", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--use_cpu",
    "--disable_tqdm", "true",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_started_by_their_own_launchers_train_one_run_written_once_by_rank_0(tmp_path, environment):
    # Each node has its own disk (working folder, caches and the same relative --output_dir) and its own launcher
    # with one process; they meet at node 0's address as two machines would. Each process runs train.py's main and
    # then reports its weights (LAUNCH_PROBE).
    probe = tmp_path / "launch_probe.py"
    probe.write_text(LAUNCH_PROBE)
    port = free_port()
    nodes = [tmp_path / f"node{node_rank}" for node_rank in range(2)]
    launchers = []
    for node_rank, node in enumerate(nodes):
        node.mkdir()
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
            str(probe), *MULTI_NODE_RUN, "--output_dir", "run",
        ]  # fmt: skip
        # Output to a file, not a pipe: a launcher blocked on a full pipe would stall the other node's collectives.
        with (node / "launcher.log").open("w") as log:
            launchers.append(
                subprocess.Popen(command, env=environment(node), cwd=node, stdout=log, stderr=subprocess.STDOUT)
            )
    try:
        for launcher in launchers:
            launcher.wait(timeout=600)
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    for launcher, node in zip(launchers, nodes):
        assert launcher.returncode == 0, (node / "launcher.log").read_text()[-5000:]

    folders = [node / "run" for node in nodes]
    reports = [json.loads((folder / f"rank{rank}.json").read_text()) for rank, folder in enumerate(folders)]
    for rank, report in enumerate(reports):
        assert (report["rank"], report["world_size"], report["global_step"]) == (rank, 2, 4)
        assert report["wrapped_model"] == "DistributedDataParallel" and report["process_group_ended"]
    # One run: both ranks end with the same weights, bit for bit (DDP applies the same averaged gradients on each
    # rank, computed with the same threads on the same machine).
    assert reports[0]["parameters_sha256"] == reports[1]["parameters_sha256"]
    # Rank 0 wrote the folder: model, card, results and checkpoints. On node 1 there is only what is rank 1's own:
    # the random state of each checkpoint (for resuming on that node) and the probe's report.
    assert all((folders[0] / name).is_file() for name in ("model.safetensors", "README.md", "test_results.json"))
    assert f"2 processes on {cpu_name()}" in (folders[0] / "README.md").read_text()
    assert sorted(str(path.relative_to(folders[1])) for path in folders[1].rglob("*") if path.is_file()) == [
        "checkpoint-2/rng_state_1.pth",
        "checkpoint-4/rng_state_1.pth",
        "rank1.json",
    ]
    # The saved model holds the weights the ranks ended with (hashed as the probe hashes them).
    saved = AutoModelForSeq2SeqLM.from_pretrained(folders[0])
    parameters = torch.cat([parameter.detach().flatten() for parameter in saved.parameters()])
    assert hashlib.sha256(parameters.numpy().tobytes()).hexdigest() == reports[0]["parameters_sha256"]


# FSDP2 on CPU: fully_shard with fsdp.yaml's policy (the Trainer runs DDP instead when use_cpu is set).


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_the_weights_of_one_process_with_the_same_global_batch(tmp_path, environment):
    one_process, sharded = tmp_path / "one-process", tmp_path / "fsdp"
    run([sys.executable, str(FULLY_SHARD_SCRIPT), str(one_process)], tmp_path, environment(tmp_path))
    run([*TORCHRUN_2, str(FULLY_SHARD_SCRIPT), str(sharded)], tmp_path, environment(tmp_path))

    reports = [json.loads((sharded / f"rank{rank}.json").read_text()) for rank in range(2)]
    full_parameters = reports[0]["full_parameters"]
    # Each rank held only its shard; together the shards hold every parameter once.
    assert all(report["sharded"] and report["local_parameters"] < full_parameters for report in reports)
    assert sum(report["local_parameters"] for report in reports) == full_parameters
    reference = json.loads((one_process / "rank0.json").read_text())
    torch.testing.assert_close(reports[0]["losses"], reference["losses"], rtol=1e-5, atol=0)

    # One ordinary checkpoint, fp32, that from_pretrained loads.
    assert not list(sharded.glob("*.index.json")) and [path.name for path in sharded.glob("*.safetensors")] == [
        "model.safetensors"
    ]
    with safe_open(sharded / "model.safetensors", "pt") as saved:
        assert {saved.get_tensor(name).dtype for name in saved.keys()} == {torch.float32}
    loaded = AutoModelForSeq2SeqLM.from_pretrained(sharded)
    assert isinstance(loaded, TinyTransformerForConditionalGeneration)
    trained_in_one_process = load_file(one_process / "model.safetensors")
    loaded_weights = loaded.state_dict()
    for name, tensor in trained_in_one_process.items():
        torch.testing.assert_close(loaded_weights[name], tensor, rtol=0, atol=FSDP_WEIGHT_TOLERANCE, msg=name)

    # The comparison means something: training moved the weights far more than the tolerance.
    torch.manual_seed(0)  # the script's seed: the same initial weights
    initial = TinyTransformerForConditionalGeneration(loaded.config).state_dict()
    moved = max((trained_in_one_process[name] - initial[name]).abs().max().item() for name in trained_in_one_process)
    assert moved > 100 * FSDP_WEIGHT_TOLERANCE


# Mixed precision and compilation through train.py.


@pytest.mark.slow
def test_bf16_run_computes_in_bf16_saves_fp32_weights_and_follows_the_fp32_loss_curve(
    fp32_eager_run, tmp_path, environment
):
    bf16_run = run_probe(tmp_path, environment(tmp_path), "--bf16", "true")
    assert bf16_run["mixed_precision"] == "bf16" and bf16_run["lm_head_output_dtype"] == "torch.bfloat16"
    assert fp32_eager_run["lm_head_output_dtype"] == "torch.float32"
    assert bf16_run["saved_dtypes"] == ["torch.float32"]  # autocast: the weights themselves stay fp32
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"1 process on {cpu_name()} with" in card  # the CPU as the OS names it
    assert "in bf16 mixed precision (autocast; the weights stay float32)" in card
    assert len(bf16_run["losses"]) == len(fp32_eager_run["losses"]) == 20
    for bf16_loss, fp32_loss in zip(bf16_run["losses"], fp32_eager_run["losses"]):
        assert abs(bf16_loss - fp32_loss) <= BF16_LOSS_TOLERANCE * fp32_loss


@pytest.mark.slow
def test_compiled_run_gives_the_eager_loss(fp32_eager_run, tmp_path, environment):
    # torch.compile as the Trainer applies it, through dynamo's capture and AOT autograd ("aot_eager"): inductor's C++
    # kernels for the same scheme's training step are compared with eager in test_compile_and_export.py, and would
    # cost this run 40 s of compiling on an empty compile cache.
    flags = ("--torch_compile", "true", "--torch_compile_backend", "aot_eager")
    compiled_run = run_probe(tmp_path, environment(tmp_path), *flags)
    assert compiled_run["wrapped_model"] == "OptimizedModule" and fp32_eager_run["wrapped_model"] != "OptimizedModule"
    assert compiled_run["saved_dtypes"] == ["torch.float32"]
    assert len(compiled_run["losses"]) == len(fp32_eager_run["losses"]) == 20
    torch.testing.assert_close(compiled_run["losses"], fp32_eager_run["losses"], rtol=0, atol=COMPILE_LOSS_TOLERANCE)
