"""train/train.py end to end: arguments, a short run that learns, fine-tune, and loading the result folder in a fresh
Python process that cannot import hf_tiny_transformer. Resuming a rerun is in test_faults.py, two processes in
test_distributed.py."""

import json
import os
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer

from hf_tiny_transformer_train import arguments, data, train
from hf_tiny_transformer_train.data import TASKS, generate_examples
from hf_tiny_transformer_train.metrics import sequence_metrics
from hf_tiny_transformer_train.typed_inputs import build_typed_inputs
from tests.conftest import seeded_model, tiny_config
from tests.train_flags import corpus_flags, new_model_flags

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "train" / "train.py"
# Copy of 1-4 integers with a small model: learnt in a few hundred steps, seconds of CPU.
TINY = [
    *corpus_flags("copy", min_length=1, max_length=4, train_size=4000, validation_size=64, test_size=128),
    *new_model_flags(d_model=64, layers=2, num_attention_heads=4, ffn_dim=128),
    "--per_device_train_batch_size", "64", "--per_device_eval_batch_size", "128",
    "--learning_rate", "1e-3", "--warmup_steps", "50", "--logging_steps", "10", "--disable_tqdm", "true",
    "--repeated_values_share", "0", "--typed_inputs_size", "20",
]  # fmt: skip


def run_training(tmp: Path, env: dict[str, str], *flags: str) -> str:
    """Run train.py in a new process; return its combined output, failing the test with it if the run fails."""
    completed = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *flags],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-5000:]
    return output


def log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, environment) -> tuple[Path, str]:
    """One short run shared by the tests that inspect, fine-tune or load its result: its folder and what it printed."""
    tmp = tmp_path_factory.mktemp("trained")
    output_dir = tmp / "copy-model"
    output = run_training(
        tmp, environment(tmp), *TINY, "--output_dir", str(output_dir), "--max_steps", "500", "--eval_steps", "100",
        "--save_steps", "100", "--eval_on_start", "true", "--target_exact_match", "0.95",
    )  # fmt: skip
    return output_dir, output


@pytest.fixture(scope="module")
def trained(trained_run) -> Path:
    return trained_run[0]


# Arguments: parsed in-process, no training.


def recipe(name: str) -> dict:
    return yaml.safe_load((arguments.RECIPES / f"{name}.yaml").read_text())


def test_flags_not_given_take_the_task_recipe_and_given_flags_win():
    model_args, data_args, training_args = train.parse_arguments(["--task", "sort"])
    defaults = recipe("sort")
    assert data_args.recipe == str(arguments.RECIPES / "sort.yaml") and data_args.recipe_overrides == {}
    assert training_args.output_dir == "outputs/tiny-transformer-sort"
    assert training_args.max_steps == defaults["max_steps"]
    assert training_args.learning_rate == defaults["learning_rate"]
    assert (data_args.max_length, model_args.encoder_layers) == (defaults["max_length"], defaults["encoder_layers"])
    assert model_args.d_model is None and "d_model" not in defaults  # the size is TinyTransformerConfig's
    assert training_args.predict_with_generate and training_args.do_train and training_args.do_predict
    model_args, data_args, training_args = train.parse_arguments(
        ["--task", "sort", "--max_steps", "7", "--d_model", "48", "--output_dir", "elsewhere", "--max_length", "9"]
    )
    assert (training_args.max_steps, model_args.d_model, training_args.output_dir) == (7, 48, "elsewhere")
    assert data_args.max_length == 9
    # What the model card lists: the flags whose values differ from the recipe's (--task sort is the recipe's).
    assert data_args.recipe_overrides == {"max_steps": 7, "d_model": 48, "output_dir": "elsewhere", "max_length": 9}


def test_defaults_that_other_flags_rule_out_are_dropped_instead_of_failing():
    # The default stop at the validation target needs evaluations; the default curriculum a step count and its own
    # batch order. Given explicitly, the same combinations are errors (above).
    _, data_args, _ = train.parse_arguments(["--eval_strategy", "no"])
    assert data_args.target_exact_match is None
    _, data_args, _ = train.parse_arguments(["--task", "sort", "--max_steps", "-1", "--num_train_epochs", "1"])
    assert data_args.length_curriculum_steps == 0 and data_args.length_grouping_batches == 1
    _, data_args, training_args = train.parse_arguments(
        ["--task", "sort", "--train_sampling_strategy", "group_by_length"]
    )
    assert data_args.length_curriculum_steps == 0 and data_args.length_grouping_batches == 1
    assert training_args.train_sampling_strategy == "group_by_length"
    _, data_args, _ = train.parse_arguments(["--task", "sort"])
    assert data_args.length_grouping_batches == recipe("sort")["length_grouping_batches"] > 1
    _, data_args, _ = train.parse_arguments([])
    assert data_args.length_curriculum_steps == recipe("reverse")["length_curriculum_steps"]
    assert data_args.target_exact_match == recipe("reverse")["target_exact_match"]


def test_the_trainer_reads_the_curriculum_then_batches_grouped_by_length(tmp_path):
    # train.py's order of batches, read by the Trainer as train.py builds it: after the curriculum's 4 steps, every
    # batch pads to about its own length (the collator pads to the batch's longest source).
    _, data_args, training_args = train.parse_arguments(
        ["--task", "sort", "--max_steps", "36", "--length_curriculum_steps", "4", "--length_grouping_batches", "16",
         "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path), "--report_to", "none"]
    )  # fmt: skip
    lengths = [1 + index % 30 for index in range(600)]
    examples = datasets.Dataset.from_dict(
        {"input_ids": [[5] * length for length in lengths], "labels": [[6] * length for length in lengths]}
    )
    ordered, curriculum_steps = train.order_training_batches(examples, data_args, training_args)
    assert curriculum_steps == 4 and training_args.train_sampling_strategy == "sequential"
    tokenizer = data.build_tokenizer()
    trainer = Seq2SeqTrainer(
        model=seeded_model(tiny_config()),
        args=training_args,
        train_dataset=ordered,
        eval_dataset=ordered,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
    )
    read = [batch["attention_mask"] for batch in trainer.get_train_dataloader()]
    assert len(read) == 36 and all(len(mask) == 8 for mask in read)
    expected = [len(ids) for ids in ordered["input_ids"]]
    assert [length for mask in read for length in mask.sum(-1).tolist()] == expected  # in train.py's order
    padded = sum(mask.numel() for mask in read[4:])
    assert padded < 1.2 * sum(expected[4 * 8 :])  # after the curriculum: about one length a batch


@pytest.mark.parametrize("native", [True, False])
def test_sort_trains_in_bf16_where_the_hardware_multiplies_bf16_unless_the_user_chooses_otherwise(native, monkeypatch):
    # The hardware's answer is forced both ways, so that both paths are checked on any CPU.
    monkeypatch.setattr(arguments, "computes_bf16_natively", lambda: native)
    _, _, training_args = train.parse_arguments(["--task", "sort"])
    assert training_args.bf16 is native
    chosen_by_user = [["--task", "reverse"], ["--task", "sort", "--bf16", "false"]]
    if not torch.accelerator.is_available():
        chosen_by_user.append(["--task", "sort", "--use_cpu", "false"])  # the Trainer refuses bf16 on a CPU so
    for flags in chosen_by_user:
        _, _, training_args = train.parse_arguments(flags)
        assert training_args.bf16 is False, flags
    _, _, training_args = train.parse_arguments(["--task", "reverse", "--bf16", "true"])
    assert training_args.bf16 is True


@pytest.mark.skipif(
    torch.accelerator.is_available() or not Path("/proc/cpuinfo").exists(), reason="reads a Linux CPU's flags"
)
def test_native_bf16_is_read_from_the_cpu_flags():
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert arguments.computes_bf16_natively() == bool({"avx512_bf16", "amx_tile"} & flags)


def test_no_arguments_select_the_default_task():
    _, data_args, training_args = train.parse_arguments([])
    assert data_args.task == arguments.DEFAULT_TASK
    assert training_args.output_dir == f"outputs/tiny-transformer-{arguments.DEFAULT_TASK}"


def test_a_recipe_file_of_ones_own_starts_the_run_and_flags_still_override_it(tmp_path):
    path = tmp_path / "my_recipe.yaml"
    path.write_text(
        (arguments.RECIPES / "copy.yaml").read_text() + "max_length: 8\nlearning_rate: 1e-3\noutput_dir: mine\n"
    )
    model_args, data_args, training_args = train.parse_arguments(["--recipe", str(path), "--max_steps", "9"])
    assert (data_args.task, data_args.max_length, training_args.output_dir) == ("copy", 8, "mine")
    assert training_args.learning_rate == 1e-3  # YAML reads 1e-3 as text: converted as the flag would be
    assert training_args.max_steps == 9 and data_args.recipe_overrides == {"max_steps": 9}
    assert data_args.recipe == str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("task: copy\nmax_lenght: 8\n", "max_lenght are not flags of train.py"),
        ("- task\n- copy\n", "a recipe is a mapping of flag names to values"),
        (
            "task: copy\n",
            "--train_size, --validation_size, --test_size, --min_length, --max_length, --longer_test_size, "
            "--repeated_values_share, --typed_inputs_size not set: neither the recipe nor the command line gives a value",
        ),
    ],
)
def test_a_recipe_file_that_cannot_work_stops_with_one_clear_line(tmp_path, text, message, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stopped:
        train.parse_arguments(["--recipe", str(path)])
    assert stopped.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_every_recipe_file_is_read_and_checked():
    for name in TASKS:
        _, data_args, _ = train.parse_arguments(["--task", name])
        assert data_args.task == name and data_args.recipe == str(arguments.RECIPES / f"{name}.yaml")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "divide"], "invalid choice: 'divide'"),
        (["--train_size", "-5"], "--train_size must be at least 1; got -5"),
        (["--min_length", "0"], "--min_length must be at least 1; got 0"),
        (["--min_length", "9", "--max_length", "3"], "--max_length (3) must be at least --min_length (9)"),
        (["--d_model", "-8"], "`d_model` must be a positive integer, got -8"),
        (["--d_model", "30", "--num_attention_heads", "4"], "must be divisible by `num_attention_heads`"),
        (["--position_embedding_type", "learned", "--max_length", "200"], "max_position_embeddings (128)"),
        (
            [
                "--task",
                "add",
                "--max_length",
                "10",
                "--position_embedding_type",
                "learned",
                "--max_position_embeddings",
                "8",
            ],
            "add sequences of 12 tokens",  # 10 columns and </s>; the start token and 11 digits
        ),
        (["--model_name_or_path", "some/model", "--d_model", "64"], "--d_model cannot be combined with"),
        (["--target_exact_match", "1.5"], "--target_exact_match must be a share in [0, 1]"),
        (["--target_exact_match", "0.9", "--eval_strategy", "no"], "--target_exact_match needs evaluations"),
        (["--longer_test_size", "-1"], "--longer_test_size must be at least 0"),
        (["--length_curriculum_steps", "-1"], "--length_curriculum_steps must be at least 0"),
        (["--length_curriculum_steps", "100", "--max_steps", "-1", "--num_train_epochs", "1"], "needs --max_steps"),
        (
            ["--length_curriculum_steps", "0.1", "--train_sampling_strategy", "group_by_length"],
            "--length_curriculum_steps fixes the order of the batches",
        ),
        (["--length_grouping_batches", "0"], "--length_grouping_batches must be at least 1"),
        (
            ["--task", "sort", "--length_grouping_batches", "8", "--max_steps", "-1", "--num_train_epochs", "1"],
            "--length_grouping_batches needs --max_steps",
        ),
        (
            [
                "--length_curriculum_steps",
                "0",
                "--length_grouping_batches",
                "8",
                "--train_sampling_strategy",
                "sequential",
            ],
            "--length_grouping_batches fixes the order of the batches",
        ),
    ],
)
def test_nonsense_arguments_stop_with_one_clear_line(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.parse_arguments(flags)
    assert stopped.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]


# End to end: new processes, as users run the script.


@pytest.mark.slow
def test_short_run_learns(trained):
    history = log_history(trained)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    exact = [entry["eval_exact_match"] for entry in history if "eval_exact_match" in entry]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    # The run stops at its first evaluation at the target (step 100 of 500 here), when the losses have fallen to about
    # 0.3 of where they started (training 4.5 -> 1.3-1.4 over the last ten steps, with or without batches grouped by
    # length; validation 4.7 -> 1.1-1.3).
    assert losses[-1] < 0.4 * losses[0] and eval_losses[-1] < 0.4 * eval_losses[0]
    assert exact[0] < 0.05  # eval_on_start: the untrained model
    assert exact[-1] > 0.9
    test = json.loads((trained / "test_results.json").read_text())
    assert test["test_exact_match"] > 0.9 and test["test_token_accuracy"] > 0.95


@pytest.mark.slow
def test_a_run_prints_none_of_torchaos_import_noise(trained_run):
    # What torchao logs as transformers' model code first imports it (hf_tiny_transformer's TORCHAO_IMPORT_NOISE):
    # train.py imports the package, which drops it, before transformers' Trainer.
    _, output = trained_run
    assert [
        line for line in output.splitlines() if ("torchao" in line and "_C_" in line) or "is an Enum subclass" in line
    ] == []


@pytest.mark.slow
def test_result_folder_is_ready_to_share(trained):
    for name in (
        "model.safetensors", "config.json", "generation_config.json", "configuration_tiny_transformer.py",
        "modeling_tiny_transformer.py", "tokenizer.json", "tokenizer_config.json", "README.md", "test_results.json",
    ):  # fmt: skip
        assert (trained / name).is_file(), name
    for figure in ("training_curves.png", "attention.png"):
        assert (trained / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((trained / "config.json").read_text())
    assert config["use_cache"] is True
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM"}
    generation = json.loads((trained / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == 5 and "max_length" not in generation  # 4 integers + </s>

    card = ModelCard.load(trained / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert "copy" in card.data.tags and card.data.datasets
    test_exact_match = json.loads((trained / "test_results.json").read_text())["test_exact_match"]
    exact_match = next(result for result in card.data.eval_results if result.metric_type == "exact_match")
    assert exact_match.metric_value == round(test_exact_match, 4) and exact_match.dataset_split == "test"
    for text in ("python train/train.py --task copy", "![Training and validation curves](training_curves.png)",
                 "![Cross-attention weights](attention.png)", "## Intended use and limitations",
                 "separated by spaces", "| longer inputs, 5-8 (held out) |",
                 "It was trained on 1-4 integers per sequence. On 200 held-out inputs of 5-8 integers per sequence, "
                 "never seen in training, it reaches",
                 "- The relative position-bias tables learn at 10 times that rate: Adam moves each weight by about",
                 "- Batches grouped by length: after the curriculum, every 16 batches drawn are pooled"):  # fmt: skip
        assert text in card.text


@pytest.mark.slow
def test_training_stops_at_the_first_evaluation_that_reaches_the_target(trained):
    history = log_history(trained)
    exact = [(entry["step"], entry["eval_exact_match"]) for entry in history if "eval_exact_match" in entry]
    state = json.loads((trained / "trainer_state.json").read_text())
    assert state["global_step"] < 500  # --max_steps 500: stopped before
    # The last evaluation of training (train.py evaluates once more after it) reached 0.95; none before it did.
    reached = [step for step, score in exact if score >= 0.95]
    assert reached[0] == state["global_step"]
    assert all(score < 0.95 for step, score in exact if step < reached[0])
    card = (trained / "README.md").read_text()
    assert f"Stopped at step {state['global_step']}, the first evaluation whose validation exact match" in card


def test_evaluations_and_typed_families_score_teacher_forced_and_agree_with_generate_on_the_saved_model(trained):
    history = log_history(trained)
    during = [entry for entry in history if "eval_exact_match" in entry]
    after = json.loads((trained / "eval_results.json").read_text())
    # Exact match from a teacher-forced forward (evaluation.py), during training and after it: no generated-token
    # metrics. The evaluation after training ran on training's last weights (it stopped at that evaluation).
    assert during and all("eval_token_accuracy" not in entry for entry in [*during, after])
    assert after["eval_exact_match"] == during[-1]["eval_exact_match"]
    # The test split generates; the typed-input families are scored teacher-forced too, and greedy decoding by
    # `generate` on the saved folder gets right exactly the share of each family the run reported.
    results = json.loads((trained / "test_results.json").read_text())
    assert "test_token_accuracy" in results
    model = AutoModelForSeq2SeqLM.from_pretrained(trained).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained)
    families = build_typed_inputs("copy", seed=42, num_examples=20, min_length=1, max_length=4)
    assert len(families) >= 4
    for family, split in families.items():
        inputs = tokenizer(list(split["source"]), return_tensors="pt", padding=True)
        labels = tokenizer(text_target=list(split["target"]))["input_ids"]
        with torch.no_grad():
            generated = model.generate(**inputs, do_sample=False, num_beams=1)
        greedy = sequence_metrics(generated.tolist(), labels, tokenizer.pad_token_id, tokenizer.eos_token_id)
        assert results[f"test_family_{family}_exact_match"] == greedy["exact_match"], family


@pytest.mark.slow
def test_longer_test_measures_held_out_inputs_past_the_training_lengths(trained):
    results = json.loads((trained / "longer_test_results.json").read_text())
    assert results["longer_test_samples"] == 200
    assert 0.0 <= results["longer_test_exact_match"] <= 1.0


def fine_tuning_flags() -> list[str]:
    """TINY without its size flags: they belong to a new model, and a checkpoint brings its own."""
    flags = list(TINY)
    for name in ("--d_model", "--encoder_layers", "--decoder_layers", "--num_attention_heads", "--ffn_dim"):
        index = flags.index(name)
        del flags[index : index + 2]
    return flags


@pytest.mark.slow
def test_fine_tuning_starts_from_the_trained_weights(trained, tmp_path, environment):
    output_dir = tmp_path / "fine-tuned"
    run_training(
        tmp_path, environment(tmp_path), *fine_tuning_flags(), "--model_name_or_path", str(trained), "--output_dir", str(output_dir),
        "--max_steps", "20", "--eval_steps", "20", "--eval_on_start", "true", "--learning_rate", "1e-4",
    )  # fmt: skip
    start = next(entry for entry in log_history(output_dir) if "eval_exact_match" in entry)
    assert start["step"] == 0 and start["eval_exact_match"] > 0.9  # a new model would score 0
    assert json.loads((output_dir / "config.json").read_text())["d_model"] == 64
    assert (output_dir / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()


FRESH_LOAD = """
import json, sys
# Behave as if hf_tiny_transformer were not installed, whatever this machine has (an editable install, a path).
import os
sys.modules["hf_tiny_transformer"] = None
sys.path = [entry for entry in sys.path if os.path.realpath(entry or ".") not in {source_folders!r}]
try:
    import hf_tiny_transformer
    raise SystemExit("hf_tiny_transformer is importable")
except ImportError:
    pass
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({folder!r}, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained({folder!r}, trust_remote_code=True)
sources = json.loads(sys.argv[1])
generated = model.generate(**tokenizer(sources, return_tensors="pt", padding=True))
print(json.dumps({{
    "module": type(model).__module__,
    "predictions": tokenizer.batch_decode(generated, skip_special_tokens=True),
}}))
"""


@pytest.mark.slow
def test_the_run_tests_each_typed_input_family_and_the_card_shows_them(trained):
    results = json.loads((trained / "test_results.json").read_text())
    # Copy of 1-4 integers: the families with sources of 2-4 integers, at 1-4 and at the longer test's 5-8.
    for family in ("one_value", "few_values", "short_repeats", "ascending", "descending"):
        assert 0 < results[f"test_family_{family}_samples"] <= 20
        assert 0 <= results[f"test_family_{family}_exact_match"] <= 1
    assert "test_family_run_inside_samples" not in results  # a run inside needs at least 6 integers
    longer = json.loads((trained / "longer_test_results.json").read_text())
    assert longer["longer_test_family_run_inside_samples"] > 0
    card = (trained / "README.md").read_text()
    assert "## Inputs a person types" in card
    assert (
        f"{100 * results['test_family_one_value_exact_match']:.1f}% of {results['test_family_one_value_samples']}"
        in card
    )


@pytest.mark.slow
def test_fresh_process_without_the_package_loads_the_folder_and_solves_held_out_examples(
    trained, tmp_path, environment
):
    # Sources that hash into the test split never occur in any training split (see data.py).
    held_out = [example["source"] for example in generate_examples("copy", "test", 32, 1, 4, seed=1234)]
    source_folders = {os.path.realpath(REPO / name) for name in ("", "train", "tests", "hf_tiny_transformer")}
    script = FRESH_LOAD.format(source_folders=source_folders, folder=str(trained))
    env = environment(tmp_path)
    completed = subprocess.run(
        [sys.executable, "-I", "-c", script, json.dumps(held_out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-5000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.")  # the code stored in the folder, not ours
    correct = sum(prediction == source for prediction, source in zip(result["predictions"], held_out))
    assert correct >= 0.9 * len(held_out)
    # The saved generation config is clean: no max_length / max_new_tokens conflict warning.
    assert "max_length" not in completed.stderr


@pytest.mark.slow
def test_push_to_hub_uploads_the_finished_folder_once(monkeypatch, tmp_path):
    calls = []

    class RecordingHfApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id))
            return SimpleNamespace(repo_id=f"someone/{repo_id}")

        def upload_folder(self, *, repo_id, folder_path, commit_message, ignore_patterns, revision):
            folder = Path(folder_path)
            uploaded = sorted(
                str(path.relative_to(folder)) for path in folder.rglob("*")
                if path.is_file() and not any(fnmatch(str(path.relative_to(folder)), p) for p in ignore_patterns)
            )  # fmt: skip
            calls.append(("upload_folder", repo_id, uploaded, (folder / "README.md").read_text()))

    monkeypatch.setattr(train, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    output_dir = tmp_path / "pushed"
    train.main([*TINY, "--output_dir", str(output_dir), "--max_steps", "10", "--save_steps", "5", "--eval_steps", "10",
                "--push_to_hub", "true", "--hub_model_id", "tiny-copy"])  # fmt: skip

    assert [call[0] for call in calls] == ["create_repo", "upload_folder"]
    _, repo_id, uploaded, card = calls[1]
    assert repo_id == "someone/tiny-copy"
    assert not [name for name in uploaded if name.startswith("checkpoint-")]
    for name in (
        "model.safetensors",
        "config.json",
        "modeling_tiny_transformer.py",
        "tokenizer.json",
        "generation_config.json",
        "README.md",
        "training_curves.png",
        "attention.png",
        "test_results.json",
    ):
        assert name in uploaded  # fmt: skip
    assert 'from_pretrained("someone/tiny-copy", trust_remote_code=True)' in card


@pytest.mark.slow
def test_lora_fine_tuning_saves_an_adapter_that_peft_loads_and_a_merged_model_that_agrees(
    trained, tmp_path, environment
):
    from peft import AutoPeftModelForSeq2SeqLM, PeftModel

    output_dir = tmp_path / "reverse-lora"
    output = run_training(
        tmp_path, environment(tmp_path), *fine_tuning_flags(), "--task", "reverse", "--model_name_or_path", str(trained),
        "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--merge_adapter", "--max_steps", "30",
        "--eval_steps", "30", "--save_steps", "30", "--learning_rate", "5e-3", "--output_dir", str(output_dir),
    )  # fmt: skip
    assert "LoRA adapters:" in output and "trainable parameters" in output
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in output_dir.iterdir()}
    assert not (output_dir / "model.safetensors").exists()  # the adapter only; the base stays where it was
    original = AutoModelForSeq2SeqLM.from_pretrained(trained).eval()
    adapted = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(trained), output_dir).eval()
    auto = AutoPeftModelForSeq2SeqLM.from_pretrained(output_dir, trust_remote_code=True).eval()
    merged = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "merged").eval()
    ids = torch.tensor([[10, 11, 12, 2], [13, 14, 2, 0]])
    inputs = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "decoder_input_ids": torch.tensor([[1, 10, 11]] * 2),
    }
    with torch.no_grad():
        reference = adapted(**inputs).logits
        torch.testing.assert_close(auto(**inputs).logits, reference)
        torch.testing.assert_close(merged(**inputs).logits, reference, atol=1e-4, rtol=1e-4)
        # The adapter changed what the model computes: trained, not a zero update.
        assert not torch.allclose(original(**inputs).logits, reference)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--use_peft"], "--use_peft adapts a trained model: pass --model_name_or_path"),
        (["--merge_adapter"], "--merge_adapter merges a LoRA adapter: it needs --use_peft"),
        (["--use_peft", "--model_name_or_path", "m", "--lora_r", "0"], "--lora_r must be at least 1"),
        (["--use_peft", "--model_name_or_path", "m", "--lora_dropout", "1"], "--lora_dropout must be a probability"),
        (["--use_peft", "--model_name_or_path", "m", "--lora_alpha", "0"], "--lora_alpha must be positive"),
    ],
)
def test_adapter_flags_that_cannot_work_are_refused_before_any_work(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.parse_arguments(["--task", "copy", *flags])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
