import itertools

import numpy as np
import pytest

from hf_tiny_transformer_train.data import build_corpus, draw_values, split_of
from hf_tiny_transformer_train.typed_inputs import FAMILIES, SEQUENCE_TASKS, build_typed_inputs, family_lengths


def words(text: str) -> list[int]:
    return [int(word) for word in text.split()]


def longest_run(values: list[int]) -> int:
    return max(len(list(group)) for _, group in itertools.groupby(values))


@pytest.fixture(scope="module")
def reverse_families(tmp_path_factory):
    return build_typed_inputs("reverse", 0, 60, 1, 50, cache_dir=str(tmp_path_factory.mktemp("datasets")))


def test_every_family_is_built_with_the_requested_size(reverse_families):
    assert {name: len(split) for name, split in reverse_families.items()} == {name: 60 for name in FAMILIES}


def test_each_family_holds_the_inputs_it_names(reverse_families):
    checks = {
        "one_value": lambda values: len(values) >= 2 and len(set(values)) == 1,
        "few_values": lambda values: 20 <= len(values) <= 50 and len(set(values)) in (2, 3),
        "run_inside": lambda values: longest_run(values) >= 3,
        "short_repeats": lambda values: 2 <= len(values) <= 8 and len(set(values)) < len(values),
        "ascending": lambda values: values == sorted(values),
        "descending": lambda values: values == sorted(values, reverse=True),
    }
    for family, check in checks.items():
        sources = [words(source) for source in reverse_families[family]["source"]]
        assert all(check(values) and all(0 <= value <= 99 for value in values) for values in sources), family
        assert len(set(map(tuple, sources))) == len(sources), f"{family} repeats a source"


@pytest.mark.parametrize("task", SEQUENCE_TASKS)
def test_family_answers_are_the_task_applied_to_the_source(task, tmp_path):
    expected = {"copy": lambda values: values, "reverse": lambda values: values[::-1], "sort": sorted}[task]
    families = build_typed_inputs(task, 1, 20, 1, 12, cache_dir=str(tmp_path))
    for split in families.values():
        for example in split:
            assert words(example["target"]) == expected(words(example["source"]))


def test_families_never_hold_a_training_or_validation_source(reverse_families, tmp_path):
    sources = {source for split in reverse_families.values() for source in split["source"]}
    assert all(split_of(source) == "test" for source in sources)
    # Whatever the seed and the share of draws with repeats, training draws only train-bucket sources.
    corpus = build_corpus("reverse", 3, 20_000, 200, 10, 1, 50, repeated_values_share=1.0, cache_dir=str(tmp_path))
    assert not sources & set(corpus["train"]["source"])
    assert not sources & set(corpus["validation"]["source"])


def test_length_ranges_follow_the_requested_lengths():
    assert family_lengths("few_values", 1, 50) == (20, 50)
    assert family_lengths("short_repeats", 26, 50) is None
    assert family_lengths("one_value", 51, 100) == (51, 100)
    assert family_lengths("run_inside", 1, 5) is None


def test_families_at_longer_lengths_skip_those_without_sources(tmp_path):
    families = build_typed_inputs("copy", 0, 10, 51, 100, cache_dir=str(tmp_path))
    assert "short_repeats" not in families
    for split in families.values():
        assert all(51 <= len(source.split()) <= 100 for source in split["source"])


def test_sort_families_are_only_for_sequence_tasks(tmp_path):
    with pytest.raises(ValueError, match="task 'add'"):
        build_typed_inputs("add", 0, 10, 1, 10, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="num_examples"):
        build_typed_inputs("copy", 0, 0, 1, 10, cache_dir=str(tmp_path))


def test_uniform_draws_are_unchanged_without_a_share_of_repeats():
    first, second = np.random.default_rng(5), np.random.default_rng(5)
    assert draw_values(first, 30) == second.integers(0, 100, 30).tolist()


def test_draws_with_repeats_cover_single_values_few_values_and_runs():
    rng = np.random.default_rng(0)
    draws = [draw_values(rng, 30, repeated_values_share=1.0) for _ in range(2000)]
    distinct = [len(set(values)) for values in draws]
    assert sum(count == 1 for count in distinct) > 20
    assert sum(count in (2, 3) for count in distinct) > 100
    assert sum(longest_run(values) >= 5 for values in draws) > 200
    assert sum(count > 15 for count in distinct) > 100  # and draws with many distinct values as well
    mixed = [draw_values(rng, 30, repeated_values_share=0.5) for _ in range(2000)]
    assert 0.3 < np.mean([len(set(values)) <= 10 for values in mixed]) < 0.5


def test_corpus_refuses_a_share_outside_zero_to_one(tmp_path):
    with pytest.raises(ValueError, match="repeated_values_share"):
        build_corpus("copy", 0, 10, 10, 10, 1, 5, repeated_values_share=1.5, cache_dir=str(tmp_path))
