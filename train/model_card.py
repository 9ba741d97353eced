"""What train.py leaves next to the weights for people: the model card (README.md) and its two figures."""

import os
import shlex
from pathlib import Path

import torch
from datasets import Dataset
from huggingface_hub import EvalResult, ModelCardData
from matplotlib.figure import Figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Seq2SeqTrainingArguments

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
    model.eval()
    # SDPA and flash kernels never materialise α'; the eager path returns it.
    previous_implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")
    inputs = tokenizer(example["source"], return_tensors="pt").to(model.device)
    with torch.no_grad():
        generated = model.generate(**inputs)
        # Row i of α' is the query that predicts generated token i + 1.
        outputs = model(**inputs, decoder_input_ids=generated[:, :-1], output_attentions=True)
    model.set_attn_implementation(previous_implementation)

    source_tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    output_tokens = tokenizer.convert_ids_to_tokens(generated[0, 1:].tolist())
    cross_attentions = [layer[0].float().cpu().numpy() for layer in outputs.cross_attentions]  # [heads, out, src]
    num_layers, num_heads = len(cross_attentions), cross_attentions[0].shape[0]
    cell = 0.22  # inches per token, so that every tick label fits
    figure = Figure(
        figsize=(num_heads * (1.2 + cell * len(source_tokens)), num_layers * (1.2 + cell * len(output_tokens)))
    )
    axes = figure.subplots(num_layers, num_heads, squeeze=False)
    for layer_index, weights in enumerate(cross_attentions):
        for head_index in range(num_heads):
            ax = axes[layer_index][head_index]
            image = ax.imshow(weights[head_index], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=90, fontsize=7)
            ax.set_yticks(range(len(output_tokens)), output_tokens, fontsize=7)
            ax.set_title(f"layer {layer_index + 1}, head {head_index + 1}", fontsize=8)
            if head_index == 0:
                ax.set_ylabel("generated token")
            if layer_index == num_layers - 1:
                ax.set_xlabel("source token")
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight α'")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return {
        "source": example["source"],
        "target": example["target"],
        "prediction": tokenizer.decode(generated[0], skip_special_tokens=True),
    }


def describe_hardware(training_args: Seq2SeqTrainingArguments) -> str:
    if training_args.device.type == "cuda":
        device = torch.cuda.get_device_name(training_args.device)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        device = f"CPU with {cores} cores"
    processes = f"{training_args.world_size} processes" if training_args.world_size > 1 else "1 process"
    return f"{processes} on {device}"


def write_model_card(
    path: Path,
    *,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    min_length: int,
    max_length: int,
    training_args: Seq2SeqTrainingArguments,
    metrics: dict[str, float],
    argv: list[str],
    base_model: str | None,
    attention_example: dict[str, str],
    test_examples: Dataset,
    wall_time: float,
    hub_repo_id: str | None,
) -> None:
    """README.md with Hub metadata (license, tags, model-index with the measured test metrics) and the usage,
    training, results, attention figure and limitations of the model in `path`'s folder."""
    name = Path(training_args.output_dir).absolute().name
    dataset_id = "synthetic-integer-sequences"
    dataset_args = {"task": task, "min_length": min_length, "max_length": max_length, "seed": training_args.seed}
    eval_results = [
        EvalResult(
            task_type="text2text-generation",
            task_name=f"{task.capitalize()} (greedy decoding)",
            dataset_type=dataset_id,
            dataset_name=f"Synthetic {task} corpus (held-out test split)",
            dataset_split="test",
            dataset_args=dataset_args,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(metrics[key]), 4),
        )
        for key, metric_type, metric_name in (
            ("test_exact_match", "exact_match", "Exact match"),
            ("test_token_accuracy", "accuracy", "Token accuracy"),
        )
        if key in metrics
    ]
    card_data = ModelCardData(
        model_name=name,
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="text2text-generation",
        tags=["tiny-transformer", "encoder-decoder", "seq2seq", "synthetic-data", task, "custom_code"],
        datasets=[dataset_id],
        metrics=["exact_match", "accuracy"],
        # Only a Hub id makes a valid base_model; a local folder is named in the text instead.
        base_model=base_model if base_model is not None and not Path(base_model).exists() else None,
        eval_results=eval_results or None,
    )

    config = model.config
    size = ", ".join(
        f"{field} {getattr(config, field)}"
        for field in (
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "num_attention_heads",
            "ffn_dim",
            "position_embedding_type",
            "norm_position",
        )
        if hasattr(config, field)
    )
    load_path = hub_repo_id or str(Path(training_args.output_dir))
    samples = [test_examples[index] for index in range(min(3, len(test_examples)))]
    predictions = predict(model, tokenizer, [sample["source"] for sample in samples])
    length_unit = "digits per operand" if task == "add" else "integers per sequence"
    command = "python train/train.py" + ("" if not argv else " " + shlex.join(argv))
    if training_args.world_size > 1:
        command += f"   # launched on {training_args.world_size} processes (torchrun / accelerate launch)"
    started_from = f"fine-tuned from `{base_model}`" if base_model else "trained from scratch"
    schedule = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
    global_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )

    def percent(key: str) -> str:
        return f"{100 * metrics[key]:.2f}%" if key in metrics else "not measured"

    input_format = (
        "two numbers written digit by digit, separated by spaces, with ` + ` between them: `4 0 7 + 9 5` means "
        "407 + 95; the answer comes back the same way (`5 0 2`)"
        if task == "add"
        else "integers 0-99 separated by spaces, as a person types them: `42 7 42 13`"
    )
    example_rows = "\n".join(
        f"| `{sample['source']}` | `{sample['target']}` | `{prediction}` |"
        for sample, prediction in zip(samples, predictions)
    )
    body = f"""
# {name}

A TinyTransformer encoder-decoder that {TASK_DESCRIPTIONS[task]}, {started_from} on a synthetic corpus with
`train/train.py` of the hf_tiny_transformer project: {model.num_parameters():,} parameters ({size}).

## Results

Greedy decoding; exact match means the whole output sequence, up to and including `</s>`, is right.

| split | examples | exact match | token accuracy |
| --- | --- | --- | --- |
| test (held out) | {metrics.get("test_samples", "-")} | {percent("test_exact_match")} | {percent("test_token_accuracy")} |
| validation | {metrics.get("eval_samples", "-")} | {percent("eval_exact_match")} | {percent("eval_token_accuracy")} |

The whole command took {wall_time / 60:.1f} minutes, {metrics.get("train_runtime", float("nan")):.0f} s of them
training, on {describe_hardware(training_args)}.

## How to use

The model's code is stored with it, so `trust_remote_code=True` loads it without installing anything but
`transformers` and `torch`.

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{load_path}", trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained("{load_path}", trust_remote_code=True)
inputs = tokenizer(["{samples[0]["source"]}"], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**inputs), skip_special_tokens=True))
# ['{predictions[0]}']
```

**Input format:** {input_format}. Any whitespace separates words; anything outside the vocabulary (`0`..`99`,
`+`) becomes `<unk>`. The tokenizer appends `</s>`; pass `attention_mask` (the tokenizer returns it) when you batch
inputs of different lengths.

| input | expected | model output |
| --- | --- | --- |
{example_rows}

## Training

```bash
{command}
```

- Data: the synthetic `{task}` corpus of `train/data.py`, {min_length}-{max_length} {length_unit}, uniformly
  random; {metrics.get("train_samples", 0):,} training examples, seed {training_args.seed}. Each source belongs to
  train, validation or test by a hash of its text, so no test source occurs in training.
- Optimisation: AdamW, learning rate {training_args.learning_rate:g}, {schedule} schedule with
  {training_args.warmup_steps:g} warmup steps, {training_args.max_steps} steps of {global_batch} examples, weight
  decay {training_args.weight_decay:g}.

![Training and validation curves](training_curves.png)

## What the model attends to

The encoder-decoder attention weights α' of every decoder layer and head while the model answers the test
example `{attention_example["source"]}` (expected `{attention_example["target"]}`, generated
`{attention_example["prediction"]}`). Row *i* is the query that produces output token *i*; bright cells are the
source tokens it reads.

![Cross-attention weights](attention.png)

## Intended use and limitations

- A small, fully reproducible model for learning, teaching and testing encoder-decoder code (training, saving,
  loading, generation, attention visualisation). It is not a language model and has no use beyond its task.
- It was trained on {min_length}-{max_length} {length_unit}. Longer inputs are outside the training
  distribution; the model accepts at most {config.max_position_embeddings} positions, and generation stops after
  `max_new_tokens`={model.generation_config.max_new_tokens} tokens.
- The figures above are measured on {metrics.get("test_samples", "the")} held-out examples drawn from the training
  distribution; they say nothing about other distributions (e.g. long runs of one number).
"""
    path.write_text(f"---\n{card_data.to_yaml()}\n---\n{body}")
