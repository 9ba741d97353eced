import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_tiny_transformer_train import data
from hf_tiny_transformer_train.data import (
    SPLITS,
    TASKS,
    build_corpus,
    column_operands,
    generate_examples,
    make_example,
    split_of,
    sum_columns,
    task_target,
)

SMALL = {"seed": 0, "train_size": 300, "validation_size": 40, "test_size": 60, "min_length": 1, "max_length": 8}


@pytest.fixture()
def cache_dir(tmp_path):
    return str(tmp_path / "datasets")


def words(text: str) -> list[int]:
    return [int(word) for word in text.split()]


@pytest.mark.parametrize("task", TASKS)
def test_corpus_is_deterministic_for_a_seed(task, cache_dir, tmp_path):
    first = build_corpus(task, **SMALL, cache_dir=cache_dir)
    # A separate cache: the second corpus is generated again, not read back.
    second = build_corpus(task, **SMALL, cache_dir=str(tmp_path / "other"))
    for split in SPLITS:
        assert first[split].to_list() == second[split].to_list()
    other_seed = build_corpus(task, **{**SMALL, "seed": 1}, cache_dir=cache_dir)
    assert other_seed["train"].to_list() != first["train"].to_list()


@pytest.mark.parametrize("task", TASKS)
def test_splits_have_the_requested_sizes_and_are_disjoint(task, cache_dir):
    corpus = build_corpus(task, **SMALL, cache_dir=cache_dir)
    assert {split: len(corpus[split]) for split in SPLITS} == {"train": 300, "validation": 40, "test": 60}
    sources = {split: set(corpus[split]["source"]) for split in SPLITS}
    # Evaluation splits never repeat a source, so a few short ones cannot fill them.
    assert (len(sources["validation"]), len(sources["test"])) == (40, 60)
    assert not sources["test"] & sources["train"]
    assert not sources["validation"] & sources["train"]
    assert not sources["test"] & sources["validation"]


def test_test_sources_never_occur_in_train_whatever_the_seed(cache_dir):
    # Short sequences repeat often, so overlap would show if splits were drawn rather than hashed.
    arguments = {**SMALL, "min_length": 1, "max_length": 2, "train_size": 2000}
    test = set(build_corpus("copy", **arguments, cache_dir=cache_dir)["test"]["source"])
    train = set(build_corpus("copy", **{**arguments, "seed": 7}, cache_dir=cache_dir)["train"]["source"])
    assert len(train) > 1000
    assert not test & train
    assert all(split_of(source) == "test" for source in test)


@pytest.mark.parametrize("task", ["copy", "reverse", "sort"])
def test_sequence_tasks_are_correct_and_within_the_length_range(task, cache_dir):
    corpus = build_corpus(task, **{**SMALL, "min_length": 3, "max_length": 6}, cache_dir=cache_dir)
    expected = {"copy": lambda values: values, "reverse": lambda values: values[::-1], "sort": sorted}[task]
    lengths = set()
    for example in corpus["train"]:
        source = words(example["source"])
        assert all(0 <= value <= 99 for value in source)
        assert words(example["target"]) == expected(source)
        lengths.add(len(source))
    assert lengths == {3, 4, 5, 6}


def test_add_sources_are_the_columns_of_the_sum_and_targets_its_digits(cache_dir):
    corpus = build_corpus("add", **{**SMALL, "min_length": 1, "max_length": 12}, cache_dir=cache_dir)
    column_counts = set()
    for example in corpus["train"]:
        columns, target = words(example["source"]), words(example["target"])
        assert all(0 <= column <= 99 for column in columns) and all(0 <= digit <= 9 for digit in target)
        # One column per digit of the longer operand, least significant first; the sum has one digit more.
        assert len(target) == len(columns) + 1
        first = int("".join(str(column // 10) for column in columns[::-1]))
        second = int("".join(str(column % 10) for column in columns[::-1]))
        assert max(len(str(first)), len(str(second))) == len(columns)
        assert int("".join(map(str, target[::-1]))) == first + second
        column_counts.add(len(columns))
    assert column_counts == set(range(1, 13))


def test_sum_columns_and_column_operands_invert_each_other():
    assert sum_columns(407, 95) == "75 9 40"
    assert sum_columns(0, 0) == "0"
    assert column_operands("75 9 40") == (407, 95)
    rng = np.random.default_rng(0)
    for _ in range(200):
        # Up to 24 digits: longer than an int64, as Python's ints allow.
        first, second = (int("".join(map(str, rng.integers(0, 10, rng.integers(1, 25))))) for _ in range(2))
        assert column_operands(sum_columns(first, second)) == (first, second)
    with pytest.raises(ValueError, match="adds numbers of 0 and above"):
        sum_columns(-1, 3)


# sha256 of the examples' JSON lines, train then test, 300 each, lengths 1-12, seed 0. Uniform draws (no share drawn
# with repeats) are still the corpus of CORPUS_VERSION 3; version 5 added the share drawn with repeats (data.draw_values),
# version 6 wrote add's sources as the sum's columns.
# A change to the drawing or to the targets changes them; bump CORPUS_VERSION then, so older caches are not reused.
CORPUS_DIGESTS = {
    ("copy", 0.0): "ee0dea1c716d3280",
    ("reverse", 0.0): "d7b42e93339e6600",
    ("sort", 0.0): "07e81f44fd23daa1",
    ("add", 0.0): "c7dc42f5857dc908",
    ("copy", 0.5): "6dd741e1b0483aa2",
    ("reverse", 0.5): "be16441f2968e27d",
    ("sort", 0.5): "ae9d684fe9ba8e8b",
}


@pytest.mark.parametrize("task, repeated_values_share", CORPUS_DIGESTS)
def test_corpus_is_byte_for_byte_that_of_its_corpus_version(task, repeated_values_share):
    assert data.CORPUS_VERSION == 6
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for example in generate_examples(task, split, 300, 1, 12, seed=0, repeated_values_share=repeated_values_share):
            digest.update(json.dumps(example, sort_keys=True).encode())
    assert digest.hexdigest()[:16] == CORPUS_DIGESTS[task, repeated_values_share]


@pytest.mark.parametrize(
    "task, source, target",
    [
        ("copy", "42 7 42 13", "42 7 42 13"),
        ("reverse", "42 7 42 13", "13 42 7 42"),
        ("sort", "42 7 42 13", "7 13 42 42"),
        ("sort", "9 10 100", "9 10 100"),  # as integers, not as text
        ("add", "75 9 40", "2 0 5 0"),  # 407 + 95 = 502: the columns 7|5, 0|9, 4|0, least significant first
        ("add", "0 75 9 40", "0 2 0 5 0"),  # 4070 + 950: one digit more than the columns
        ("add", "99", "8 1"),  # 9 + 9
        ("add", "91 90 90 90", "0 0 0 0 1"),  # 9999 + 1: the carry runs through every column
    ],
)
def test_task_target_is_the_right_answer(task, source, target):
    assert task_target(task, source) == target


def test_task_target_is_the_target_of_every_example_drawn():
    rng = np.random.default_rng(0)
    for task in TASKS:
        for _ in range(50):
            example = make_example(task, rng, 1, 12)
            assert task_target(task, example["source"]) == example["target"]


@pytest.mark.parametrize(
    "task, source, message",
    [
        ("divide", "1 2", "task must be one of"),
        ("reverse", "1 two 3", "integers separated by spaces"),
        ("sort", "1 -2", "integers separated by spaces"),
        ("add", "4 0 7 + 9 5", "the sum's columns"),
        ("add", "75 100", "the sum's columns"),
        ("add", "", "the sum's columns"),
        ("add", "7 -5", "the sum's columns"),
    ],
)
def test_task_target_refuses_a_source_the_task_cannot_answer(task, source, message):
    with pytest.raises(ValueError, match=message):
        task_target(task, source)


def test_a_split_without_sources_fails_clearly_instead_of_looping(monkeypatch):
    monkeypatch.setattr(data, "SPLIT_BUCKETS", {"test": range(0), "validation": range(10), "train": range(10, 100)})
    with pytest.raises(ValueError, match="too few distinct sources"):
        list(generate_examples("copy", "test", 1, 1, 1, seed=0))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"task": "divide"}, "task must be one of"),
        ({"min_length": 0}, "1 <= min_length <= max_length"),
        ({"min_length": 9, "max_length": 8}, "1 <= min_length <= max_length"),
        ({"train_size": 0}, "train_size must be at least 1"),
    ],
)
def test_bad_arguments_raise_value_error(arguments, message, cache_dir):
    kwargs = {"task": "copy", **SMALL, **arguments}
    with pytest.raises(ValueError, match=message):
        build_corpus(**kwargs, cache_dir=cache_dir)


def test_second_run_with_the_same_arguments_reuses_the_cache(tmp_path):
    """In fresh processes, as two runs of train.py would: the second neither generates nor tokenizes."""
    script = (
        "from hf_tiny_transformer_train.data import build_corpus, build_tokenizer, tokenize_corpus\n"
        "corpus = build_corpus('sort', seed=3, train_size=500, validation_size=20, test_size=20, min_length=1, "
        "max_length=10)\n"
        "tokenized = tokenize_corpus(corpus, build_tokenizer())\n"
        "print('FILES', sorted(f['filename'] for split in tokenized.values() for f in split.cache_files))\n"
    )
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
    }

    def run() -> subprocess.CompletedProcess:
        completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
        assert completed.returncode == 0, completed.stderr
        return completed

    def arrow_files() -> dict[Path, int]:
        return {path: path.stat().st_mtime_ns for path in (tmp_path / "datasets").rglob("*.arrow")}

    first = run()
    written = arrow_files()
    second = run()
    assert "Generating train split" in first.stderr and "Tokenizing" in first.stderr
    assert "Generating" not in second.stderr and "Tokenizing" not in second.stderr
    assert [line for line in second.stdout.splitlines() if line.startswith("FILES")] == [
        line for line in first.stdout.splitlines() if line.startswith("FILES")
    ]
    assert arrow_files() == written  # nothing rewritten, nothing added


def test_length_curriculum_caps_three_quarters_of_each_early_batch_and_then_draws_from_all():
    lengths = [1 + index % 50 for index in range(5000)]  # 1-50, 100 examples each
    order = data.length_curriculum(lengths, batch_size=32, num_steps=200, curriculum_steps=100, seed=0)
    assert len(order) == 200 * 32
    batches = [[lengths[index] for index in order[step * 32 : (step + 1) * 32]] for step in range(200)]
    for step, batch in enumerate(batches[:100]):
        cap = 1 + 49 * (step + 1) / 100
        assert sum(length <= cap for length in batch) >= 24  # three quarters under the growing cap
    assert max(batches[0][:24]) == 1 and max(max(batch) for batch in batches[:10]) > 10  # the rest: any length
    late = [length for batch in batches[100:] for length in batch]
    assert abs(sum(late) / len(late) - 25.5) < 1.5  # uniform over 1-50
    assert order == data.length_curriculum(lengths, batch_size=32, num_steps=200, curriculum_steps=100, seed=0)


def test_grouping_by_length_keeps_each_windows_examples_and_gives_each_batch_about_one_length():
    lengths = [1 + index % 50 for index in range(5000)]
    kwargs = dict(batch_size=32, num_steps=200, curriculum_steps=40, seed=0)
    ungrouped = data.length_curriculum(lengths, **kwargs)
    grouped = data.length_curriculum(lengths, **kwargs, grouping_batches=16)
    assert grouped[: 40 * 32] == ungrouped[: 40 * 32]  # the curriculum's batches are left as they were
    window = 16 * 32
    for start in range(40 * 32, len(ungrouped), window):
        # The same examples within each window of 16 batches (160 steps: ten windows), only regrouped.
        assert sorted(grouped[start : start + window]) == sorted(ungrouped[start : start + window])

    def batch_lengths(order: list[int]) -> list[list[int]]:  # the source lengths of each batch after the curriculum
        return [[lengths[index] for index in order[step * 32 : (step + 1) * 32]] for step in range(40, 200)]

    def padded(order: list[int]) -> int:  # the tokens of those batches, each padded to its longest
        return sum(32 * max(batch) for batch in batch_lengths(order))

    batches = batch_lengths(grouped)
    tokens = sum(sum(batch) for batch in batches)
    assert padded(grouped) < 1.15 * tokens  # each batch of about one length: little padding
    assert padded(ungrouped) > 1.7 * tokens  # random lengths pad to about 50
    # Batches are read in a random order, not from the shortest up within each window.
    firsts = [max(batches[index]) for index in range(0, 16)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
    assert grouped == data.length_curriculum(lengths, **kwargs, grouping_batches=16)  # the seed decides


def test_curriculum_steps_below_one_are_a_share_of_the_run_and_counts_otherwise():
    assert data.curriculum_step_count(0.1, 3000) == 300
    assert data.curriculum_step_count(250, 3000) == 250
    assert data.curriculum_step_count(0, 3000) == 0


def test_a_longer_test_and_another_corpus_test_split_of_the_same_sources_share_one_cache(cache_dir):
    # The longer test draws the test split's sources of 9-16; a corpus of 9-16 draws the same as its own test split.
    longer = build_corpus("copy", **{**SMALL, "longer_test_size": 60, "longer_max_length": 16}, cache_dir=cache_dir)
    other = build_corpus("copy", **{**SMALL, "min_length": 9, "max_length": 16}, cache_dir=cache_dir)
    assert other["test"].to_list() == longer["longer_test"].to_list()
