"""What the demo page (`demo/app.py`) shows, apart from Gradio so that it is tested without a browser: the built-in task
a trained folder's model learned, the model's greedy answer to the numbers a person types beside the task's right
answer (`data.task_target`), and the cross-attention weights while the model answers.

An input the model cannot read (words, numbers outside its vocabulary, nothing, too many numbers) gets a message for
the page instead of an answer.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from matplotlib.figure import Figure
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import hf_tiny_transformer  # noqa: F401  (registers the installed classes: no code stored with a model runs)
from hf_tiny_transformer_train.data import NUM_VALUES, PLUS, TASKS, column_operands, sum_columns, task_target
from hf_tiny_transformer_train.model_card import TASK_DESCRIPTIONS, cross_attention_figure

# Inputs the page offers to try: ordinary ones, and the repeats and runs people type first.
EXAMPLES = {
    "copy": ["5 3 9 3", "42 7 42 13 99 0 12", "8 8 8 8 8 8 8 8"],
    "reverse": ["5 3 9 3", "42 7 42 13 99 0 12", "8 8 8 8 8 8 8 8"],
    "sort": ["5 3 9 3", "42 7 42 13 99 0 12", "3 3 1 1 2 2"],
    "add": ["407 + 95", "9 9 9 + 1", "123456 + 654321"],
}
NUMBER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class TrainedTask:
    """The built-in task a model learned, as `train/train.py`'s model card records it."""

    name: str  # one of data.TASKS
    max_length: int | None  # the longest training input: integers per sequence, or digits per operand for `add`

    @property
    def length_unit(self) -> str:
        return "digits per operand" if self.name == "add" else "integers"


def read_trained_task(model_name_or_path: str, revision: str | None = None) -> TrainedTask:
    """The task of the model in `model_name_or_path` (a folder written by `train/train.py`, or a Hub id), read from its
    model card (README.md): the model-index's dataset arguments, or the card's tags."""
    folder = Path(model_name_or_path)
    try:
        if folder.is_dir():
            card_path = folder / "README.md"
            if not card_path.is_file():
                raise EntryNotFoundError(f"no README.md in {folder}")
        else:
            card_path = hf_hub_download(model_name_or_path, "README.md", revision=revision)
    except (EntryNotFoundError, OSError) as error:  # no such file, no such folder or repository, offline
        raise ValueError(
            f"cannot read the model card (README.md) of {model_name_or_path!r}, which says which task the model "
            f"learned ({error}); name the task with --task ({', '.join(TASKS)})"
        ) from error
    card = ModelCard.load(card_path)
    for result in card.data.eval_results or []:
        arguments = result.dataset_args or {}
        if arguments.get("task") in TASKS:
            return TrainedTask(arguments["task"], arguments.get("max_length"))
    tasks = [tag for tag in card.data.tags or [] if tag in TASKS]
    if len(tasks) == 1:
        return TrainedTask(tasks[0], None)
    raise ValueError(
        f"the model card of {model_name_or_path!r} names no built-in task ({', '.join(TASKS)}): the demo shows those; "
        "name one with --task"
    )


def read_source(task: TrainedTask, text: str, most_words: int) -> str:
    """`text` as typed (numbers separated by spaces or commas; for `add`, two numbers around `+`, whole or digit by
    digit) written as the corpus writes `task`'s sources, in at most `most_words` words. Raises ValueError with a
    message for the page where the model cannot read it."""
    if task.name == "add":
        return read_sum(text, most_words)
    words = text.replace(",", " ").split()
    if not words:
        raise ValueError(f"Type some integers 0-{NUM_VALUES - 1} separated by spaces, e.g. {EXAMPLES[task.name][0]}.")
    for word in words:
        if word == PLUS:
            raise ValueError(f"'{PLUS}' is for the add task; this model {task.name}s integers: type numbers only.")
        if not NUMBER.fullmatch(word):
            raise ValueError(f"'{word}' is not a number: type integers 0-{NUM_VALUES - 1} separated by spaces.")
        if not 0 <= int(word) < NUM_VALUES:
            raise ValueError(
                f"{word} is outside the model's vocabulary: it knows the integers 0-{NUM_VALUES - 1} only."
            )
    if len(words) > most_words:
        raise ValueError(f"{len(words)} numbers are too many for this model: it reads at most {most_words}.")
    return " ".join(str(int(word)) for word in words)


def read_sum(text: str, most_words: int) -> str:
    """`text` as two numbers around `+` (each whole, `407`, or digit by digit, `4 0 7`), written as the corpus writes an
    add source: one word per column of the sum, least significant first (`data.sum_columns`: `75 9 40`)."""
    words = text.replace(PLUS, f" {PLUS} ").split()
    if words.count(PLUS) != 1 or words[0] == PLUS or words[-1] == PLUS:
        raise ValueError(f"Type two numbers with a '{PLUS}' between them, e.g. {EXAMPLES['add'][0]}.")
    for word in words:
        if word != PLUS and not NUMBER.fullmatch(word):
            raise ValueError(f"'{word}' is not a number: type two whole numbers with a '{PLUS}' between them.")
        if word.startswith("-"):
            raise ValueError(f"{word} is negative: the model adds numbers of 0 and above only.")
    plus = words.index(PLUS)
    operands = [int("".join(words[:plus])), int("".join(words[plus + 1 :]))]
    width = max(len(str(operand)) for operand in operands)
    if width > most_words:
        raise ValueError(
            f"{width}-digit numbers are too long for this model: it reads at most {most_words} digits per number."
        )
    return sum_columns(*operands)


@dataclass
class Response:
    """What the page shows for one input: the answer and what to know about it, or only `message` where the input
    cannot be answered."""

    message: str  # why there is no answer, or notes beside the answer ("" when none)
    source: str = ""  # the input as the model reads it
    answer: str = ""  # the model's greedy answer
    right_answer: str = ""  # the task's
    figure: Figure | None = None  # the cross-attention weights while the model answers

    @property
    def is_right(self) -> bool:
        return bool(self.source) and self.answer == self.right_answer


class Demo:
    """A trained model and its tokenizer (a folder written by `train/train.py`, or a Hub id), answering typed inputs.

    `task` names the built-in task where the model card does not; `revision` pins a Hub model's commit.
    """

    def __init__(self, model_name_or_path: str, task: str | None = None, revision: str | None = None):
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        self.model_name_or_path = model_name_or_path
        self.task = TrainedTask(task, None) if task is not None else read_trained_task(model_name_or_path, revision)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, revision=revision)
        # Eager attention: the only path that returns the attention weights the page draws.
        self.model = AutoModelForSeq2SeqLM.from_pretrained(
            model_name_or_path, revision=revision, attn_implementation="eager"
        ).eval()
        # The positions the model describes (relative positions have no hard limit: their table's size is kept as a
        # bound on what the page answers); the source's last position holds </s>.
        self.position_limit = self.model.config.position_limit or self.model.config.max_position_embeddings
        self.most_words = self.position_limit - 1

    @property
    def description(self) -> str:
        trained = (
            f", trained on 1-{self.task.max_length} {self.task.length_unit}" if self.task.max_length is not None else ""
        )
        return f"`{self.model_name_or_path}` {TASK_DESCRIPTIONS[self.task.name]}{trained}"

    def respond(self, text: str) -> Response:
        """The model's greedy answer to `text` beside the task's right answer, with the cross-attention figure; or a
        message saying why `text` cannot be answered."""
        try:
            source = read_source(self.task, text, self.most_words)
        except ValueError as error:
            return Response(message=str(error))
        unknown = [word for word in source.split() if word not in self.tokenizer.get_vocab()]
        if unknown:
            return Response(message=f"'{unknown[0]}' is not in this model's vocabulary.")
        right_answer = task_target(self.task.name, source)
        # Room for twice the right answer's length (+ </s>): a model that repeats or runs on shows it.
        max_new_tokens = min(2 * (len(right_answer.split()) + 1), self.position_limit)
        figure, answer = cross_attention_figure(self.model, self.tokenizer, source, max_new_tokens=max_new_tokens)
        return Response(
            message=self.notes(text, source, right_answer),
            source=source,
            answer=answer,
            right_answer=right_answer,
            figure=figure,
        )

    def notes(self, text: str, source: str, right_answer: str) -> str:
        """What to know beside an answer: how the model reads the input, and whether it is longer than training's."""
        notes = []
        if source != " ".join(text.split()):
            notes.append(f"The model reads `{source}`.")
        if self.task.name == "add":
            left, right = column_operands(source)
            notes.append(
                f"Sums come least significant digit first: `{right_answer}` is {left + right:,} = {left:,} + {right:,}."
            )
        length = len(source.split())  # integers, or for add the sum's columns: the digits of the longer number
        if self.task.max_length is not None and length > self.task.max_length:
            notes.append(
                f"This input is longer than any in training (at most {self.task.max_length} {self.task.length_unit}): "
                "the model may fail on it."
            )
        return " ".join(notes)
