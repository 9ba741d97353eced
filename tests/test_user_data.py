"""Reading, checking, splitting and tokenizing a user's own pairs of texts (train/user_data.py), in process."""

import json

import datasets
import pytest
from datasets import Dataset, DatasetDict

from hf_tiny_transformer_train.data import build_tokenizer
from hf_tiny_transformer_train.user_data import (
    check_data_file,
    check_lengths,
    load_user_data,
    tokenize_user_data,
)

PAIRS = [{"source": f"{number} 7", "target": f"7 {number}"} for number in range(40)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets' CSV and Parquet readers cache what they read: under this test's folder, not the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def load(needed=("train",), **sources):
    """load_user_data with every source None unless given, columns source/target, 10% held out, seed 0."""
    arguments = {
        "train_file": None,
        "validation_file": None,
        "test_file": None,
        "dataset_name": None,
        "dataset_config_name": None,
        "source_column": "source",
        "target_column": "target",
        "needed_splits": list(needed),
        "split_percentage": 10,
        "seed": 0,
        "max_samples": {},
    }
    return load_user_data(**{**arguments, **sources})


def test_jsonl_json_list_csv_and_parquet_give_the_same_pairs(tmp_path):
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    (tmp_path / "pairs.json").write_text(json.dumps(PAIRS))
    Dataset.from_list(PAIRS).to_csv(tmp_path / "pairs.csv", index=False)
    Dataset.from_list(PAIRS).to_parquet(tmp_path / "pairs.parquet")
    for path in (jsonl, *(str(tmp_path / f"pairs.{kind}") for kind in ("json", "csv", "parquet"))):
        train = load(train_file=path).splits["train"]
        assert train.to_list() == [{**pair, "row": row} for row, pair in enumerate(PAIRS, start=1)], path


def test_texts_that_look_like_numbers_or_dates_stay_text(tmp_path):
    rows = [{"source": "05", "target": "2021-03-05"}, {"source": "007", "target": "1950-01-01"}]
    Dataset.from_list(rows).to_csv(tmp_path / "pairs.csv", index=False)
    for path in (write_jsonl(tmp_path / "pairs.jsonl", rows), str(tmp_path / "pairs.csv")):
        train = load(train_file=path).splits["train"]
        assert list(train["source"]) == ["05", "007"] and list(train["target"]) == ["2021-03-05", "1950-01-01"]


def test_a_save_to_disk_folder_gives_its_splits_and_other_column_names_are_read(tmp_path):
    renamed = [{"question": pair["source"], "answer": pair["target"], "id": index} for index, pair in enumerate(PAIRS)]
    DatasetDict({"train": Dataset.from_list(renamed[:30]), "test": Dataset.from_list(renamed[30:])}).save_to_disk(
        tmp_path / "saved"
    )
    data = load(
        needed=("train", "test"), dataset_name=str(tmp_path / "saved"), source_column="question", target_column="answer"
    )
    assert list(data.splits["test"]["source"]) == [pair["source"] for pair in PAIRS[30:]]
    assert data.splits["train"].column_names == ["source", "target", "row"]
    assert data.split_from_train == [] and data.origins["test"] == f"{tmp_path / 'saved'} split 'test'"


def test_missing_splits_are_drawn_from_train_with_the_seed_and_share_no_source_with_it(tmp_path):
    # Every source twice: a drawn source's twin must leave the training split too.
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS + PAIRS)
    data = load(needed=("train", "validation", "test"), train_file=path)
    again = load(needed=("train", "validation", "test"), train_file=path)
    assert data.split_from_train == ["validation", "test"]
    assert len(data.splits["validation"]) == len(data.splits["test"]) == 4  # 10% of 40 distinct sources
    train_sources = set(data.splits["train"]["source"])
    for split in ("validation", "test"):
        assert not train_sources & set(data.splits[split]["source"])
        assert data.splits[split].to_list() == again.splits[split].to_list()
    other_seed = load(needed=("train", "validation"), train_file=path, seed=1)
    assert other_seed.splits["validation"].to_list() != data.splits["validation"].to_list()


def test_sample_caps_apply_after_the_held_out_splits_are_drawn(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    full = load(needed=("train", "test"), train_file=path)
    capped = load(needed=("train", "test"), train_file=path, max_samples={"train": 5, "test": 2})
    assert len(capped.splits["train"]) == 5 and len(capped.splits["test"]) == 2
    assert capped.splits["test"].to_list() == full.splits["test"].to_list()[:2]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "pairs.jsonl: the file is empty"),
        ('{"source": "a", "target": "b"}\n{"source": "a", "target": 3}\n', "row 2: column 'target' holds 3 (int)"),
        ('{"source": "a", "target": "b"}\n{"source": "c"}\n', "row 2: column 'target' is missing"),
        ('{"source": "a", "target": "b"}\n{"source": " ", "target": "d"}\n', "row 2: column 'source' is empty"),
        ('{"source": "a", "target": "b"}\n{"source": oops}\n', "pairs.jsonl line 2: invalid JSON"),
        ('{"text": "a", "label": "b"}\n', "has no column 'source' (its columns: text, label)"),
    ],
)
def test_bad_jsonl_files_are_refused_naming_file_row_and_column(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match="pairs.jsonl") as error:
        load(train_file=str(path))
    assert message in str(error.value)


def test_a_csv_with_only_its_header_holds_no_examples(tmp_path):
    (tmp_path / "pairs.csv").write_text("source,target\n")
    with pytest.raises(ValueError, match="pairs.csv: the file holds no examples"):
        load(train_file=str(tmp_path / "pairs.csv"))


def test_an_empty_split_of_a_dataset_is_refused(tmp_path):
    pairs = Dataset.from_list(PAIRS)
    # One shard each: datasets cannot load back a split saved in zero shards.
    DatasetDict({"train": pairs, "test": pairs.select([])}).save_to_disk(
        tmp_path / "saved", num_shards={"train": 1, "test": 1}
    )
    with pytest.raises(ValueError, match="split 'test' holds no examples"):
        load(needed=("train", "test"), dataset_name=str(tmp_path / "saved"))


@pytest.mark.parametrize(
    "name, message", [("nowhere.jsonl", "nowhere.jsonl: no such file"), ("pairs.txt", "unknown file type '.txt'")]
)
def test_file_flags_name_a_file_of_a_known_type(tmp_path, name, message):
    (tmp_path / "pairs.txt").write_text("a\tb\n")
    with pytest.raises(ValueError, match="--train_file") as error:
        check_data_file(str(tmp_path / name), "train_file")
    assert message in str(error.value)


def test_an_example_longer_than_the_positions_is_refused_naming_its_row_unless_truncation_is_asked(tmp_path):
    rows = [*PAIRS[:5], {"source": " ".join(["5"] * 30), "target": "5"}]
    data = load(train_file=write_jsonl(tmp_path / "pairs.jsonl", rows))
    tokenizer = build_tokenizer()
    with pytest.raises(ValueError, match=r"pairs.jsonl row 6: the source is 31 tokens long, more than .* \(16\)"):
        check_lengths(data, tokenize_user_data(data, tokenizer, None, None), 16, None, None)

    tokenized = check_lengths(data, tokenize_user_data(data, tokenizer, 16, None), 16, 16, None)
    assert data.truncated == {"train": (1, 0)}
    long_row = tokenized["train"][5]["input_ids"]
    assert len(long_row) == 16 and long_row[-1] == tokenizer.eos_token_id  # cut text, </s> kept
    assert tokenized["train"].column_names == ["input_ids", "attention_mask", "labels"]


def test_labels_end_with_eos_even_when_the_tokenizer_does_not_append_it(tmp_path):
    data = load(train_file=write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:3]))
    tokenizer = build_tokenizer()
    tokenizer.backend_tokenizer.post_processor = None  # like GPT-2's: no </s> appended
    tokenized = tokenize_user_data(data, tokenizer, None, None)
    assert all(labels[-1] == tokenizer.eos_token_id for labels in tokenized["train"]["labels"])
    assert tokenized["train"][0]["labels"] == [*tokenizer("7 0")["input_ids"], tokenizer.eos_token_id]
