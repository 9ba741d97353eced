"""The dates example corpus (train/make_dates.py): unambiguous spellings, held-out dates never seen in training."""

import datetime
import json

import numpy as np

from hf_tiny_transformer_train.data import split_of
from hf_tiny_transformer_train.make_dates import date_examples, main, write_date


def test_held_out_dates_never_occur_in_training_in_any_spelling():
    train = list(date_examples("train", 3000, seed=0))
    test = list(date_examples("test", 300, seed=0))
    train_dates = {example["target"] for example in train}
    assert not train_dates & {example["target"] for example in test}
    assert all(split_of(example["target"]) == "test" for example in test)
    assert len({example["source"] for example in test}) == 300  # held-out sources do not repeat


def test_the_corpus_is_the_same_for_a_seed_and_another_for_another_seed():
    assert list(date_examples("validation", 50, seed=3)) == list(date_examples("validation", 50, seed=3))
    assert list(date_examples("validation", 50, seed=3)) != list(date_examples("validation", 50, seed=4))


def test_numeric_spellings_put_the_day_first_and_two_digit_years_fall_in_the_range():
    rng = np.random.default_rng(0)
    spellings = {write_date(datetime.date(1972, 9, 25), rng) for _ in range(400)}
    numeric = {
        spelling for spelling in spellings if spelling.replace("/", "").replace(".", "").replace("-", "").isdigit()
    }
    assert numeric == {"25/09/72", "25/09/1972", "25/9/72", "25-09-1972", "1972/09/25", "25.09.1972", "25.9.72"}
    assert {"25 September 1972", "Sep 25, 1972", "25. September 1972", "the 25th of September 1972"} <= spellings


def test_the_script_writes_three_json_lines_files(tmp_path):
    main(["--output_dir", str(tmp_path), "--train_size", "20", "--validation_size", "5", "--test_size", "5"])
    for split, size in (("train", 20), ("validation", 5), ("test", 5)):
        rows = [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == size and all(set(row) == {"source", "target"} for row in rows)
