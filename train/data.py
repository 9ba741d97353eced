"""The synthetic corpus and its tokenizer.

The design document's data are random integers 0-99 in sequences up to 50 long. Each example is a pair of
texts, `source` and `target`, written as a person types them: words separated by spaces.

| task      | source                 | target        |
| --------- | ---------------------- | ------------- |
| `copy`    | `42 7 42 13`           | `42 7 42 13`  |
| `reverse` | `42 7 42 13`           | `13 42 7 42`  |
| `sort`    | `42 7 42 13`           | `7 13 42 42`  |
| `add`     | `75 9 40`              | `2 0 5 0`     |

An `add` source is the written sum's columns, least significant first: each word is the column's two digits read as
one integer 0-99, ten times the first operand's digit plus the second's (407 + 95: columns 7|5, 0|9, 4|0 give
`75 9 40`; the shorter operand has zeros where it has no digits). The target is the sum's digits, least significant
first, one more than the columns (`2 0 5 0` is 502). So the same vocabulary serves every task and any checkpoint can
be fine-tuned on any other task, and the i-th digit of the answer reads the i-th word of the source, the carry from
the word and the digit before: at the same relative position for every length, as copy reads its source. Trained on
1-10 digits this way, the relative positions reach 11-20 digit sums (bench/README.md, "Past the training length").
The two earlier layouts could not: operands digit by digit around `+`, most significant digit first, padded to 10
digits (the answer digit i reads digits 11 words apart, a fixed layout with no longer sums), and before that the
answer most significant digit first (its first digit depends on every carry: 5-digit sums at 4% after 1,000 steps).

Which split an example belongs to is decided by a hash of its source text, not by the random draw, so a test
source never appears in train, whatever the seed or the split sizes. Validation and test never repeat a source.
"""

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute
from datasets import Dataset, DatasetDict, Features, Value
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

TASKS = ("copy", "reverse", "sort", "add")
SPLITS = ("train", "validation", "test")
NUM_VALUES = 100  # sequence elements are the integers 0..NUM_VALUES-1
PLUS = "+"  # no corpus writes it since add's sources are columns (CORPUS_VERSION 6); kept so no other id moves
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
VOCABULARY = (PAD, BOS, EOS, UNK, PLUS, *(str(value) for value in range(NUM_VALUES)))
# Bump when generate_examples changes, so that corpora cached by an older version are not reused.
CORPUS_VERSION = 6
# A source's hash, taken modulo 100, lands in one of these ranges: 5% of all possible sources are reserved for
# test, 5% for validation, the rest for train.
SPLIT_BUCKETS = {"test": range(5), "validation": range(5, 10), "train": range(10, 100)}
# How many draws per requested example before giving up: a bucket holds ~5% of the sources, so ~20 draws are
# expected per test example; only a length range with almost no distinct sources needs more.
MAX_DRAWS_PER_EXAMPLE = 200


def split_of(source: str) -> str:
    """The split that owns `source`: a stable hash (unlike Python's `hash`, the same in every process)."""
    bucket = int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "little") % 100
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def target_length(task: str, max_length: int) -> int:
    """Most words a target of `task` can have: the sum of two `max_length`-digit numbers has one digit more."""
    return max_length + 1 if task == "add" else max_length


def longest_sequence(task: str, max_length: int) -> int:
    """Most tokens a sequence of `task` gets, the model's positions to cover: a source of `max_length` words (for
    `add`, columns) with </s>, or a target with the decoder's start token; no target is shorter than its source."""
    return target_length(task, max_length) + 1


def sum_columns(first: int, second: int) -> str:
    """The `add` source of `first` + `second`: one word per column of the written sum, least significant first, each
    the column's digits read as one integer (ten times `first`'s digit plus `second`'s). 407 + 95 -> `75 9 40`."""
    if first < 0 or second < 0:
        raise ValueError(f"the add task adds numbers of 0 and above; got {first} and {second}")
    width = max(len(str(first)), len(str(second)))
    first_digits, second_digits = str(first).zfill(width)[::-1], str(second).zfill(width)[::-1]
    return " ".join(str(10 * int(a) + int(b)) for a, b in zip(first_digits, second_digits))


def column_operands(source: str) -> tuple[int, int]:
    """The two numbers an `add` source (`sum_columns`) adds. Raises ValueError naming `source` where a word is not a
    column (an integer 0-99)."""
    words = source.split()
    if not words or not all(word.isascii() and word.isdigit() and int(word) < NUM_VALUES for word in words):
        raise ValueError(
            "an add source is the sum's columns, least significant first, each its two digits as one integer 0-"
            f"{NUM_VALUES - 1} (407 + 95 is '75 9 40'); got {source!r}"
        )
    columns = [int(word) for word in words]
    first = sum(column // 10 * 10**place for place, column in enumerate(columns))
    second = sum(column % 10 * 10**place for place, column in enumerate(columns))
    return first, second


def sum_digits(first: int, second: int, width: int) -> str:
    """The `add` target: the digits of `first` + `second`, least significant first, `width` + 1 of them."""
    return " ".join(str(first + second).zfill(width + 1)[::-1])


def draw_values(rng: np.random.Generator, length: int, repeated_values_share: float = 0.0) -> list[int]:
    """`length` integers 0-99: uniform draws, or, with probability `repeated_values_share`, draws with repeats.

    Uniform draws almost never hold a run or only a few distinct values, so a model trained on them alone can find a
    token by its value instead of by its position, and fails on the inputs people type first (`5 5 5 5`, `1 2 1 2`).
    The draws with repeats take their values from a random set of 1 to 100 values (its size log-uniform, so that one,
    two or three values are as common as dozens), and each element repeats the one before it with a probability drawn
    in [0, 1) anew at up to two random points of the sequence: so every mix of repeats, runs (anywhere, of any length,
    among values that do not repeat) and distinct values has its share of the corpus.
    """
    if repeated_values_share == 0 or rng.random() >= repeated_values_share:
        return rng.integers(0, NUM_VALUES, length).tolist()
    alphabet_size = int(np.exp(rng.uniform(0, np.log(NUM_VALUES + 1))))
    alphabet = rng.choice(NUM_VALUES, size=max(1, min(alphabet_size, NUM_VALUES)), replace=False)
    values = alphabet[rng.integers(0, len(alphabet), length)]
    changes = np.sort(rng.integers(0, length, 2))
    repeat_probability = rng.uniform(0, 1, 3)[np.searchsorted(changes, np.arange(length), side="right")]
    repeats = rng.random(length) < repeat_probability
    # Each element that repeats takes the value of the last one before it that does not (the first never repeats):
    # the index of that element is a running maximum over the indices of those that do not.
    repeats[0] = False
    kept_from = np.maximum.accumulate(np.where(repeats, 0, np.arange(length)))
    return values[kept_from].tolist()


def make_example(
    task: str, rng: np.random.Generator, min_length: int, max_length: int, repeated_values_share: float = 0.0
) -> dict[str, str]:
    """One random example. `min_length`/`max_length` bound the sequence length, or for `add` the digits per operand;
    `repeated_values_share` is the share of sequences drawn with repeats (`draw_values`; not used by `add`)."""
    if task == "add":
        operands = []
        for _ in range(2):
            num_digits = int(rng.integers(min_length, max_length + 1))
            # A number of exactly `num_digits` digits (0 for one digit too); Python ints, so any digit count works.
            digits = [int(rng.integers(1 if num_digits > 1 else 0, 10))] + rng.integers(0, 10, num_digits - 1).tolist()
            operands.append(int("".join(map(str, digits))))
        source = sum_columns(*operands)
        return {"source": source, "target": task_target(task, source)}
    values = draw_values(rng, int(rng.integers(min_length, max_length + 1)), repeated_values_share)
    return {"source": " ".join(map(str, values)), "target": " ".join(map(str, sequence_answer(task, values)))}


def sequence_answer(task: str, values: list[int]) -> list[int]:
    """The answer of a sequence task (copy, reverse, sort) to `values`."""
    if task == "reverse":
        return values[::-1]
    if task == "sort":
        return sorted(values)
    return values


def task_target(task: str, source: str) -> str:
    """The right answer of `task` to `source`, both written as the corpus writes them (words separated by spaces).

    For `add`, `source` is the sum's columns (`sum_columns`: `75 9 40` for 407 + 95); the sum gets one digit more
    than the columns and comes least significant first (`2 0 5 0`).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    words = source.split()
    if task == "add":
        return sum_digits(*column_operands(source), width=len(words))
    if not all(word.isascii() and word.isdigit() for word in words):
        raise ValueError(f"a {task} source holds integers separated by spaces; got {source!r}")
    return " ".join(map(str, sequence_answer(task, [int(word) for word in words])))


def draw_split(
    draw: Callable[[], dict[str, str]], split: str, num_examples: int, owner: str = "source"
) -> Iterator[dict[str, str]]:
    """Yield `num_examples` examples of `split` from calls of `draw`: those whose `owner` text (the source, or for
    make_dates.py the date its sources spell) hashes into `split` (split_of), so that no held-out owner occurs in
    training. Raises ValueError where too few distinct sources exist.

    Validation and test sources are distinct: where few sources exist (one-digit sums, one-integer sequences),
    repeats would otherwise fill the evaluation with copies of the same handful of examples.
    """
    found, seen = 0, set()
    for _ in range(MAX_DRAWS_PER_EXAMPLE * num_examples):
        example = draw()
        if split_of(example[owner]) != split:
            continue
        if split != "train":
            if example["source"] in seen:
                continue
            seen.add(example["source"])
        yield example
        found += 1
        if found == num_examples:
            return
    raise ValueError(f"found only {found} of {num_examples} {split} examples: too few distinct sources")


def generate_examples(
    task: str,
    split: str,
    num_examples: int,
    min_length: int,
    max_length: int,
    seed: int,
    repeated_values_share: float = 0.0,
) -> Iterator[dict[str, str]]:
    """Yield `num_examples` examples of `split`: random draws, kept when their source hashes into `split`."""
    rng = np.random.default_rng([seed, TASKS.index(task), SPLITS.index(split)])

    def draw() -> dict[str, str]:
        return make_example(task, rng, min_length, max_length, repeated_values_share)

    try:
        yield from draw_split(draw, split, num_examples)
    except ValueError as error:
        raise ValueError(
            f"{error} for task {task!r} with lengths {min_length}..{max_length}; widen the length range or ask for "
            "fewer examples"
        ) from None


def cached_split(
    generator: Callable[..., Iterator[dict[str, str]]], gen_kwargs: dict, name: str, cache_dir: str | None
) -> Dataset:
    """The `source`/`target` texts of `generator(**gen_kwargs)` as split `name`, written once to the datasets cache
    (`HF_DATASETS_CACHE`, or `cache_dir`): the fingerprint is computed from the arguments and `CORPUS_VERSION`, so the
    same call in any process reads the cached Arrow files instead of generating again."""
    description = json.dumps({**gen_kwargs, "version": CORPUS_VERSION}, sort_keys=True)
    # A folder per split name: the datasets library keys its cache by the generator's arguments alone, so a longer
    # test (the test split's sources of 51-100) and another corpus's test split of 51-100 would find each other's
    # files and refuse the other split name.
    return Dataset.from_generator(
        generator,
        features=Features({"source": Value("string"), "target": Value("string")}),
        gen_kwargs=gen_kwargs,
        split=name,
        cache_dir=str(Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "tiny_transformer" / name),
        fingerprint=hashlib.sha256(description.encode()).hexdigest()[:16],
    )


def build_corpus(
    task: str,
    seed: int,
    train_size: int,
    validation_size: int,
    test_size: int,
    min_length: int,
    max_length: int,
    longer_test_size: int = 0,
    longer_max_length: int | None = None,
    repeated_values_share: float = 0.0,
    cache_dir: str | None = None,
) -> DatasetDict:
    """The corpus of `task` as a `DatasetDict` with `train`, `validation` and `test` splits of `source`/`target` texts,
    and, with `longer_test_size`, a `longer_test` split of held-out sources longer than any in training
    (`max_length` + 1 to `longer_max_length`), which measures how far the model generalises past what it saw.

    A share `repeated_values_share` of the train and validation sequences is drawn with repeats (`draw_values`); the
    test splits stay uniform draws, the design document's distribution (typed_inputs.py tests the inputs with repeats).

    Each split is written once by `Dataset.from_generator` to the datasets cache (`HF_DATASETS_CACHE`, or
    `cache_dir`). Its fingerprint is computed from the arguments and `CORPUS_VERSION`, so a second call with the
    same arguments, in any process, loads the cached Arrow files instead of generating again, and the
    fingerprints (hence `map` caches) of everything derived from it are stable too.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"lengths must satisfy 1 <= min_length <= max_length; got {min_length} and {max_length}")
    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    for split, size in sizes.items():
        if size < 1:
            raise ValueError(f"{split}_size must be at least 1; got {size}")
    # name -> (the split whose sources it draws, examples, lengths)
    splits = {split: (split, size, min_length, max_length) for split, size in sizes.items()}
    if longer_test_size:
        if longer_max_length is None or longer_max_length <= max_length:
            raise ValueError(f"longer_max_length must exceed max_length {max_length}; got {longer_max_length}")
        splits["longer_test"] = ("test", longer_test_size, max_length + 1, longer_max_length)
    if not 0 <= repeated_values_share <= 1:
        raise ValueError(f"repeated_values_share must be a share in [0, 1]; got {repeated_values_share}")
    corpus = {}
    for name, (split, size, shortest, longest) in splits.items():
        gen_kwargs = {
            "task": task,
            "split": split,
            "num_examples": size,
            "min_length": shortest,
            "max_length": longest,
            "seed": seed,
            "repeated_values_share": repeated_values_share if name in ("train", "validation") else 0.0,
        }
        corpus[name] = cached_split(generate_examples, gen_kwargs, name, cache_dir)
    return DatasetDict(corpus)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the corpus: one id per word of `VOCABULARY`, and `</s>` appended to every text."""
    vocab = {word: index for index, word in enumerate(VOCABULARY)}
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    # Any run of whitespace separates words, so "3  14\t15" reads like "3 14 15".
    backend.pre_tokenizer = WhitespaceSplit()
    return as_transformers_tokenizer(backend)


def as_transformers_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """`backend` (whose vocabulary holds `<pad>`, `<s>`, `</s>` and `<unk>`) as a transformers tokenizer that appends
    `</s>` to every text: the model learns to end its answers with `</s>`, and `generate` stops there."""
    backend.post_processor = TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, backend.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_input_names=["input_ids", "attention_mask"],
        # Decoded text is what the tokenizer read: no spaces removed before punctuation.
        clean_up_tokenization_spaces=False,
    )


def tokenize_corpus(
    corpus: DatasetDict, tokenizer: PreTrainedTokenizerBase, load_from_cache_file: bool = True
) -> DatasetDict:
    """`input_ids`, `attention_mask` and `labels` for every example, by a batched, cached `Dataset.map`."""

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        model_inputs = tokenizer(batch["source"])
        model_inputs["labels"] = tokenizer(text_target=batch["target"])["input_ids"]
        return model_inputs

    return corpus.map(
        tokenize,
        batched=True,
        remove_columns=["source", "target"],
        load_from_cache_file=load_from_cache_file,
        desc="Tokenizing",
    )


def curriculum_step_count(curriculum_steps: float, num_steps: int) -> int:
    """The `--length_curriculum_steps` flag as a step count: a count from 1 up, below 1 a share of `num_steps`."""
    return round(curriculum_steps * num_steps) if curriculum_steps < 1 else int(curriculum_steps)


def input_lengths(dataset: Dataset) -> list[int]:
    """The length of every tokenized example's `input_ids` (what `length_curriculum` orders by), read from the Arrow
    column: 100,000 examples in 2 ms, against 1.7 s through Python lists."""
    return pyarrow.compute.list_value_length(dataset.with_format("arrow")["input_ids"]).to_numpy().tolist()


def length_curriculum(
    lengths: list[int],
    batch_size: int,
    num_steps: int,
    curriculum_steps: int,
    seed: int,
    mix: float = 0.25,
    grouping_batches: int = 1,
) -> list[int]:
    """The order in which to read `num_steps` batches of training examples (indices into `lengths`, which holds each
    example's source length): a length curriculum mixed with all lengths, then uniform draws.

    During the first `curriculum_steps` steps, a share 1 - `mix` of each batch is drawn among the examples no longer
    than a cap that grows linearly from the shortest length to the longest, and the rest among all examples; the
    model first learns the task where it is cheap and easy (short sequences) without forgetting what long ones look
    like. Draws are with replacement (the synthetic corpus has far more examples than a run reads). After the
    curriculum, every `grouping_batches` consecutive batches are grouped by length (`group_by_length`; 1: none).
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    shortest, longest = int(sorted_lengths[0]), int(sorted_lengths[-1])
    capped = round(batch_size * (1 - mix))
    order = []
    for step in range(num_steps):
        if step < curriculum_steps:
            cap = shortest + (longest - shortest) * (step + 1) / curriculum_steps
            eligible = int(np.searchsorted(sorted_lengths, cap, side="right"))
            order += by_length[rng.integers(0, eligible, capped)].tolist()
            order += rng.integers(0, len(lengths), batch_size - capped).tolist()
        else:
            order += rng.integers(0, len(lengths), batch_size).tolist()
    if grouping_batches > 1:
        curriculum = min(curriculum_steps, num_steps) * batch_size
        order[curriculum:] = group_by_length(order[curriculum:], lengths, batch_size, grouping_batches, rng)
    return order


def group_by_length(
    order: list[int], lengths: np.ndarray, batch_size: int, grouping_batches: int, rng: np.random.Generator
) -> list[int]:
    """`order`, whole batches of `batch_size` examples, with every `grouping_batches` consecutive batches pooled,
    sorted by length and cut into batches again, which are then read in a random order.

    The same examples are read in the same stretch of training, but each batch holds sources of about one length, so
    the collator pads it to that length rather than to the longest of the corpus: with uniform lengths of 1-50,
    random batches of 64 pad to about 50 tokens and average half that. Sort's 1,500 steps trained in 174-198 s
    instead of 328-383 s (seeds 42-46, 2-core AMD EPYC, bf16), every typed-input family at 99.5% or more as before
    (bench/README.md, "Whole commands"). Unlike `Trainer`'s `group_by_length` sampler, the longest batch is not
    moved first.
    """
    grouped = []
    window = grouping_batches * batch_size
    for start in range(0, len(order), window):
        pooled = np.asarray(order[start : start + window])
        pooled = pooled[np.argsort(lengths[pooled], kind="stable")]
        batches = [pooled[first : first + batch_size] for first in range(0, len(pooled), batch_size)]
        for index in rng.permutation(len(batches)):
            grouped += batches[index].tolist()
    return grouped
