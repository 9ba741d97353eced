"""Held-out families of the inputs a person types, to test copy, reverse and sort beyond the uniform test split.

A uniform draw of integers 0-99 almost never holds a run, a single value or two or three distinct ones, so a model
can score 99-100% on the uniform test split while miscounting `5 5 5 5`. Each family below is what a person tries
first:

| family          | sources                                                              | e.g.                    |
| --------------- | -------------------------------------------------------------------- | ----------------------- |
| `one_value`     | one value repeated, at least twice                                   | `54 54 54 54 54`        |
| `few_values`    | 2 or 3 distinct values, in the longer 60% of the lengths             | `7 40 7 7 40 40 7`      |
| `run_inside`    | uniform values with a run of one value (3 to half the length) inside | `3 81 45 45 45 45 12`   |
| `short_repeats` | 2 to 8 values with at least one repeated                             | `40 40`, `9 1 9`        |
| `ascending`     | uniform values sorted ascending                                      | `2 17 17 50 93`         |
| `descending`    | uniform values sorted descending                                     | `93 50 17 17 2`         |

Like the test split, a family keeps only sources that data.py's hash assigns to the test split: none occurs in the
training or validation data, whatever the seed and the share of draws with repeats there.
"""

from collections.abc import Callable, Iterator

import numpy as np
from datasets import DatasetDict

from hf_tiny_transformer_train.data import NUM_VALUES, cached_split, draw_split, task_target

# The tasks whose sources are sequences of integers (add's are two numbers written digit by digit).
SEQUENCE_TASKS = ("copy", "reverse", "sort")


def uniform(rng: np.random.Generator, length: int) -> np.ndarray:
    return rng.integers(0, NUM_VALUES, length)


def one_value(rng: np.random.Generator, length: int) -> np.ndarray:
    return np.full(length, rng.integers(0, NUM_VALUES))


def few_values(rng: np.random.Generator, length: int) -> np.ndarray:
    values = rng.choice(NUM_VALUES, size=int(rng.integers(2, 4)), replace=False)
    # Every chosen value appears at least once, the rest drawn among them.
    drawn = np.concatenate([values, values[rng.integers(0, len(values), length - len(values))]])
    return rng.permutation(drawn)


def run_inside(rng: np.random.Generator, length: int) -> np.ndarray:
    values = uniform(rng, length)
    run = int(rng.integers(3, length // 2 + 1))
    start = int(rng.integers(0, length - run + 1))
    values[start : start + run] = rng.integers(0, NUM_VALUES)
    return values


def short_repeats(rng: np.random.Generator, length: int) -> np.ndarray:
    values = uniform(rng, length)
    first, second = rng.choice(length, size=2, replace=False)
    values[second] = values[first]
    return values


def ascending(rng: np.random.Generator, length: int) -> np.ndarray:
    return np.sort(uniform(rng, length))


def descending(rng: np.random.Generator, length: int) -> np.ndarray:
    return np.sort(uniform(rng, length))[::-1]


# name -> (draw of a given length, the shortest length it takes, the lengths it draws from a range [lo, hi])
FAMILIES: dict[str, tuple[Callable[[np.random.Generator, int], np.ndarray], Callable[[int, int], tuple[int, int]]]] = {
    "one_value": (one_value, lambda lo, hi: (max(lo, 2), hi)),
    "few_values": (few_values, lambda lo, hi: (max(lo, 3, hi - (3 * (hi - lo + 1)) // 5), hi)),
    "run_inside": (run_inside, lambda lo, hi: (max(lo, 6), hi)),
    "short_repeats": (short_repeats, lambda lo, hi: (max(lo, 2), min(hi, 8))),
    "ascending": (ascending, lambda lo, hi: (max(lo, 2), hi)),
    "descending": (descending, lambda lo, hi: (max(lo, 2), hi)),
}


# How the model card and the benchmarks name each family.
FAMILY_DESCRIPTIONS = {
    "one_value": "one value repeated (`54 54 54 54`)",
    "few_values": "2-3 distinct values (`7 40 7 7 40`)",
    "run_inside": "a run inside random numbers (`3 81 45 45 45 12`)",
    "short_repeats": "2-8 values with a repeat (`40 40`, `9 1 9`)",
    "ascending": "ascending (`2 17 17 50`)",
    "descending": "descending (`50 17 17 2`)",
}


def family_lengths(family: str, min_length: int, max_length: int) -> tuple[int, int] | None:
    """The lengths `family` draws for sources of `min_length`-`max_length` integers (None where it has none)."""
    shortest, longest = FAMILIES[family][1](min_length, max_length)
    return (shortest, longest) if shortest <= longest else None


def generate_family(
    task: str, family: str, num_examples: int, min_length: int, max_length: int, seed: int
) -> Iterator[dict[str, str]]:
    """Up to `num_examples` distinct test-split sources of `family` and their answers; fewer where the family holds
    fewer distinct test-split sources at these lengths."""
    draw_values = FAMILIES[family][0]
    shortest, longest = family_lengths(family, min_length, max_length)
    rng = np.random.default_rng([seed, SEQUENCE_TASKS.index(task), list(FAMILIES).index(family), shortest, longest])

    def draw() -> dict[str, str]:
        source = " ".join(map(str, draw_values(rng, int(rng.integers(shortest, longest + 1))).tolist()))
        return {"source": source, "target": task_target(task, source)}

    try:
        yield from draw_split(draw, "test", num_examples)
    except ValueError:
        return  # the family holds fewer distinct test-split sources at these lengths: those found are the test


def build_typed_inputs(
    task: str, seed: int, num_examples: int, min_length: int, max_length: int, cache_dir: str | None = None
) -> DatasetDict:
    """One split per family that has sources of `min_length`-`max_length` integers, of `source`/`target` texts,
    cached by the datasets library like data.py's corpus."""
    if task not in SEQUENCE_TASKS:
        raise ValueError(f"typed-input families exist for {', '.join(SEQUENCE_TASKS)}; got task {task!r}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be at least 1; got {num_examples}")
    families = {}
    for family in FAMILIES:
        if family_lengths(family, min_length, max_length) is None:
            continue
        gen_kwargs = {
            "task": task,
            "family": family,
            "num_examples": num_examples,
            "min_length": min_length,
            "max_length": max_length,
            "seed": seed,
        }
        families[family] = cached_split(generate_family, gen_kwargs, family, cache_dir)
    return DatasetDict(families)
