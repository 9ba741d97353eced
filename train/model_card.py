"""What train.py leaves next to the weights for people: the model card (README.md) and its two figures.

The card describes the data the model learned from: a built-in task's synthetic corpus, or the user's own files or
dataset (their names, sizes, columns, and which splits were drawn from the training data).
"""

import json
import os
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from huggingface_hub import EvalResult, ModelCardData
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Seq2SeqTrainingArguments, TrainerState

from hf_tiny_transformer_train.arguments import RECIPES, DataArguments, ModelArguments, NewModelArguments, flag_names
from hf_tiny_transformer_train.data import sum_columns, sum_digits
from hf_tiny_transformer_train.trainer import position_bias_parameters
from hf_tiny_transformer_train.typed_inputs import FAMILY_DESCRIPTIONS
from hf_tiny_transformer_train.user_data import UserData

TASK_DESCRIPTIONS = {
    "copy": "copies a sequence of integers 0-99",
    "reverse": "reverses a sequence of integers 0-99",
    "sort": "sorts a sequence of integers 0-99 in ascending order",
    "add": "adds two non-negative integers written digit by digit",
}


def plot_training_curves(log_history: list[dict], path: Path) -> None:
    """Training and validation loss, and validation exact match / token accuracy, against the optimizer step."""
    figure = Figure(figsize=(11, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [entry for entry in log_history if "eval_loss" in entry]
    if train:
        loss_axes.plot(*zip(*train), label="training loss")
    if evaluation:
        loss_axes.plot(
            [e["step"] for e in evaluation], [e["eval_loss"] for e in evaluation], "o-", label="validation loss"
        )
    loss_axes.set_yscale("log")
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("cross-entropy per target token")
    loss_axes.legend()
    for key, label in (("eval_exact_match", "exact match"), ("eval_token_accuracy", "token accuracy")):
        points = [(e["step"], e[key]) for e in evaluation if key in e]
        if points:
            accuracy_axes.plot(*zip(*points), "o-", label=f"validation {label}")
    accuracy_axes.set_ylim(0, 1.02)
    accuracy_axes.set_xlabel("step")
    accuracy_axes.set_ylabel("fraction (greedy decoding)")
    accuracy_axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def predict(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sources: list[str]) -> list[str]:
    """Greedy generations for `sources`, decoded as the user reads them."""
    model.eval()
    inputs = tokenizer(sources, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        generated = model.generate(**inputs)
    return tokenizer.batch_decode(generated, skip_special_tokens=True)


def plot_cross_attention(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Dataset, path: Path, max_words: int = 16
) -> dict[str, str]:
    """Encoder-decoder attention weights α' of every decoder layer and head while the model answers one test
    example (the first with at most `max_words` source words, so the labels stay readable). Returns the example.
    """
    example = next((e for e in examples if len(e["source"].split()) <= max_words), examples[0])
    figure, prediction = cross_attention_figure(model, tokenizer, example["source"])
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return {"source": example["source"], "target": example["target"], "prediction": prediction}


def cross_attention_figure(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, source: str, max_new_tokens: int | None = None
) -> tuple[Figure, str]:
    """The model's greedy answer to `source` (at most `max_new_tokens`, by default the generation config's), and a
    figure of the encoder-decoder attention weights α' of every decoder layer and head while it writes the answer:
    a heat map per layer and head, source tokens across, generated tokens down."""
    model.eval()
    # SDPA and flash kernels never materialise α'; the eager path returns it.
    previous_implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")
    inputs = tokenizer(source, return_tensors="pt").to(model.device)
    with torch.no_grad():
        # An explicit max_new_tokens=None would replace the generation config's with generate's default of 20.
        length = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        generated = model.generate(**inputs, do_sample=False, num_beams=1, **length)
        # Row i of α' is the query that predicts generated token i + 1.
        outputs = model(**inputs, decoder_input_ids=generated[:, :-1], output_attentions=True)
    model.set_attn_implementation(previous_implementation)

    source_tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    output_tokens = tokenizer.convert_ids_to_tokens(generated[0, 1:].tolist())
    cross_attentions = [layer[0].float().cpu().numpy() for layer in outputs.cross_attentions]  # [heads, out, src]
    num_layers, num_heads = len(cross_attentions), cross_attentions[0].shape[0]
    # Inches per token: 0.22 fits every tick label; long inputs get smaller cells and labels, so that a heat map
    # stays under about 8 inches.
    cell = min(0.22, 8 / max(len(source_tokens), len(output_tokens)))
    fontsize = 7 * cell / 0.22
    figure = Figure(
        figsize=(num_heads * (1.2 + cell * len(source_tokens)), num_layers * (1.2 + cell * len(output_tokens)))
    )
    axes = figure.subplots(num_layers, num_heads, squeeze=False)
    for layer_index, weights in enumerate(cross_attentions):
        for head_index in range(num_heads):
            ax = axes[layer_index][head_index]
            image = ax.imshow(weights[head_index], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=fontsize)
            ax.set_yticks(range(len(output_tokens)), output_tokens, fontsize=fontsize)
            ax.set_title(f"layer {layer_index + 1}, head {head_index + 1}", fontsize=8)
            if head_index == 0:
                ax.set_ylabel("generated token")
            if layer_index == num_layers - 1:
                ax.set_xlabel("source token")
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight α'")
    return figure, tokenizer.decode(generated[0], skip_special_tokens=True)


def cpu_name() -> str:
    """ "<model> CPU", the model as the OS reports it (Linux's /proc/cpuinfo; platform.processor() elsewhere), so that
    a card's times say which machine they come from; "CPU" where the OS names none."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model} CPU".strip()


def describe_hardware(training_args: Seq2SeqTrainingArguments) -> str:
    if training_args.device.type == "cuda":
        device = torch.cuda.get_device_name(training_args.device)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        device = f"{cpu_name()} with {cores} cores"
    processes = f"{training_args.world_size} processes" if training_args.world_size > 1 else "1 process"
    if training_args.bf16 or training_args.fp16:
        precision = f"{'bf16' if training_args.bf16 else 'fp16'} mixed precision (autocast; the weights stay float32)"
    else:
        precision = "float32"
    return f"{processes} on {device}, in {precision}"


@dataclass
class DataDescription:
    """What the model card says about the data a model was trained on, in the card's and the Hub metadata's terms."""

    what_it_does: str  # completes "A TinyTransformer encoder-decoder that ..."
    corpus: str  # completes "..., trained from scratch on ..."
    dataset_id: str | None  # a Hub dataset id for the metadata, where there is one
    dataset_title: str  # the model-index's name of the test data
    dataset_args: dict[str, str | int | float]
    task_name: str
    tags: list[str]
    input_format: str
    training_data: str  # the "Data:" bullet of the Training section
    limitations: str  # the bullets that depend on the data


# The metrics train.py can measure: result key -> (model-index metric type, its name there, results table column).
METRICS = {
    "exact_match": ("exact_match", "Exact match", "exact match"),
    "token_accuracy": ("accuracy", "Token accuracy", "token accuracy"),
    "chrf": ("chrf", "chrF", "chrF"),
    "bleu": ("bleu", "BLEU", "BLEU"),
}
PERCENT_METRICS = ("exact_match", "token_accuracy")  # shares, shown as percentages; chrF and BLEU are 0-100 scores


def describe_positions_limit(model: PreTrainedModel) -> str:
    limit = getattr(model.config, "position_limit", model.config.max_position_embeddings)
    if limit is None:
        return "its relative positions set no length limit"
    return f"the model accepts at most {limit} positions"


def describe_length_generalisation(
    min_length: int, max_length: int, longer_max_length: int | None, length_unit: str, metrics: dict[str, float]
) -> str:
    """How far the model holds past the training lengths, as measured on the longer test."""
    trained = f"It was trained on {min_length}-{max_length} {length_unit}."
    if longer_max_length is None or "longer_test_exact_match" not in metrics:
        return f"{trained} Longer inputs are outside the training distribution (not measured)"
    return (
        f"{trained} On {metrics.get('longer_test_samples', 'the')} held-out inputs of {max_length + 1}-"
        f"{longer_max_length} {length_unit}, never seen in training, it reaches "
        f"{100 * metrics['longer_test_exact_match']:.1f}% exact match ({100 * metrics['longer_test_token_accuracy']:.1f}% "
        "token accuracy): that is how far it holds"
    )


def describe_synthetic_data(
    data_args: DataArguments,
    longer_max_length: int | None,
    seed: int,
    model: PreTrainedModel,
    metrics: dict[str, float],
) -> DataDescription:
    task, min_length, max_length = data_args.task, data_args.min_length, data_args.max_length
    length_unit = "digits per operand" if task == "add" else "integers per sequence"
    input_format = (
        "the written sum's columns, least significant first, each column's two digits read as one integer 0-99 "
        f"(ten times the first number's digit plus the second's): `{sum_columns(407, 95)}` means 407 + 95 (columns "
        "7|5, 0|9, 4|0; `data.sum_columns` writes them); the answer comes back with one digit more than the "
        f"columns, least significant first: `{sum_digits(407, 95, 3)}` is 502"
        if task == "add"
        else "integers 0-99 separated by spaces, as a person types them: `42 7 42 13`"
    )
    share = data_args.repeated_values_share or 0.0
    drawn = (
        f"uniformly random, {share:.0%} of the training and validation sequences drawn with repeats instead (values "
        "from a random set of 1-100, runs of random length, `data.draw_values`: a uniform draw almost never holds a "
        "run or few distinct values, and a model trained on those alone finds tokens by value rather than position)"
        if share
        else "uniformly random"
    )
    typed = "the typed inputs above and " if any("_family_" in key for key in metrics) else ""
    return DataDescription(
        what_it_does=TASK_DESCRIPTIONS[task],
        corpus="a synthetic corpus",
        dataset_id="synthetic-integer-sequences",
        dataset_title=f"Synthetic {task} corpus (held-out test split)",
        dataset_args={"task": task, "min_length": min_length, "max_length": max_length, "seed": seed},
        task_name=f"{task.capitalize()} (greedy decoding)",
        tags=["synthetic-data", task],
        input_format=f"""{input_format}. Any whitespace separates words; anything outside the vocabulary (`0`..`99`,
`+`) becomes `<unk>`. The tokenizer appends `</s>`; pass `attention_mask` (the tokenizer returns it) when you batch
inputs of different lengths.""",
        training_data=f"""the synthetic `{task}` corpus of `train/data.py`, {min_length}-{max_length} {length_unit}, {drawn};
  {metrics.get("train_samples", 0):,} training examples, seed {seed}. Each source belongs to
  train, validation or test by a hash of its text, so no test source occurs in training.""",
        limitations=f"""- A small, fully reproducible model for learning, teaching and testing encoder-decoder code (training, saving,
  loading, generation, attention visualisation). It is not a language model and has no use beyond its task.
- {describe_length_generalisation(min_length, max_length, longer_max_length, length_unit, metrics)}; {describe_positions_limit(model)},
  and generation stops after `max_new_tokens`={model.generation_config.max_new_tokens} tokens (pass more for longer
  inputs).
- The figures above are measured on {typed}{metrics.get("test_samples", "the")} held-out examples of the uniform
  test split; they say nothing about other distributions.""",
    )


def describe_user_data(
    data: UserData, tokenizer_description: str, model: PreTrainedModel, metrics: dict[str, float]
) -> DataDescription:
    if data.dataset_name is not None:
        origin = f"the dataset `{data.dataset_name}`"
        # Only a Hub id makes valid metadata; a local folder is named in the text.
        dataset_id = None if Path(data.dataset_name).exists() else data.dataset_name
    else:
        origin = ", ".join(f"`{Path(path).name}`" for path in dict.fromkeys(data.origins.values()))
        dataset_id = None
    columns = f"`{data.source_column}` → `{data.target_column}`"
    splits = "\n".join(
        f"  - {split}: {len(dataset):,} examples from {describe_origin(data, split)}"
        + truncation_note(data.truncated.get(split, (0, 0)))
        for split, dataset in data.splits.items()
    )
    drawn = (
        f"\n  {' and '.join(data.split_from_train)} {'were' if len(data.split_from_train) > 1 else 'was'} drawn at "
        f"random from the training data (seed {data.seed}); training examples whose source occurs in "
        f"{'them' if len(data.split_from_train) > 1 else 'it'} were dropped, so held-out sources are unseen."
        if data.split_from_train
        else ""
    )
    test_origin = describe_origin(data, "test") if "test" in data.splits else "the test data"
    return DataDescription(
        what_it_does=f"turns texts of column `{data.source_column}` into texts of column `{data.target_column}`",
        corpus=origin,
        dataset_id=dataset_id,
        dataset_title=f"{data.dataset_name or origin} (test: {test_origin})".replace("`", ""),
        dataset_args={"source_column": data.source_column, "target_column": data.target_column, "seed": data.seed},
        task_name=f"{data.source_column} to {data.target_column} (greedy decoding)",
        tags=[],
        input_format=f"""texts like those of column `{data.source_column}` of the training data; the model answers
with a text like those of column `{data.target_column}`. Tokenizer: {tokenizer_description}; it appends the
end-of-sequence token. Pass `attention_mask` (the tokenizer returns it) when you batch inputs of different
lengths.""",
        training_data=f"""{origin}, columns {columns}:
{splits}{drawn}""",
        limitations=f"""- A small model for one text-to-text job; it has no knowledge beyond its training pairs.
- Inputs unlike the training sources (other formats, languages, lengths) are outside what it learned; the model
  accepts at most {model.config.max_position_embeddings} positions, and generation stops after
  `max_new_tokens`={model.generation_config.max_new_tokens} tokens.
- The figures above are measured on {metrics.get("test_samples", "the")} held-out examples from {test_origin};
  they hold for data like those, not for other distributions.""",
    )


def describe_origin(data: UserData, split: str) -> str:
    if split in data.split_from_train:
        return f"{data.split_percentage:g}% of the distinct sources of `{Path(data.origins['train']).name}`"
    return f"`{data.origins[split]}`" if data.dataset_name is not None else f"`{Path(data.origins[split]).name}`"


def truncation_note(truncated: tuple[int, int]) -> str:
    sources, targets = truncated
    notes = [f"{count:,} {what} truncated" for count, what in ((sources, "sources"), (targets, "targets")) if count]
    return f" ({', '.join(notes)})" if notes else ""


@dataclass
class RunRecord:
    """What a finished run knows beyond its arguments, for the model card."""

    argv: list[str]  # the command line's flags
    metrics: dict[str, float]  # every split's metrics, as the Trainer saved them ("test_exact_match", ...)
    trainer_state: TrainerState  # when training stopped, and the checkpoint kept
    examples: Dataset  # held-out examples with "source" and "target"; the card shows the model's answers to three
    attention_example: dict[str, str]  # the example of the attention figure, with the model's "prediction"
    user_data: UserData | None  # None: a built-in task's synthetic corpus
    longer_max_length: int | None  # the longer test's longest sources (None: no longer test)
    curriculum_steps: int  # the steps of the length curriculum (0: none)
    grouping_batches: int  # the batches pooled and grouped by length after the curriculum (1: none)
    hub_repo_id: str | None  # where the folder is pushed, if it is
    wall_time: float  # seconds, the whole command


def describe_tokenizer(model_args: ModelArguments, data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> str:
    """Where the tokenizer came from."""
    if data_args.tokenizer_name is not None:
        return f"`{data_args.tokenizer_name}` ({len(tokenizer):,} tokens)"
    if model_args.model_name_or_path is not None:
        return f"the tokenizer of `{model_args.model_name_or_path}` ({len(tokenizer):,} tokens)"
    if model_args.tokenizer_type is not None:
        kind = "byte-level BPE" if model_args.tokenizer_type == "bpe" else "word-level"
        return f"{kind}, {len(tokenizer):,} tokens, trained on the training split"
    return f"the built-in word-level tokenizer ({len(tokenizer):,} tokens)"


def metadata(
    name: str, data: DataDescription, base_model: str | None, metrics: dict[str, float], measured: list[str]
) -> ModelCardData:
    """The card's Hub metadata, with the model-index of the measured test metrics."""
    eval_results = [
        EvalResult(
            task_type="text2text-generation",
            task_name=data.task_name,
            dataset_type=data.dataset_id or "custom",
            dataset_name=data.dataset_title,
            dataset_split="test",
            dataset_args=data.dataset_args,
            metric_type=METRICS[key][0],
            metric_name=METRICS[key][1],
            metric_value=round(float(metrics[f"test_{key}"]), 4),
        )
        for key in measured
        if f"test_{key}" in metrics
    ]
    return ModelCardData(
        model_name=name,
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="text2text-generation",
        tags=["tiny-transformer", "encoder-decoder", "seq2seq", *data.tags, "custom_code"],
        datasets=[data.dataset_id] if data.dataset_id else None,
        metrics=[METRICS[key][0] for key in measured] or ["exact_match", "accuracy"],
        # Only a Hub id makes a valid base_model; a local folder is named in the text instead.
        base_model=base_model if base_model is not None and not Path(base_model).exists() else None,
        eval_results=eval_results or None,
    )


def metrics_table(metrics: dict[str, float], rows: list[tuple[str, str]], measured: list[str]) -> str:
    """A markdown table of `measured` metrics, one row per (metric key prefix, label) of `rows` that has samples."""

    def figure(prefix: str, key: str) -> str:
        value = metrics.get(f"{prefix}_{key}")
        if value is None:
            return "not measured"
        return f"{100 * value:.2f}%" if key in PERCENT_METRICS else f"{value:.2f}"

    lines = [
        "| split | examples | " + " | ".join(METRICS[key][2] for key in measured) + " |",
        "| --- | --- |" + " --- |" * len(measured),
    ]
    for prefix, label in rows:
        if f"{prefix}_samples" in metrics:
            figures = " | ".join(figure(prefix, key) for key in measured)
            lines.append(f"| {label} | {metrics[f'{prefix}_samples']} | {figures} |")
    return "\n".join(lines)


def results_section(
    metrics: dict[str, float], measured: list[str], data_args: DataArguments, run: RunRecord, hardware: str
) -> str:
    longer = f"longer inputs, {(data_args.max_length or 0) + 1}-{run.longer_max_length} (held out)"
    table = metrics_table(
        metrics, [("test", "test (held out)"), ("eval", "validation"), ("longer_test", longer)], measured
    )
    text_metrics_note = (
        " chrF and BLEU are sacrebleu's corpus scores (0-100) of the decoded answers against the decoded targets;"
        " BLEU counts word n-grams up to 4, so it is 0 for answers that never have 4 words."
        if "chrf" in measured or "bleu" in measured
        else ""
    )
    return f"""## Results

Greedy decoding; exact match means the whole output sequence, up to and including `</s>`, is right.{text_metrics_note}

{table}

The whole command took {run.wall_time / 60:.1f} minutes, {metrics.get("train_runtime", float("nan")):.0f} s of them
training, on {hardware}."""


def typed_inputs_section(metrics: dict[str, float], data_args: DataArguments, longer_max_length: int | None) -> str:
    """Exact match on each family of inputs a person types (typed_inputs.py), at the training's lengths and at the
    longer test's; empty where none was measured."""
    ranges = {"test_family": f"{data_args.min_length}-{data_args.max_length}"}
    if longer_max_length:
        ranges["longer_test_family"] = f"{data_args.max_length + 1}-{longer_max_length}"
    rows = []
    for family, description in FAMILY_DESCRIPTIONS.items():
        cells = []
        for prefix in ranges:
            value, count = metrics.get(f"{prefix}_{family}_exact_match"), metrics.get(f"{prefix}_{family}_samples")
            cells.append("-" if value is None else f"{100 * value:.1f}% of {count}")
        if any(cell != "-" for cell in cells):
            rows.append(f"| {description} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    header = "| inputs | " + " | ".join(f"{lengths} integers" for lengths in ranges.values()) + " |"
    return f"""## Inputs a person types

The uniform test split almost never holds a run or only a few distinct values. Exact match on held-out inputs of each
kind a person tries first (none of them occurs in training; `typed_inputs.py` of the project), greedy decoding's,
scored on one forward fed the target's prefix (greedy decoding gets an answer right exactly when the most likely token
is the target's at every position; `evaluation.py` of the project):

{header}
| --- |{" --- |" * len(ranges)}
{chr(10).join(rows)}"""


def usage_section(load_path: str, data: DataDescription, samples: list[dict], predictions: list[str]) -> str:
    example_rows = "\n".join(
        f"| `{sample['source']}` | `{sample['target']}` | `{prediction}` |"
        for sample, prediction in zip(samples, predictions)
    )
    return f"""## How to use

The model's code is stored with it, so `trust_remote_code=True` loads it without installing anything but
`transformers` and `torch`.

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{load_path}", trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained("{load_path}", trust_remote_code=True)
inputs = tokenizer([{json.dumps(samples[0]["source"], ensure_ascii=False)}], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**inputs), skip_special_tokens=True))
# {[predictions[0]]}
```

**Input format:** {data.input_format}

| input | expected | model output |
| --- | --- | --- |
{example_rows}"""


def recipe_lines(data_args: DataArguments) -> str:
    """The recipe file the run started from and the values the command line changed in it."""
    recipe = Path(data_args.recipe)
    shown = f"train/recipes/{recipe.name}" if recipe.resolve().parent == RECIPES else str(recipe)
    changed = ", ".join(f"`{name}` {value}" for name, value in data_args.recipe_overrides.items())
    return f"- Recipe: `{shown}`" + (f", with {changed} from the command line." if changed else ", as it is.")


def stop_lines(data_args: DataArguments, training_args: Seq2SeqTrainingArguments, state: TrainerState) -> list[str]:
    """Why training stopped, where a rule other than the step count could stop it; no line where it took all steps."""
    lines, stopped_early = [], state.global_step < state.max_steps
    if data_args.early_stopping_patience and state.best_metric is not None:
        metric = training_args.metric_for_best_model
        if stopped_early:
            ended = f"stopped after {state.global_step} steps: validation {metric} had not improved for"
        else:
            ended = f"ran all {state.global_step} steps: validation {metric} never went without improving for"
        lines.append(
            f"- Early stopping: training {ended} {data_args.early_stopping_patience} evaluations. The model is the "
            f"checkpoint of step {state.best_global_step}, whose validation {metric} was the best "
            f"({state.best_metric:.4g})."
        )
    if data_args.target_exact_match and stopped_early:
        lines.append(
            f"- Stopped at step {state.global_step}, the first evaluation whose validation exact match "
            f"reached the target of {data_args.target_exact_match:.1%}."
        )
    return lines


def training_section(
    data: DataDescription,
    data_args: DataArguments,
    training_args: Seq2SeqTrainingArguments,
    run: RunRecord,
    model: PreTrainedModel,
) -> str:
    command = "python train/train.py" + ("" if not run.argv else " " + shlex.join(run.argv))
    if training_args.world_size > 1:
        command += f"   # launched on {training_args.world_size} processes (torchrun / accelerate launch)"
    schedule = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
    global_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    warmup = training_args.warmup_steps
    warmup = f"{warmup:g} of the steps in warmup" if 0 < warmup < 1 else f"{warmup:g} warmup steps"
    steps = (
        f"{training_args.max_steps} steps"
        if training_args.max_steps > 0
        else f"{training_args.num_train_epochs:g} epochs"
    )
    lines = stop_lines(data_args, training_args, run.trainer_state)
    if lines:
        steps = f"at most {steps}"
    bias_scale = getattr(training_args, "position_bias_learning_rate_scale", 1.0)
    if bias_scale != 1 and position_bias_parameters(model):
        lines.insert(
            0,
            f"- The relative position-bias tables learn at {bias_scale:g} times that rate: Adam moves each weight by "
            "about the learning rate per step, and a head attends to one distance alone only once its table's "
            "entry for that distance exceeds the others by several units (reverse: 300 steps to 99.9% validation "
            "exact match instead of 1,500).",
        )
    if getattr(model.config, "occurrence_bias", False):
        pairs = getattr(model.config, "occurrence_bias_pairs", "all")
        compared = {
            "same_token_and_first": "between a decoder token and the source's copies of the same token (any other "
            "source token biased by whether it is its value's first occurrence, so that a long run weighs as one "
            "value)",
            "same_token": "between a decoder token and the source's copies of the same token (every other pair "
            "sharing one bias)",
        }.get(pairs, "between every decoder token and every source token")
        lines.append(
            "- Occurrence bias: encoder-decoder attention adds a learned bias by how many times the source token and "
            f"the decoder's token occurred before in their sequences, {compared}, so that the model counts repeated "
            "values by finding the next copy to write instead of by shares of attention (sort, 2-3 distinct values "
            '57.5-72% exact match without it after 5,000 steps; bench/README.md, "Sort with repeats").'
        )
    if run.curriculum_steps:
        lines.append(
            f"- Length curriculum: during the first {run.curriculum_steps} steps, three quarters of each batch are "
            "drawn among the sequences no longer than a cap that grows from the shortest length to the longest, a "
            "quarter among all."
        )
    if run.grouping_batches > 1:
        lines.append(
            f"- Batches grouped by length: after the curriculum, every {run.grouping_batches} batches "
            "drawn are pooled, sorted by source length and cut into batches again, read in a random order, so that "
            "a batch pads to about its own length rather than to the longest drawn (the same examples in the same "
            "stretch of training, at less cost a step)."
        )
    return f"""## Training

```bash
{command}
```

{recipe_lines(data_args)}
- Data: {data.training_data}
- Optimisation: AdamW, learning rate {training_args.learning_rate:g}, {schedule} schedule with
  {warmup}, {steps} of {global_batch} examples, weight decay {training_args.weight_decay:g}.
{chr(10).join(lines)}

![Training and validation curves](training_curves.png)"""


def attention_section(example: dict[str, str]) -> str:
    return f"""## What the model attends to

The encoder-decoder attention weights α' of every decoder layer and head while the model answers the test
example `{example["source"]}` (expected `{example["target"]}`, generated
`{example["prediction"]}`). Row *i* is the query that produces output token *i*; bright cells are the
source tokens it reads.

![Cross-attention weights](attention.png)"""


def write_model_card(
    path: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: Seq2SeqTrainingArguments,
    run: RunRecord,
) -> None:
    """README.md with Hub metadata (license, tags, model-index with the measured test metrics) and the usage,
    training, results, attention figure and limitations of the model, one section each, in `path`'s folder."""
    name = Path(training_args.output_dir).absolute().name
    metrics = run.metrics
    if run.user_data is None:
        data = describe_synthetic_data(data_args, run.longer_max_length, training_args.seed, model, metrics)
    else:
        data = describe_user_data(run.user_data, describe_tokenizer(model_args, data_args, tokenizer), model, metrics)
    measured = [key for key in METRICS if f"test_{key}" in metrics or f"eval_{key}" in metrics]
    base_model = model_args.model_name_or_path
    config = model.config
    size = ", ".join(
        f"{field} {getattr(config, field)}" for field in flag_names(NewModelArguments) if hasattr(config, field)
    )
    started_from = f"fine-tuned from `{base_model}`" if base_model else "trained from scratch"
    samples = [run.examples[index] for index in range(min(3, len(run.examples)))]
    predictions = predict(model, tokenizer, [sample["source"] for sample in samples])
    sections = [
        f"""# {name}

A TinyTransformer encoder-decoder that {data.what_it_does}, {started_from} on {data.corpus} with
`train/train.py` of the hf_tiny_transformer project: {model.num_parameters():,} parameters ({size}).""",
        results_section(metrics, measured, data_args, run, describe_hardware(training_args)),
        typed_inputs_section(metrics, data_args, run.longer_max_length),
        usage_section(run.hub_repo_id or str(Path(training_args.output_dir)), data, samples, predictions),
        training_section(data, data_args, training_args, run, model),
        attention_section(run.attention_example),
        f"## Intended use and limitations\n\n{data.limitations}",
    ]
    card_data = metadata(name, data, base_model, metrics, measured)
    body = "\n\n".join(section for section in sections if section)
    path.write_text(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")
