"""train/train.py on a user's own data: flags, one-line errors before any training, and short runs end to end
(JSON lines, CSV, a save_to_disk dataset, a given or a trained tokenizer, fine-tuning a built-in task's model)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict
from huggingface_hub import ModelCard
from transformers import AutoTokenizer

from hf_tiny_transformer_train import arguments, train
from hf_tiny_transformer_train.data import build_tokenizer
from tests.train_flags import corpus_flags, new_model_flags

REPO = Path(__file__).resolve().parents[1]
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
# A look-up a tiny model learns in about a hundred steps: a number's English name -> its digits.
LOOKUP = [{"source": word, "target": str(number)} for number, word in enumerate(NUMBER_WORDS)]
# A small model and a short run: seconds of CPU.
TINY = [
    *new_model_flags(d_model=32, layers=1, num_attention_heads=2, ffn_dim=64),
    "--dropout", "0", "--per_device_train_batch_size", "32", "--logging_steps", "10",
    "--disable_tqdm", "true", "--report_to", "none",
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def quiet_process(tmp_path_factory, child_threads):
    """What datasets caches (CSV and Parquet reads) goes under the tests' folder; and the runs in this process use
    the child processes' threads (one unless forced, see conftest.py): tiny models gain nothing from two, OpenMP's
    spinning threads would fight the other tests and processes for the cores, and a fresh process's answers are
    compared with this one's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(child_threads)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder of pairs files: `lookup.jsonl` (the look-up, each pair 40 times) and `lookup-eval.jsonl` (each pair
    once)."""
    folder = tmp_path_factory.mktemp("pairs")
    write_jsonl(folder / "lookup.jsonl", LOOKUP * 40)
    write_jsonl(folder / "lookup-eval.jsonl", LOOKUP)
    return folder


def stopped_with(capsys, argv: list[str]) -> str:
    """Run train.main(argv), expect it to stop with status 2, and return its one error line."""
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    assert stopped.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, error_lines
    return error_lines[0]


# Arguments: parsed in-process, no data read.


def test_own_data_takes_the_user_data_recipe_and_a_name_for_the_output_folder(files):
    model_args, data_args, training_args = train.parse_arguments(["--train_file", str(files / "lookup.jsonl")])
    assert data_args.uses_own_data and data_args.task is None and data_args.train_size is None
    assert training_args.output_dir == "outputs/tiny-transformer-lookup"
    assert data_args.recipe == str(arguments.USER_DATA_RECIPE)
    for name, value in yaml.safe_load(arguments.USER_DATA_RECIPE.read_text()).items():
        if name == "report_to":
            continue  # the Trainer turns "none" into []
        holder = next(args for args in (model_args, data_args, training_args) if hasattr(args, name))
        actual = getattr(holder, name)
        assert getattr(actual, "value", actual) == value, name
    _, data_args, _ = train.parse_arguments(["--task", "sort"])
    assert data_args.source_column is None and data_args.early_stopping_patience is None


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train_file", "nowhere.jsonl"], "--train_file nowhere.jsonl: no such file"),
        (["--train_file", "{files}/lookup.jsonl", "--task", "sort"], "--task describe the built-in synthetic corpus"),
        (["--dataset_name", "{files}", "--test_file", "{files}/lookup.jsonl"], "--dataset_name cannot be combined"),
        (["--max_source_length", "8"], "--max_source_length need your own data"),
        (["--validation_file", "{files}/lookup.jsonl"], "training needs --train_file"),
        (["--train_file", "{files}/lookup.jsonl", "--vocab_size", "100"], "--vocab_size must be at least 260"),
        (
            ["--train_file", "{files}/lookup.jsonl", "--tokenizer_name", "{files}", "--vocab_size", "500"],
            "--vocab_size describe a new tokenizer; --tokenizer_name brings its own",
        ),
        (
            ["--train_file", "{files}/lookup.jsonl", "--max_source_length", "300"],
            "--max_source_length 300 is more than the model's max_position_embeddings (256)",
        ),
        (
            ["--train_file", "{files}/lookup.jsonl", "--eval_strategy", "no", "--load_best_model_at_end", "false"],
            "--early_stopping_patience 5 needs evaluations",
        ),
    ],
)
def test_nonsense_flags_for_own_data_stop_with_one_clear_line(files, flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        train.parse_arguments([flag.format(files=files) for flag in flags])
    assert stopped.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]


# Bad data: one line naming the problem, before any training, and nothing in the output folder.


@pytest.mark.parametrize(
    "bad_file, message",
    [
        ("", "--test_file {path}: the file is empty"),
        ('{"source": "one", "answer": "1"}\n', "{path} has no column 'target' (its columns: source, answer)"),
        ('{"source": "one", "target": "1"}\n{"source": "two", "target": 2}\n', "{path} row 2: column 'target' holds 2"),
        ('{"source": "one two three", "target": "1"}\n', "{path} row 1: the source is 6 tokens long, more than"),
    ],
)
def test_bad_data_stop_before_training_and_leave_no_output_folder(files, tmp_path, capsys, bad_file, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(bad_file)
    output_dir = tmp_path / "output"
    error = stopped_with(
        capsys,
        [*TINY, "--train_file", str(files / "lookup.jsonl"), "--validation_file", str(files / "lookup-eval.jsonl"),
         "--test_file", str(path), "--output_dir", str(output_dir), "--max_position_embeddings", "3"],
    )  # fmt: skip
    assert message.format(path=path) in error
    assert not output_dir.exists()


@pytest.mark.parametrize("missing", ["pad", "eos"])
def test_a_tokenizer_without_pad_or_eos_stops_before_training(files, tmp_path, capsys, missing):
    tokenizer = build_tokenizer()
    setattr(tokenizer, f"{missing}_token", None)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    output_dir = tmp_path / "output"
    error = stopped_with(
        capsys,
        [*TINY, "--train_file", str(files / "lookup.jsonl"), "--validation_file", str(files / "lookup-eval.jsonl"),
         "--test_file", str(files / "lookup-eval.jsonl"), "--tokenizer_name", str(tmp_path / "tokenizer"),
         "--output_dir", str(output_dir)],
    )  # fmt: skip
    assert f"the tokenizer {tmp_path / 'tokenizer'} has no {missing} token" in error
    assert not output_dir.exists()


# End to end.


FRESH_LOAD = """
import json, sys
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

folder, sources = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
generated = model.generate(**tokenizer(sources, return_tensors="pt", padding=True))
print(json.dumps(tokenizer.batch_decode(generated, skip_special_tokens=True)))
"""


@pytest.fixture(scope="module")
def jsonl_run(files, tmp_path_factory):
    """A run on JSON-lines files with a new BPE tokenizer (the default); returns its trainer."""
    output_dir = tmp_path_factory.mktemp("jsonl") / "lookup-model"
    return train.main(
        [*TINY, "--train_file", str(files / "lookup.jsonl"), "--validation_file", str(files / "lookup-eval.jsonl"),
         "--test_file", str(files / "lookup-eval.jsonl"), "--output_dir", str(output_dir), "--max_steps", "150",
         "--eval_steps", "50", "--save_steps", "50", "--learning_rate", "3e-3", "--vocab_size", "300"]
    )  # fmt: skip


@pytest.mark.slow
def test_jsonl_run_learns_and_a_fresh_process_generates_the_same_answers(jsonl_run, tmp_path):
    output_dir = Path(jsonl_run.args.output_dir)
    results = json.loads((output_dir / "test_results.json").read_text())
    assert results["test_exact_match"] >= 0.9
    assert {"test_chrf", "test_bleu", "test_token_accuracy"} <= set(results)

    sources = [pair["source"] for pair in LOOKUP]
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = jsonl_run.model.eval()
    expected = tokenizer.batch_decode(
        model.generate(**tokenizer(sources, return_tensors="pt", padding=True).to(model.device)),
        skip_special_tokens=True,
    )
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(output_dir), json.dumps(sources)],
        cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.slow
def test_the_new_bpe_tokenizer_is_saved_with_the_model_and_the_card_names_data_and_metrics(jsonl_run):
    output_dir = Path(jsonl_run.args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert type(tokenizer.backend_tokenizer.model).__name__ == "BPE"
    assert jsonl_run.model.config.vocab_size == len(tokenizer) <= 300
    assert (jsonl_run.model.config.pad_token_id, jsonl_run.model.config.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
    )
    card = ModelCard.load(output_dir / "README.md")
    assert {result.metric_type for result in card.data.eval_results} == {"exact_match", "accuracy", "chrf", "bleu"}
    for text in ("| split | examples | exact match | token accuracy | chrF | BLEU |", "columns `source` → `target`",
                 f"train: {len(LOOKUP) * 40:,} examples from `lookup.jsonl`", "byte-level BPE",
                 "test: 16 examples from `lookup-eval.jsonl`"):  # fmt: skip
        assert text in card.text, text


@pytest.mark.slow
def test_csv_with_a_word_level_tokenizer_and_held_out_splits_drawn_from_train(tmp_path):
    rows = [{"question": f"{word} plus one", "answer": str(number + 1)} for number, word in enumerate(NUMBER_WORDS)]
    Dataset.from_list(rows * 5).to_csv(tmp_path / "pairs.csv", index=False)
    output_dir = tmp_path / "csv-model"
    trainer = train.main(
        [*TINY, "--train_file", str(tmp_path / "pairs.csv"), "--source_column", "question", "--target_column",
         "answer", "--tokenizer_type", "word_level", "--vocab_size", "40", "--validation_split_percentage", "10",
         "--output_dir", str(output_dir), "--max_steps", "20", "--eval_steps", "10", "--save_steps", "10"]
    )  # fmt: skip
    # 10% of the 16 distinct sources: 2 each for validation and test; their 5 copies each leave train.
    metrics = json.loads((output_dir / "all_results.json").read_text())
    assert (metrics["eval_samples"], metrics["test_samples"], metrics["train_samples"]) == (2, 2, 80 - 4 * 5)
    assert type(trainer.processing_class.backend_tokenizer.model).__name__ == "WordLevel"
    card = (output_dir / "README.md").read_text()
    assert "columns `question` → `answer`" in card
    assert "validation: 2 examples from 10% of the distinct sources of `pairs.csv`" in card
    assert "validation and test were drawn at random from the training data (seed 42)" in card


@pytest.mark.slow
def test_a_save_to_disk_dataset_with_a_given_tokenizer(jsonl_run, tmp_path):
    DatasetDict({"train": Dataset.from_list(LOOKUP * 10), "validation": Dataset.from_list(LOOKUP)}).save_to_disk(
        tmp_path / "saved"
    )
    tokenizer_folder = jsonl_run.args.output_dir  # the BPE tokenizer the JSON-lines run trained and saved
    output_dir = tmp_path / "saved-model"
    train.main(
        [*TINY, "--dataset_name", str(tmp_path / "saved"), "--tokenizer_name", tokenizer_folder, "--do_predict",
         "false", "--output_dir", str(output_dir), "--max_steps", "20", "--eval_steps", "10", "--save_steps", "10"]
    )  # fmt: skip
    assert (output_dir / "tokenizer.json").read_text() == (Path(tokenizer_folder) / "tokenizer.json").read_text()
    assert json.loads((output_dir / "all_results.json").read_text())["eval_samples"] == len(LOOKUP)
    card = (output_dir / "README.md").read_text()
    assert f"the dataset `{tmp_path / 'saved'}`" in card and f"`{tokenizer_folder}` (" in card


@pytest.mark.slow
def test_a_built_in_task_model_fine_tunes_on_a_user_file_with_its_own_tokenizer(tmp_path):
    built_in = tmp_path / "copy-model"
    train.main(
        [*TINY, *corpus_flags("copy", min_length=1, max_length=3, train_size=2000, validation_size=32, test_size=32),
         "--max_position_embeddings", "16", "--max_steps", "150",
         "--eval_steps", "150", "--save_steps", "150", "--learning_rate", "3e-3", "--output_dir", str(built_in)]
    )  # fmt: skip
    pairs = [{"source": f"{a} {b}", "target": f"{a} {b}"} for a in range(0, 100, 7) for b in range(0, 100, 9)]
    path = write_jsonl(tmp_path / "copy-pairs.jsonl", pairs)
    output_dir = tmp_path / "fine-tuned"
    flags_without_size = TINY[TINY.index("--per_device_train_batch_size") :]
    train.main(
        [*flags_without_size, "--model_name_or_path", str(built_in), "--train_file", path, "--output_dir",
         str(output_dir), "--max_steps", "10", "--eval_steps", "10", "--save_steps", "10", "--eval_on_start", "true"]
    )  # fmt: skip
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    start = next(entry for entry in history if "eval_exact_match" in entry)
    # Already partly learnt from the copy task; a new model predicts about uniformly: loss ln(vocabulary), no match.
    assert start["step"] == 0 and start["eval_exact_match"] > 0
    assert start["eval_loss"] < 0.5 * math.log(len(build_tokenizer()))
    assert (output_dir / "tokenizer.json").read_text() == (built_in / "tokenizer.json").read_text()
    card = (output_dir / "README.md").read_text()
    assert f"fine-tuned from `{built_in}`" in card and "copy-pairs.jsonl" in card
