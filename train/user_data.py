"""A user's own pairs of texts for train.py: read from files or a dataset, checked, split and tokenized.

Every problem a run would otherwise meet late (a missing file, an empty split, a missing column, a cell that is not
text, an example longer than the model's positions) raises ValueError naming the file, split, column or row, before
anything is trained or written to the output folder. Rows are counted from 1, in the order of the file (a CSV's
header is not a row).

Where validation or test data are missing, examples drawn from the training data with the seed take their place:
distinct sources, one example each, and every training example with a drawn source leaves the training data, so
held-out figures measure texts the model never saw.
"""

import datetime
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedTokenizerBase

from hf_tiny_transformer_train.data import SPLITS

logger = logging.getLogger(__name__)

# What `--train_file` and the other file flags accept: file extension -> datasets builder.
DATA_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# The row number of each example in its file or dataset split, carried through splitting and tokenization so that
# errors can name it.
ROW = "row"
# Token counts before truncation, kept next to the token ids until the lengths are checked.
SOURCE_TOKENS, TARGET_TOKENS = "source_tokens", "target_tokens"


@dataclass
class UserData:
    """The checked splits of a user's data (columns `source`, `target`, `row`) and what the model card says of them."""

    splits: DatasetDict
    # split -> where its rows come from: a file path, or "<dataset> split '<name>'"
    origins: dict[str, str]
    source_column: str
    target_column: str
    # the splits drawn from the training data, the share of its distinct sources each took, and the seed of the draw
    split_from_train: list[str] = field(default_factory=list)
    split_percentage: float = 0.0
    seed: int = 0
    dataset_name: str | None = None
    # split -> (sources truncated, targets truncated), filled by check_lengths
    truncated: dict[str, tuple[int, int]] = field(default_factory=dict)


def data_format(path: str, flag: str) -> str:
    """The datasets builder that reads `path`, given with `--flag`, by its extension."""
    extension = Path(path).suffix.lower()
    if extension not in DATA_FORMATS:
        raise ValueError(
            f"--{flag} {path}: unknown file type {extension or '(none)'!r}; use one of {', '.join(DATA_FORMATS)}"
        )
    return DATA_FORMATS[extension]


def check_data_file(path: str, flag: str) -> None:
    """Raise ValueError naming `path` if `--flag` does not name a readable file of a known type."""
    data_format(path, flag)
    if not Path(path).is_file():
        raise ValueError(f"--{flag} {path}: no such file")


def root_cause(error: BaseException) -> str:
    """The innermost error's message: datasets wraps a parser's precise one ("JSON parse error ... in row 3")."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}".splitlines()[0]


class Table(NamedTuple):
    """One split as read, before any check: its column names, its number of rows, and the values of the text
    columns it has."""

    column_names: list[str]
    num_rows: int
    values: dict[str, list]


def table_of(dataset: Dataset, columns: tuple[str, str]) -> Table:
    present = [column for column in dict.fromkeys(columns) if column in dataset.column_names]
    return Table(dataset.column_names, len(dataset), {column: list(dataset[column]) for column in present})


def read_json(path: str, flag: str, columns: tuple[str, str]) -> Table:
    """JSON lines, or a JSON list of objects, read with Python's json module: datasets' JSON reader (pyarrow) would
    turn texts that look like dates ("2021-03-05") into timestamps, and a column of mixed types into an error."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--{flag} {path} line {error.lineno}: invalid JSON ({error.msg})") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"--{flag} {path} line {number}: invalid JSON ({error.msg})") from None
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"--{flag} {path} row {index + 1}: expected a JSON object of columns, got {row!r:.60}")
    column_names = list(dict.fromkeys(name for row in rows for name in row))
    present = [column for column in dict.fromkeys(columns) if column in column_names]
    return Table(column_names, len(rows), {column: [row.get(column) for row in rows] for column in present})


def read_file(path: str, flag: str, columns: tuple[str, str]) -> Table:
    builder = data_format(path, flag)
    if Path(path).stat().st_size == 0:
        raise ValueError(f"--{flag} {path}: the file is empty; it holds no examples")
    if builder == "json":
        return read_json(path, flag, columns)
    # pandas would read a CSV column of numbers as integers ("05" as 5); the two text columns stay text.
    options = {"converters": {column: str for column in columns}} if builder == "csv" else {}
    try:
        return table_of(load_dataset(builder, data_files=path, split="train", **options), columns)
    except Exception as error:
        # datasets' way of saying that a file (a CSV with only its header) has no rows
        if isinstance(error, ValueError) and "corresponds to no data" in str(error):
            raise ValueError(f"--{flag} {path}: the file holds no examples") from None
        raise ValueError(f"--{flag} {path}: cannot be read as {builder} ({root_cause(error)})") from None


def read_dataset(dataset_name: str, dataset_config_name: str | None) -> DatasetDict:
    """A folder written by `save_to_disk`, or anything `load_dataset` reads (a Hub id, a local folder of files)."""
    folder = Path(dataset_name)
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            dataset = load_from_disk(str(folder))
        else:
            dataset = load_dataset(dataset_name, dataset_config_name)
    except Exception as error:
        raise ValueError(f"--dataset_name {dataset_name}: cannot be loaded ({root_cause(error)})") from None
    # A single Dataset saved to disk is the training data.
    return dataset if isinstance(dataset, DatasetDict) else DatasetDict({"train": dataset})


def check_texts(table: Table, origin: str, columns: tuple[str, str]) -> Dataset:
    """The two text columns of `table` (as `source` and `target`) and the row numbers, after checking that it has
    rows, has both columns and holds non-empty text in every cell."""
    if table.num_rows == 0:
        raise ValueError(f"{origin} holds no examples")
    for column in columns:
        if column not in table.values:
            raise ValueError(
                f"{origin} has no column {column!r} (its columns: {', '.join(table.column_names)}); "
                "name the columns with --source_column and --target_column"
            )
        for index, value in enumerate(table.values[column]):
            where = f"{origin} row {index + 1}: column {column!r}"
            if value is None:
                raise ValueError(f"{where} is missing")
            if not isinstance(value, str):
                hint = (
                    "; datasets' JSON reader reads texts that look like dates as dates: pass JSON files with "
                    "--train_file, --validation_file and --test_file, which keep them as text"
                    if isinstance(value, datetime.date)
                    else ""
                )
                raise ValueError(f"{where} holds {value!r} ({type(value).__name__}), not text{hint}")
            if not value.strip():
                raise ValueError(f"{where} is empty")
    source_column, target_column = columns
    # `source`/`target` whatever the user's names; one column for both is allowed (a model that copies).
    return Dataset.from_dict(
        {
            "source": table.values[source_column],
            "target": table.values[target_column],
            ROW: list(range(1, table.num_rows + 1)),
        }
    )


def split_off(train: Dataset, split: str, size: int, seed: int) -> tuple[Dataset, Dataset]:
    """Draw `size` distinct sources of `train`, with one example each, as `split`; return (the rest of train, the
    drawn examples). Every training example with a drawn source leaves train, so the drawn split holds only unseen
    sources; drawing sources rather than rows keeps a source that repeats often from being held out more often than
    a rare one (and then missing from training entirely)."""
    first_row_of_source: dict[str, int] = {}
    for index, source in enumerate(train["source"]):
        first_row_of_source.setdefault(source, index)
    if size >= len(first_row_of_source):
        raise ValueError(
            f"cannot hold out {size} {split} examples from training data with {len(first_row_of_source)} distinct "
            f"sources; pass a {split} file or more training data"
        )
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    rows = list(first_row_of_source.values())
    drawn = [rows[index] for index in rng.choice(len(rows), size=size, replace=False)]
    drawn_sources = {train[index]["source"] for index in drawn}
    rest = [index for index, source in enumerate(train["source"]) if source not in drawn_sources]
    if len(rest) < len(train) - size:
        logger.info(
            "Dropped %d training examples whose source also occurs in the held-out %s split",
            len(train) - size - len(rest),
            split,
        )
    return train.select(rest), train.select(drawn)


def load_user_data(
    *,
    train_file: str | None,
    validation_file: str | None,
    test_file: str | None,
    dataset_name: str | None,
    dataset_config_name: str | None,
    source_column: str,
    target_column: str,
    needed_splits: list[str],
    split_percentage: float,
    seed: int,
    max_samples: dict[str, int | None],
) -> UserData:
    """Read, check and, where validation or test data are missing, split the `needed_splits` of the user's data.

    `max_samples` caps each split (the first rows), after validation and test have been drawn from the full
    training data, so that capping the training set never changes what the model is evaluated on.
    """
    columns = (source_column, target_column)
    given = {"train": train_file, "validation": validation_file, "test": test_file}
    raw: dict[str, Table] = {}
    origins: dict[str, str] = {}
    if dataset_name is not None:
        dataset = read_dataset(dataset_name, dataset_config_name)
        given = {split: split if split in dataset else None for split in SPLITS}
    if "train" in needed_splits and given["train"] is None:
        where = "pass --train_file" if dataset_name is None else f"{dataset_name} has no 'train' split"
        raise ValueError(f"no training data: {where}")
    # The training data are read when training, or when a split has to be drawn from them.
    to_draw = [split for split in needed_splits if given[split] is None]
    for split in SPLITS:
        if given[split] is None or (split not in needed_splits and not (split == "train" and to_draw)):
            continue
        if dataset_name is not None:
            origins[split] = f"{dataset_name} split {split!r}"
            raw[split] = table_of(dataset[split], columns)
        else:
            origins[split] = given[split]
            raw[split] = read_file(given[split], f"{split}_file", columns)
    splits = {split: check_texts(table, origins[split], columns) for split, table in raw.items()}

    data = UserData(
        splits=DatasetDict(),
        origins=origins,
        source_column=source_column,
        target_column=target_column,
        split_percentage=split_percentage,
        seed=seed,
        dataset_name=dataset_name,
    )
    if to_draw:
        if "train" not in splits:
            split = to_draw[0]
            what = f"--{split}_file" if dataset_name is None else f"a {split!r} split in {dataset_name}"
            raise ValueError(f"no {split} data: pass {what}, or training data to draw it from")
        # A share of the distinct sources, not of the rows: data that repeat their pairs still hold some out.
        size = max(1, round(len(set(splits["train"]["source"])) * split_percentage / 100))
        for split in to_draw:
            splits["train"], splits[split] = split_off(splits["train"], split, size, seed)
            data.split_from_train.append(split)
            logger.info("Drew %d %s examples from the training data (seed %d)", size, split, seed)
    for split in SPLITS:
        if split in needed_splits:
            limit = max_samples.get(split)
            examples = splits[split]
            data.splits[split] = examples if limit is None else examples.select(range(min(limit, len(examples))))
    for split in ("validation", "test"):
        if split in data.splits and "train" in data.splits and split not in data.split_from_train:
            seen = set(data.splits["train"]["source"])
            overlap = sum(source in seen for source in data.splits[split]["source"])
            if overlap:
                logger.warning(
                    "%d of the %d %s sources also occur in the training data: the %s figures overstate how the "
                    "model does on unseen texts",
                    overlap,
                    len(data.splits[split]),
                    split,
                    split,
                )
    return data


def tokenize_user_data(
    data: UserData,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int | None,
    max_target_length: int | None,
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
) -> DatasetDict:
    """`input_ids`, `attention_mask` and `labels` for every example, truncated to the given lengths (`None`: not
    truncated), with `row` and the token counts before truncation (`source_tokens`, `target_tokens`).

    Labels always end with the end-of-sequence token, which tells `generate` where an answer ends; a tokenizer that
    does not append it itself (GPT-2's, for example) gets it appended here.
    """
    eos = tokenizer.eos_token_id
    appends_eos = tokenizer(text_target="a")["input_ids"][-1:] == [eos]

    def encode(texts: list[str], max_length: int | None, append_eos: bool) -> tuple[list[list[int]], list[int]]:
        ids = [row + [eos] if append_eos else row for row in tokenizer(texts)["input_ids"]]
        lengths = [len(row) for row in ids]
        if max_length is not None:
            too_long = [index for index, length in enumerate(lengths) if length > max_length]
            if too_long:
                # The tokenizer's own truncation keeps its special tokens (the final </s>) and cuts the text.
                cut = tokenizer(
                    [texts[index] for index in too_long], truncation=True, max_length=max_length - int(append_eos)
                )["input_ids"]
                for index, row in zip(too_long, cut):
                    ids[index] = row + [eos] if append_eos else row
        return ids, lengths

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        input_ids, source_tokens = encode(batch["source"], max_source_length, append_eos=False)
        labels, target_tokens = encode(batch["target"], max_target_length, append_eos=not appends_eos)
        return {
            "input_ids": input_ids,
            "attention_mask": [[1] * len(row) for row in input_ids],
            "labels": labels,
            SOURCE_TOKENS: source_tokens,
            TARGET_TOKENS: target_tokens,
        }

    return data.splits.map(
        tokenize,
        batched=True,
        remove_columns=["source", "target"],
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        desc="Tokenizing",
    )


def check_lengths(
    data: UserData,
    tokenized: DatasetDict,
    max_positions: int | None,
    max_source_length: int | None,
    max_target_length: int | None,
) -> DatasetDict:
    """Raise ValueError naming the first row whose source or target is longer than the model's `max_positions`
    when no truncation was asked for; record and log how many were truncated otherwise. Returns `tokenized` without
    the bookkeeping columns, ready for the Trainer."""
    for split, dataset in tokenized.items():
        truncated = []
        for column, limit, flag, what in (
            (SOURCE_TOKENS, max_source_length, "max_source_length", "source"),
            (TARGET_TOKENS, max_target_length, "max_target_length", "target"),
        ):
            lengths = np.asarray(list(dataset[column]))
            if limit is not None:
                truncated.append(int((lengths > limit).sum()))
                if truncated[-1]:
                    logger.warning(
                        "Truncated %d of %d %s %ss to --%s %d tokens",
                        truncated[-1],
                        len(dataset),
                        split,
                        what,
                        flag,
                        limit,
                    )
                continue
            truncated.append(0)
            too_long = np.flatnonzero(lengths > max_positions) if max_positions is not None else []
            if len(too_long):
                # Rows drawn from the training data keep the training file's row numbers.
                origin = data.origins.get(split, data.origins.get("train"))
                raise ValueError(
                    f"{origin} row {dataset[int(too_long[0])][ROW]}: the {what} is {lengths[too_long[0]]} tokens long, "
                    f"more than the model's max_position_embeddings ({max_positions}); pass --{flag} {max_positions} "
                    "to truncate such examples"
                )
        data.truncated[split] = (truncated[0], truncated[1])
    return tokenized.remove_columns([ROW, SOURCE_TOKENS, TARGET_TOKENS])


def unknown_token_share(tokenized: Dataset, unk_token_id: int | None) -> float:
    """The share of source and target tokens that are the tokenizer's unknown token (0 without one)."""
    if unk_token_id is None:
        return 0.0
    unknown, total = 0, 0
    for column in ("input_ids", "labels"):
        for row in tokenized[column]:
            unknown += row.count(unk_token_id)
            total += len(row)
    return unknown / max(total, 1)
