#!/usr/bin/env python
"""Write the example corpus of the README's "Train on your own data": dates as people write them, and ISO 8601.

    python train/make_dates.py --output_dir data/dates

writes `train.jsonl`, `validation.jsonl` and `test.jsonl`, one example per line:

    {"source": "Mar 5th, 2021", "target": "2021-03-05"}

Dates run from 1950-01-01 to 2049-12-31 and are written with babel's `format_date` in one of `DATE_FORMATS`
(English, German, French, Spanish and Italian spellings, names in full or abbreviated, with or without the weekday,
numbers alone) or as an English ordinal ("the 5th of March 2021"). Two readings stay unambiguous by convention:
all-numeric dates put the day first (05/03/21 is 5 March), and a two-digit year is the one in the range (21 is
2021, 72 is 1972).

Which split a date belongs to is decided by data.py's hash of the date (its ISO form, the target), so no held-out
date occurs in training in any spelling: the model is measured on dates it never saw. Validation and test never
repeat a source.
"""

import argparse
import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from babel.dates import format_date

from hf_tiny_transformer_train.data import SPLITS, draw_split

FIRST_DATE, LAST_DATE = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
# (babel locale, date pattern) pairs: https://babel.pocoo.org/en/latest/dates.html#date-fields
DATE_FORMATS = (
    ("en_GB", "d MMMM y"),
    ("en_GB", "d MMM y"),
    ("en_GB", "EEEE d MMMM y"),
    ("en_GB", "dd/MM/yy"),
    ("en_GB", "dd/MM/y"),
    ("en_GB", "d/M/yy"),
    ("en_GB", "dd-MM-y"),
    ("en_GB", "y/MM/dd"),
    ("en_US", "MMMM d, y"),
    ("en_US", "MMM d, y"),
    ("en_US", "EEE, MMM d, y"),
    ("en_US", "EEEE, MMMM d, y"),
    ("de_DE", "d. MMMM y"),
    ("de_DE", "dd.MM.y"),
    ("de_DE", "d.M.yy"),
    ("de_DE", "EEEE, d. MMMM y"),
    ("fr_FR", "d MMMM y"),
    ("fr_FR", "EEEE d MMMM y"),
    ("es_ES", "d 'de' MMMM 'de' y"),
    ("it_IT", "d MMMM y"),
)
# English ordinals, which babel does not write: {day} is "5th", {month} the month's name.
ORDINAL_FORMATS = ("{month} {day}, {year}", "{day} of {month} {year}", "the {day} of {month} {year}")


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def write_date(date: datetime.date, rng: np.random.Generator) -> str:
    """`date` in a randomly chosen way of writing it."""
    choice = int(rng.integers(len(DATE_FORMATS) + len(ORDINAL_FORMATS)))
    if choice < len(DATE_FORMATS):
        locale, pattern = DATE_FORMATS[choice]
        return format_date(date, pattern, locale=locale)
    month = format_date(date, "MMMM" if rng.random() < 0.5 else "MMM", locale="en_US")
    return ORDINAL_FORMATS[choice - len(DATE_FORMATS)].format(day=ordinal(date.day), month=month, year=date.year)


def date_examples(split: str, num_examples: int, seed: int) -> Iterator[dict[str, str]]:
    """`num_examples` examples of `split`: random dates owned by the split, each written in a random way."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    num_days = (LAST_DATE - FIRST_DATE).days + 1

    def draw() -> dict[str, str]:
        date = FIRST_DATE + datetime.timedelta(days=int(rng.integers(num_days)))
        return {"source": write_date(date, rng), "target": date.isoformat()}

    return draw_split(draw, split, num_examples, owner="target")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="data/dates", help="Folder for the three .jsonl files.")
    parser.add_argument("--train_size", type=int, default=20_000, help="Training examples.")
    parser.add_argument("--validation_size", type=int, default=500, help="Validation examples.")
    parser.add_argument("--test_size", type=int, default=2_000, help="Test examples.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random dates and spellings.")
    args = parser.parse_args(argv)
    sizes = {"train": args.train_size, "validation": args.validation_size, "test": args.test_size}
    for split, size in sizes.items():
        if size < 1:
            parser.error(f"--{split}_size must be at least 1; got {size}")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, size in sizes.items():
        path = output_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as file:
            for example in date_examples(split, size, args.seed):
                file.write(json.dumps(example, ensure_ascii=False) + "\n")
        print(f"wrote {size} examples to {path}")


if __name__ == "__main__":
    main()
