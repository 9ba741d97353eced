#!/usr/bin/env python
"""How fast and how far TinyTransformer learns the built-in tasks, and transformers' BART beside it.

    python -m bench.learning commands   # wall time and test exact match of `python train/train.py --task T`, 3 seeds
    python -m bench.learning ablation   # the default task (or --tasks sort) with each part of its recipe undone
    python -m bench.learning bart       # ours and BART, same recipe, size and batches: time to 99% (10-minute budget)
    python -m bench.learning length     # trained on 1-25 (add: 1-10 digits), tested up to 4x: each scheme and BART

`commands` and `ablation` time the whole command a user runs, in a fresh process with a fresh datasets cache (so the
corpus is built as on a new machine), and read its test exact match from the output folder. `bart` and `length`
train in this process with train.py's recipe for the task (train/recipes/<task>.yaml: learning rate, schedule, warm-up, batch
size, length curriculum and then batches drawn from all lengths, gradient clipping, stop at the validation target),
ours and BART on the same batches, alternating every evaluation interval so that machine noise hits both; `length`
caps each model's training in steps (--max_steps), so that its table does not depend on the machine's speed.
Figures are medians over the seeds; a seed that never reaches the target counts as infinitely slow. The script
prints tables and writes JSON; it never asserts.
"""

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import transformers
from transformers import GenerationConfig

from bench.common import BOS, EOS, MODEL_NAMES, PAD, Report, build_model, make_optimizer, run_train_script, text_table
from hf_tiny_transformer_train import data
from hf_tiny_transformer_train.arguments import (
    DEFAULT_TASK,
    NewModelArguments,
    flag_names,
    new_model_config,
    parse_arguments,
)
from hf_tiny_transformer_train.evaluation import teacher_forced_exact_match
from hf_tiny_transformer_train.metrics import sequence_metrics
from hf_tiny_transformer_train.typed_inputs import FAMILIES, SEQUENCE_TASKS, build_typed_inputs

TASKS = SEQUENCE_TASKS


def median_or_never(values: list[float | None]) -> float | None:
    """The median, a None (never reached) counting as infinite; None if that median is infinite."""
    median = statistics.median(math.inf if value is None else value for value in values)
    return None if math.isinf(median) else median


# ---------------------------------------------------------------------------------------- whole commands (train.py)
def run_command(flags: list[str], seed: int) -> dict:
    """`python train/train.py FLAGS --seed SEED` in a fresh process, caches and output folder (bench.common's
    run_train_script); its wall time and the figures it wrote, or the end of its output where it failed."""
    with tempfile.TemporaryDirectory(prefix="learning-") as scratch:
        scratch = Path(scratch)
        try:
            run = run_train_script([*flags, "--seed", str(seed)], scratch / "out", scratch)
        except RuntimeError as error:
            return {"flags": flags, "seed": seed, "error": str(error)[-2000:]}
        wall, results = run["wall_s"], run["results"]
        state = json.loads((scratch / "out" / "trainer_state.json").read_text())
    return {
        "flags": flags,
        "seed": seed,
        "wall_s": wall,
        "train_s": results.get("train_runtime"),
        "steps": state["global_step"],
        "test_exact_match": results.get("test_exact_match"),
        "longer_test_exact_match": results.get("longer_test_exact_match"),
        # "test_family_one_value" (1-50), "longer_test_family_one_value" (51-100), ...
        "typed_inputs": {
            key.removesuffix("_exact_match"): value
            for key, value in results.items()
            if "_family_" in key and key.endswith("_exact_match")
        },
    }


def summarize_runs(runs: list[dict]) -> dict:
    finished = [run for run in runs if "error" not in run]
    summary = {"runs": runs, "failed": len(runs) - len(finished)}
    if finished:
        walls = [run["wall_s"] for run in finished]
        summary.update(
            wall_s=statistics.median(walls),
            wall_min_s=min(walls),
            wall_max_s=max(walls),
            steps=statistics.median(run["steps"] for run in finished),
            worst_test_exact_match=min(run["test_exact_match"] for run in finished),
            seeds_at_99=sum(run["test_exact_match"] >= 0.99 for run in finished),
        )
    return summary


def describe_summary(summary: dict) -> tuple[str, str, str, str]:
    if "wall_s" not in summary:
        return "failed", "", "", ""
    return (
        f"{summary['wall_s']:.0f} s ({summary['wall_min_s']:.0f}-{summary['wall_max_s']:.0f})",
        f"{summary['steps']:.0f}",
        f"{summary['worst_test_exact_match']:.2%}",
        f"{summary['seeds_at_99']}/{len(summary['runs'])}",
    )


# `commands --precision`: the flags that force a precision (the recipe's choice where not forced).
PRECISION_FLAGS = {"recipe": [], "fp32": ["--bf16", "false"], "bf16": ["--bf16", "true"]}


def benchmark_commands(tasks: list[str], seeds: list[int], precision: str = "recipe") -> tuple[dict, str]:
    flags = {task: ["--task", task, *PRECISION_FLAGS[precision]] for task in tasks}
    report = {task: summarize_runs([run_command(flags[task], seed) for seed in seeds]) for task in tasks}
    rows = [("command", "wall time, median (min-max)", "steps", "lowest test exact match", "seeds >= 99%")]
    family_rows = [("command, lengths", *FAMILIES)]
    for task, summary in report.items():
        rows.append((f"python train/train.py {' '.join(flags[task])}", *describe_summary(summary)))
        finished = [run for run in summary["runs"] if "error" not in run]
        for prefix, lengths in (("test_family", "training lengths"), ("longer_test_family", "longer test")):
            cells = [[run["typed_inputs"].get(f"{prefix}_{family}") for run in finished] for family in FAMILIES]
            if any(None not in cell and cell for cell in cells):
                family_rows.append((f"--task {task}, {lengths}", *(describe_family(cell) for cell in cells)))
    typed = f"\n\nTyped inputs, exact match: median (lowest) over the seeds\n{text_table(family_rows)}"
    return report, text_table(rows) + (typed if len(family_rows) > 1 else "")


def describe_family(figures: list[float | None]) -> str:
    if not figures or None in figures:
        return "-"
    return f"{statistics.median(figures):.1%} ({min(figures):.1%})"


def ablation_variants(task: str) -> dict[str, list[str]]:
    """The task's recipe, then each of its changes undone on its own. Reverse's earlier rounds' alternatives (batches
    grouped by length, the recipe before issue 9 as a whole) are measured in bench/README.md; sort runs its own
    previous recipe (learned positions, four heads, uniform draws, 1,200 steps)."""
    if task == "sort":
        return {
            "the recipe (train.py's defaults for sort)": [],
            "float32 instead of bf16": ["--bf16", "false"],
            "the occurrence bias over every pair of tokens (2026-12-03)": ["--occurrence_bias_pairs", "all"],
            "one bias for every pair of different tokens (2026-12-04)": ["--occurrence_bias_pairs", "same_token"],
            "a stop at 100% validation exact match": ["--target_exact_match", "1"],
            "no occurrence bias": ["--occurrence_bias", "false"],
            "no occurrence bias, 5,000 steps (the recipe before it)": ["--occurrence_bias", "false", "--max_steps", "5000"],
            "uniform draws only instead of half with repeats": ["--repeated_values_share", "0"],
            "learned positions instead of relative": ["--position_embedding_type", "learned"],
            "four attention heads instead of eight": ["--num_attention_heads", "4"],
            "two encoder and two decoder layers instead of one and three": [
                "--encoder_layers", "2", "--decoder_layers", "2",
            ],
            "1,000 steps instead of 1,500": ["--max_steps", "1000"],
            "batches of all lengths after the curriculum (not grouped by length)": ["--length_grouping_batches", "1"],
            "before: learned positions, four heads, uniform draws, 1,200 steps": [
                "--position_embedding_type", "learned", "--num_attention_heads", "4", "--repeated_values_share", "0",
                "--max_steps", "1200",
            ],
        }  # fmt: skip
    if task != "reverse":
        raise ValueError(f"the ablation covers reverse (the default task) and sort, not {task!r}")
    return {
        "the recipe (train.py's defaults)": [],
        "no length curriculum: every batch of all lengths": ["--length_curriculum_steps", "0"],
        "learned positions instead of relative (1,500 steps at most)": [
            "--position_embedding_type", "learned", "--max_steps", "1500",
        ],
        "batches of 64 instead of 32": ["--per_device_train_batch_size", "64"],
        "learning rate 1e-3 instead of 2e-3": ["--learning_rate", "1e-3"],
        "no stop at the target: 1,500 steps": ["--target_exact_match", "0", "--max_steps", "1500"],
        "evaluation every 250 steps instead of 100": ["--eval_steps", "250", "--save_steps", "250"],
        "no draws with repeats: uniform training sequences only": ["--repeated_values_share", "0"],
        "no typed-input tests (6 families x 200, at 1-50 and 51-100)": ["--typed_inputs_size", "0"],
        "evaluations and typed-input families generated instead of teacher-forced": [
            "--metric_for_best_model", "eval_token_accuracy",  # a metric of generated tokens: evaluation.py generates
        ],
        "position-bias tables at the learning rate (scale 1 instead of 10)": [
            "--position_bias_learning_rate_scale", "1",
        ],
    }  # fmt: skip


def benchmark_ablation(task: str, seeds: list[int], only: list[int] | None = None) -> tuple[dict, str]:
    """Each variant of `ablation_variants(task)` (with `only`, those at these places, the recipe always first) over
    `seeds`."""
    report = {}
    variants = ablation_variants(task)
    if only is not None:
        variants = {name: flags for place, (name, flags) in enumerate(variants.items()) if place in {0, *only}}
    for name, flags in variants.items():
        report[name] = summarize_runs([run_command(["--task", task, *flags], seed) for seed in seeds])
    baseline = report[next(iter(variants))].get("wall_s")  # the first variant is the recipe itself
    rows = [(f"{task}, length {Recipe.for_task(task).max_length}", "wall time, median (min-max)", "steps",
             "lowest test exact match", "seeds >= 99%", "time / recipe's")]  # fmt: skip
    for name, summary in report.items():
        ratio = f"{summary['wall_s'] / baseline:.2f}x" if baseline and "wall_s" in summary else ""
        rows.append((name, *describe_summary(summary), ratio))
    return report, text_table(rows)


# ----------------------------------------------------------------------------------- training in this process
@dataclass
class Recipe:
    """train.py's values for a task: its recipe file overridden by `overrides` (flag name -> value), parsed as
    `python train/train.py --task T --name value ...` parses them, with the new model's size filled in."""

    task: str
    hyper: dict

    @classmethod
    def for_task(cls, task: str, **overrides) -> "Recipe":
        flags = [item for name, value in overrides.items() for item in (f"--{name}", str(value))]
        model_args, data_args, training_args = parse_arguments(["--task", task, *flags])
        config = new_model_config(model_args, data.build_tokenizer())
        sizes = {name: getattr(config, name) for name in flag_names(NewModelArguments)}
        return cls(task, {**training_args.to_dict(), **vars(data_args), **sizes})

    def __getattr__(self, name):
        try:
            return self.hyper[name]
        except KeyError:
            raise AttributeError(name) from None


def recipe_model(name: str, recipe: Recipe, vocab_size: int, seed: int, position_embedding_type: str | None = None):
    """Ours (with the recipe's positions unless given, and its occurrence bias) or BART, of the recipe's size
    (bench.common.build_model)."""
    ours = {} if name == "bart" else {"occurrence_bias": bool(recipe.occurrence_bias)}
    return build_model(
        name, vocab_size=vocab_size, d_model=recipe.d_model, encoder_layers=recipe.encoder_layers,
        decoder_layers=recipe.decoder_layers, num_attention_heads=recipe.num_attention_heads, ffn_dim=recipe.ffn_dim,
        max_position_embeddings=recipe.max_position_embeddings, dropout=recipe.dropout,
        position_embedding_type=position_embedding_type or recipe.position_embedding_type, seed=seed, **ours,
    )  # fmt: skip


def pad_batch(rows: list[list[int]], pad: int) -> torch.Tensor:
    longest = max(map(len, rows))
    return torch.tensor([row + [pad] * (longest - len(row)) for row in rows])


def exact_match(model, split, max_new_tokens: int, batch_size: int) -> float:
    """Greedy test exact match, as train.py computes it (`sequence_metrics`), batches grouped by length."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, decoder_start_token_id=BOS,
                              bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    inputs, labels = split["input_ids"], split["labels"]
    order = sorted(range(len(inputs)), key=lambda index: len(inputs[index]))
    model.eval()
    generations, references = [], []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids = pad_batch([inputs[i] for i in rows], 0)
            output = model.generate(
                input_ids=input_ids, attention_mask=(input_ids != 0).long(), generation_config=config
            )
            generations += output.tolist()
            references += [labels[i] for i in rows]
    model.train()
    return sequence_metrics(generations, references, 0, 2)["exact_match"]


def teacher_forced_exact_match_of(model, split, batch_size: int) -> float:
    """Greedy exact match from teacher-forced forwards, as train.py scores its evaluations during training
    (train/evaluation.py: the same figure as generating, at the cost of one forward per batch)."""
    inputs, labels = split["input_ids"], split["labels"]
    order = sorted(range(len(inputs)), key=lambda index: len(inputs[index]))
    model.eval()
    right = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, targets = pad_batch([inputs[i] for i in rows], 0), pad_batch([labels[i] for i in rows], -100)
            logits = model(input_ids=input_ids, attention_mask=(input_ids != 0).long(), labels=targets).logits
            right += teacher_forced_exact_match(logits.argmax(-1).numpy(), targets.numpy())["exact_match"] * len(rows)
    model.train()
    return right / len(order)


def train_side_by_side(models: dict, recipe: Recipe, splits, seed: int, budget_s: float, target: float) -> dict:
    """Train each model with the recipe on the same batches until its validation exact match reaches `target`
    (checked every `eval_steps`), `max_steps` pass or its training time exceeds `budget_s`; models alternate every
    interval. Returns, per model, the curve and the training time and steps at the target."""
    train_split = splits["train"]
    inputs, labels = train_split["input_ids"], train_split["labels"]
    # train.py's order of batches: its length curriculum for the first steps, then uniform draws from all lengths,
    # grouped by length where the recipe groups them.
    curriculum_steps = data.curriculum_step_count(recipe.length_curriculum_steps or 0, recipe.max_steps)
    order = data.length_curriculum(list(map(len, inputs)), recipe.per_device_train_batch_size, recipe.max_steps,
                                   curriculum_steps, seed, grouping_batches=recipe.length_grouping_batches or 1)  # fmt: skip
    batch_size = recipe.per_device_train_batch_size

    def batch_at(step: int) -> dict:
        rows = order[step * batch_size : (step + 1) * batch_size]
        input_ids = pad_batch([inputs[i] for i in rows], 0)
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(),
                "labels": pad_batch([labels[i] for i in rows], -100)}  # fmt: skip

    state = {}
    for name, model in models.items():
        model.train()
        # Unfused AdamW, as the figures in bench/README.md were measured; the bias tables at the recipe's scale, as
        # train.py's Trainer sets them (a model without them: none).
        scale = recipe.position_bias_learning_rate_scale or 1.0
        optimizer = make_optimizer(
            model, recipe.learning_rate, recipe.weight_decay, fused=False, bias_table_scale=scale
        )
        warmup = recipe.warmup_steps if recipe.warmup_steps >= 1 else math.ceil(recipe.warmup_steps * recipe.max_steps)
        scheduler = transformers.get_scheduler(recipe.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                               num_training_steps=recipe.max_steps)  # fmt: skip
        state[name] = {"optimizer": optimizer, "scheduler": scheduler, "train_s": 0.0, "eval_s": 0.0, "curve": [],
                       "reached": None, "stopped": False}  # fmt: skip
    interval = recipe.eval_steps
    for start in range(0, recipe.max_steps, interval):
        names = list(models) if (start // interval) % 2 == 0 else list(models)[::-1]
        for name in names:
            model, run = models[name], state[name]
            if run["stopped"]:
                continue
            begin = time.perf_counter()
            for step in range(start, min(start + interval, recipe.max_steps)):
                model(**batch_at(step)).loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                run["optimizer"].step()
                run["scheduler"].step()
                run["optimizer"].zero_grad(set_to_none=True)
            run["train_s"] += time.perf_counter() - begin
            begin = time.perf_counter()
            score = teacher_forced_exact_match_of(model, splits["validation"], recipe.per_device_eval_batch_size)
            run["eval_s"] += time.perf_counter() - begin
            steps = min(start + interval, recipe.max_steps)
            run["curve"].append({"step": steps, "train_s": run["train_s"], "validation_exact_match": score})
            if target and score >= target and run["reached"] is None:  # a target of 0 (or None) is off, as in train.py
                run["reached"] = {"step": steps, "train_s": run["train_s"]}
            run["stopped"] = run["reached"] is not None or run["train_s"] > budget_s
        if all(run["stopped"] for run in state.values()):
            break
    return {
        name: {
            **{key: run[key] for key in ("curve", "reached", "train_s", "eval_s")},
            "steps": run["curve"][-1]["step"] if run["curve"] else 0,
        }
        for name, run in state.items()
    }


def task_splits(recipe: Recipe, seed: int, test_size: int, longer: list[tuple[int, int]] = (), families: int = 0):
    """The task's corpus as train.py builds it (tokenized), plus held-out test splits of other lengths and, with
    `families`, up to that many typed inputs of each family (typed_inputs.py) at each length range ("<family> 1-25")."""
    tokenizer = data.build_tokenizer()
    corpus = data.build_corpus(recipe.task, seed=seed, train_size=recipe.train_size,
                               validation_size=recipe.validation_size, test_size=test_size,
                               min_length=recipe.min_length, max_length=recipe.max_length,
                               repeated_values_share=recipe.repeated_values_share or 0.0)  # fmt: skip
    splits = dict(data.tokenize_corpus(corpus, tokenizer))
    for shortest, longest in longer:
        extra = data.build_corpus(recipe.task, seed=seed, train_size=1, validation_size=1, test_size=test_size,
                                  min_length=shortest, max_length=longest)  # fmt: skip
        splits[f"{shortest}-{longest}"] = data.tokenize_corpus(extra, tokenizer)["test"]
    for shortest, longest in [(recipe.min_length, recipe.max_length), *longer] if families else ():
        typed = build_typed_inputs(recipe.task, seed, families, shortest, longest)
        for family, split in data.tokenize_corpus(typed, tokenizer).items():
            splits[f"{family} {shortest}-{longest}"] = split
    return len(tokenizer), splits


def benchmark_bart(tasks: list[str], seeds: list[int], budget_s: float, test_size: int) -> tuple[dict, str]:
    """Ours and BART on the length-50 tasks with train.py's recipe: time to the validation target, and the test
    exact match reached (or the best within the budget)."""
    report = {}
    for task in tasks:
        recipe = Recipe.for_task(task)
        runs = []
        for seed in seeds:
            vocab_size, splits = task_splits(recipe, seed, test_size)
            models = {name: recipe_model(name, recipe, vocab_size, seed) for name in MODEL_NAMES}
            result = train_side_by_side(models, recipe, splits, seed, budget_s, recipe.target_exact_match)
            longest = data.target_length(task, recipe.max_length) + 1
            for name, model in models.items():
                result[name]["test_exact_match"] = exact_match(model, splits["test"], longest, 250)
                result[name]["best_validation"] = max(p["validation_exact_match"] for p in result[name]["curve"])
            runs.append({"seed": seed, **result})
            print(
                f"  {task} seed {seed}: "
                + ", ".join(f"{name} {describe_reached(result[name])}" for name in MODEL_NAMES),
                file=sys.stderr,
                flush=True,
            )
        report[task] = {"runs": runs, "recipe": {"file": recipe.recipe, "overrides": recipe.recipe_overrides}}
        for name in MODEL_NAMES:
            report[task][name] = {
                "train_s": median_or_never([run[name]["reached"] and run[name]["reached"]["train_s"] for run in runs]),
                "steps": median_or_never([run[name]["reached"] and run[name]["reached"]["step"] for run in runs]),
                "seeds_reached": sum(run[name]["reached"] is not None for run in runs),
                "test_exact_match": statistics.median(run[name]["test_exact_match"] for run in runs),
            }
    rows = [("task (length 1-50, same recipe)", "ours: time / steps to target", "ours test EM",
             "BART: time / steps to target", "BART test EM", "ours/BART time")]  # fmt: skip
    for task, result in report.items():
        cells = []
        for name in MODEL_NAMES:
            figures = result[name]
            reached = f" ({figures['seeds_reached']}/{len(seeds)} seeds)"
            cells += [f"{figures['train_s']:.0f} s / {figures['steps']:.0f}{reached}" if figures["train_s"] else
                      f"not within {budget_s:.0f} s{reached}", f"{figures['test_exact_match']:.1%}"]  # fmt: skip
        ratio = result["ours"]["train_s"] / result["bart"]["train_s"] if result["bart"]["train_s"] else None
        rows.append((task, *cells, f"{ratio:.2f}x" if ratio and result["ours"]["train_s"] else ""))
    return report, text_table(rows)


def describe_reached(run: dict) -> str:
    if run["reached"]:
        return f"target at step {run['reached']['step']} ({run['reached']['train_s']:.0f} s)"
    return f"best validation {run['best_validation']:.1%} in {run['train_s']:.0f} s"


# Trained on the first range, tested on it and on the longer ones (up to twice and four times its longest): integers
# per sequence, or for add digits per operand (the sum's columns).
LENGTH_RANGES = {"copy": [(1, 25), (26, 50), (51, 100)], "reverse": [(1, 25), (26, 50), (51, 100)],
                 "sort": [(1, 25), (26, 50), (51, 100)], "add": [(1, 10), (11, 20), (21, 40)]}  # fmt: skip
# --smoke: a model of a few thousand parameters, a few steps and examples; checks that the script runs.
SMOKE = dict(d_model=16, encoder_layers=1, decoder_layers=1, num_attention_heads=2, ffn_dim=32, train_size=300,
             validation_size=10, max_steps=4, eval_steps=2)  # fmt: skip
# label -> (our position scheme, or None for BART; whether a relative bias sharpens past the training lengths, as
# train.py's models do: relative_attention_reference_length)
LENGTH_MODELS = {"ours, sinusoidal": ("sinusoidal", False), "ours, learned": ("learned", False),
                 "ours, relative": ("relative", True), "ours, relative, bias not scaled": ("relative", False),
                 "BART (learned)": (None, False)}  # fmt: skip


def benchmark_length(
    tasks: list[str], seed: int, budget_s: float, test_size: int, max_steps: int, families: int, smoke: bool = False
) -> tuple[dict, str]:
    """Trained on the task's first length range (LENGTH_RANGES: 1-25, add 1-10 digits) with its recipe (to the
    validation target, at most `max_steps` steps: a budget in steps, so that the figures do not depend on the machine's
    speed or load), tested on held-out sources of that range and of the longer ones (26-50 and 51-100; add 11-20 and
    21-40), uniform and, for the sequence tasks, of each typed-input family."""
    report = {}
    for task in tasks:
        (_, trained_longest), *longer = LENGTH_RANGES[task]
        overrides = {
            "max_length": trained_longest,
            "max_position_embeddings": 128,
            "max_steps": max_steps,
            **(SMOKE if smoke else {}),
        }
        recipe = Recipe.for_task(task, **overrides)
        vocab_size, splits = task_splits(recipe, seed, test_size, longer, families if task in SEQUENCE_TASKS else 0)
        report[task] = {}
        for label, (scheme, scaled) in LENGTH_MODELS.items():
            name = "bart" if scheme is None else "ours"
            model = recipe_model(name, recipe, vocab_size, seed, position_embedding_type=scheme)
            if scaled:
                model.config.relative_attention_reference_length = max(data.input_lengths(splits["train"]))
            result = train_side_by_side({name: model}, recipe, splits, seed, budget_s, recipe.target_exact_match)[name]
            trained = f"1-{trained_longest}"
            scores = {trained: exact_match(model, splits["test"], data.target_length(task, trained_longest) + 1, 250)}
            for split_name, split in splits.items():
                if split_name[0].isdigit() or " " in split_name:  # "26-50", "one_value 1-25", ...
                    longest = int(split_name.split("-")[-1])
                    scores[split_name] = exact_match(model, split, data.target_length(task, longest) + 1, 100)
            # Without a target (0: off, as in train.py) every step of the budget is trained.
            steps = (
                result["steps"] if not recipe.target_exact_match else result["reached"] and result["reached"]["step"]
            )
            report[task][label] = {
                "exact_match": scores, "reached": result["reached"], "steps": steps, "train_s": result["train_s"]
            }  # fmt: skip
            print(f"  {task}, {label}: {scores}", file=sys.stderr, flush=True)
    rows = [("task, model, lengths trained", "steps trained", "test, lengths trained", "longer, to 2x", "2x to 4x")]
    family_rows = [("task, model, lengths", *FAMILIES)]
    for task, models in report.items():
        ranges = [f"{shortest}-{longest}" for shortest, longest in LENGTH_RANGES[task]]
        families_tested = families and task in SEQUENCE_TASKS
        for label, result in models.items():
            steps = result["steps"] or "target not reached"
            scores = result["exact_match"]
            rows.append((f"{task}, {label}, {ranges[0]}", steps, *(f"{key}: {scores[key]:.1%}" for key in ranges)))
            for lengths in ranges if families_tested else ():
                cells = (scores.get(f"{family} {lengths}") for family in FAMILIES)
                family_rows.append((f"{task}, {label}, {lengths}", *("-" if c is None else f"{c:.1%}" for c in cells)))
    tables = text_table(rows) + (
        f"\n\nTyped inputs (exact match per family):\n{text_table(family_rows)}" if len(family_rows) > 1 else ""
    )
    return report, tables


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=["commands", "ablation", "bart", "length"])
    parser.add_argument(
        "--tasks",
        help="comma-separated built-in tasks (default: copy, reverse, sort; length: and add; ablation: the default task)",
    )
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds (default 42,43,44)")
    parser.add_argument(
        "--budget", type=float, default=600.0, help="training seconds per model and seed (bart, length)"
    )
    parser.add_argument("--test_size", type=int, default=1000, help="test examples per length range (bart, length)")
    parser.add_argument("--max_steps", type=int, default=1000, help="training steps per model at most (length)")
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument(
        "--typed_inputs", type=int, default=100, help="typed inputs per family and length range (length; 0: none)"
    )
    parser.add_argument(
        "--variants", help="ablation: comma-separated places of the variants to run (1 = the first after the recipe)"
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISION_FLAGS),
        default="recipe",
        help="commands: force float32 or bf16 (--bf16 false / true) instead of the recipe's choice",
    )
    parser.add_argument("--smoke", action="store_true", help="length: a tiny model, a few steps (checks the script)")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if args.tasks is None:
        tasks = {"ablation": [DEFAULT_TASK], "length": list(LENGTH_RANGES)}.get(args.section, list(TASKS))
    else:
        tasks = args.tasks.split(",")
    if args.section == "ablation":
        for task in tasks:
            try:
                variants = ablation_variants(task)  # an ablation that does not exist fails before any run
            except ValueError as error:
                parser.error(str(error))
            for place in (args.variants or "").split(",") if args.variants else ():
                if not place.isdigit() or not 1 <= int(place) < len(variants):
                    parser.error(f"--variants: {place!r} is not a place of {task}'s variants, 1-{len(variants) - 1}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    report = Report(args.section)
    if args.section == "commands":
        report["commands"], table = benchmark_commands(tasks, seeds, args.precision)
    elif args.section == "ablation":
        only = [int(place) for place in args.variants.split(",")] if args.variants else None
        ablations = {task: benchmark_ablation(task, seeds, only) for task in tasks}
        report["ablation"] = {task: ablation for task, (ablation, _) in ablations.items()}
        table = "\n\n".join(text for _, text in ablations.values())
    elif args.section == "bart":
        report["bart"], table = benchmark_bart(tasks, seeds, args.budget, args.test_size)
    else:
        test_size = 10 if args.smoke else args.test_size
        report["length"], table = benchmark_length(
            tasks, seeds[0], args.budget, test_size, args.max_steps, 5 if args.smoke else args.typed_inputs, args.smoke
        )
    report.finish(table, f"section {args.section}, seeds {args.seeds}", args.output)
    return report


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
