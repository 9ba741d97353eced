#!/usr/bin/env python
"""Greedy decoding on ONNX Runtime (hf_tiny_transformer/onnx_tiny_transformer.py) against `model.generate`.

    python -m bench.onnx_runtime [--threads 1] [--repeats 15] [--output report.json]
    python -m bench.onnx_runtime --model outputs/reverse --task reverse    # + the task's whole test split
    python -m bench.onnx_runtime --model outputs/reverse --onnx outputs/reverse-onnx   # an export made already

The model is exported once (with `--onnx`, not at all: its export made already by export_onnx or the command line is
used); each row then times greedy decoding of the same random inputs (`--source_length` tokens, exactly `--new_tokens`
new ones: eos is switched off on both sides) with `model.generate` and with the ONNX Runtime generator, the two
alternating (bench.common.alternate), and prints tokens/s (new tokens per second, medians) and their ratio (ONNX
Runtime / generate); the timed runs' tokens are compared too. The model is a trained folder (`--model`) or a random
one of TinyTransformerConfig's default size. With `--task`, every example of the task's test split (train.py's recipe
and seed) is decoded both ways with the model's own generation config, batches of `--eval_batch_size` grouped by
length, and the count of sequences whose tokens differ is printed.

torch and ONNX Runtime get the same intra-op threads (`--threads`, default 1, as the other benchmarks; see
bench/README.md, "Noise").
"""

import argparse
import gc
import statistics
import tempfile
from pathlib import Path

import datasets
import numpy as np
import onnxruntime
import torch
import transformers

from bench.common import FIRST_ORDINARY_ID, Report, alternate, summarize, text_table
from bench.learning import Recipe, pad_batch, task_splits
from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
from hf_tiny_transformer.configuration_tiny_transformer import POSITION_EMBEDDING_TYPES
from hf_tiny_transformer.onnx_tiny_transformer import (
    FIRST_STEP_FILE,
    NEXT_STEP_FILE,
    OnnxGreedyGenerator,
    export_onnx,
)

SMOKE = dict(vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1, num_attention_heads=2, ffn_dim=32)


def random_inputs(vocab_size: int, batch_size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids from FIRST_ORDINARY_ID (no special token) of `batch_size` rows of `length`, and an all-ones mask."""
    input_ids = torch.randint(
        FIRST_ORDINARY_ID, vocab_size, (batch_size, length), generator=torch.Generator().manual_seed(batch_size)
    )
    return input_ids, torch.ones_like(input_ids)


def time_decoding(model, generator: OnnxGreedyGenerator, batch_size: int, length: int, new_tokens: int, repeats: int):
    """Seconds of `generate` and of the ONNX Runtime generator, alternating, on the same inputs; both decode exactly
    `new_tokens` tokens (no eos). Returns the row's summary and whether the two gave the same tokens."""
    input_ids, attention_mask = random_inputs(model.config.vocab_size, batch_size, length)
    # No eos on either side (generate() reads an eos_token_id=None argument as "the model's own"), restored after.
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = generator.generation_config.eos_token_id = None
    outputs = {}

    def torch_run():
        with torch.inference_mode():
            outputs["generate"] = model.generate(
                input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens, do_sample=False, num_beams=1
            )

    def onnx_run():
        outputs["onnxruntime"] = generator.generate(input_ids, attention_mask, max_new_tokens=new_tokens)

    seconds = alternate({"generate": torch_run, "onnxruntime": onnx_run}, repeats)
    model.generation_config.eos_token_id = eos
    tokens = batch_size * new_tokens
    ratio = statistics.median(g / o for g, o in zip(seconds["generate"], seconds["onnxruntime"]))
    same = bool(np.array_equal(outputs["generate"].numpy(), outputs["onnxruntime"]))
    return {
        "batch_size": batch_size,
        "source_length": length,
        "new_tokens": new_tokens,
        "generate": summarize(seconds["generate"], tokens),
        "onnxruntime": summarize(seconds["onnxruntime"], tokens),
        "ratio": ratio,
        "same_tokens": same,
    }


def compare_on_test_split(model, generator: OnnxGreedyGenerator, task: str, batch_size: int) -> dict:
    """Decode the task's test split (train.py's recipe and seed) with `generate` and the ONNX Runtime generator, both
    with the model's generation config; count the sequences whose tokens differ."""
    recipe = Recipe.for_task(task)
    _, splits = task_splits(recipe, recipe.seed, recipe.test_size)
    inputs = splits["test"]["input_ids"]
    order = sorted(range(len(inputs)), key=lambda index: len(inputs[index]))
    differing = 0
    for start in range(0, len(order), batch_size):
        input_ids = pad_batch([inputs[index] for index in order[start : start + batch_size]], model.config.pad_token_id)
        attention_mask = (input_ids != model.config.pad_token_id).long()
        with torch.inference_mode():
            expected = model.generate(input_ids, attention_mask=attention_mask).numpy()
        got = generator.generate(input_ids, attention_mask)
        # Rows compared at one width, the shorter padded as generate pads a row that has ended: a batch stops when its
        # last row ends, so one differing row can lengthen it.
        width = max(got.shape[1], expected.shape[1])
        got, expected = (
            np.pad(side, ((0, 0), (0, width - side.shape[1])), constant_values=model.generation_config.pad_token_id)
            for side in (got, expected)
        )
        differing += int((got != expected).any(axis=1).sum())
    return {"task": task, "sequences": len(order), "differing": differing}


def format_table(rows: list[dict]) -> str:
    table = [("greedy decoding", "generate tokens/s", "onnxruntime tokens/s", "onnxruntime / generate", "same tokens")]
    for row in rows:
        table.append((
            f"batch {row['batch_size']}, {row['source_length']} + {row['new_tokens']} tokens",
            f"{row['generate']['tokens_per_s']:,.0f}",
            f"{row['onnxruntime']['tokens_per_s']:,.0f}",
            f"{row['ratio']:.2f}x",
            "yes" if row["same_tokens"] else "NO",
        ))  # fmt: skip
    return text_table(table)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a trained folder (default: a random model of the default size)")
    parser.add_argument(
        "--position_embedding_type",
        choices=POSITION_EMBEDDING_TYPES,
        help="of the random model (default: TinyTransformerConfig's)",
    )
    parser.add_argument("--task", help="with --model: also decode this built-in task's whole test split both ways")
    parser.add_argument(
        "--onnx",
        type=Path,
        help="with --model: its export made already (by export_onnx or `python -m "
        "hf_tiny_transformer.onnx_tiny_transformer`) to decode with, instead of exporting the model here",
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and ONNX Runtime (1)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each (default 15)")
    parser.add_argument("--batch_sizes", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--source_length", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--eval_batch_size", type=int, default=32, help="batch size of the test split's decoding")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and short inputs: checks the script runs")
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.task and not args.model:
        parser.error("--task needs --model (a model trained on that task)")
    if args.onnx and not args.model:
        parser.error("--onnx needs --model (the model it was exported from)")
    if args.onnx and not all((args.onnx / name).is_file() for name in (FIRST_STEP_FILE, NEXT_STEP_FILE)):
        parser.error(
            f"--onnx {args.onnx}: not an export of export_onnx (it lacks {FIRST_STEP_FILE} or {NEXT_STEP_FILE})"
        )
    if args.model and args.position_embedding_type:
        parser.error("--position_embedding_type is for the random model; --model brings its own")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if args.model:
        model = TinyTransformerForConditionalGeneration.from_pretrained(args.model)
    else:
        torch.manual_seed(0)
        sizes = SMOKE if args.smoke else {}
        if args.position_embedding_type:
            sizes = {**sizes, "position_embedding_type": args.position_embedding_type}
        model = TinyTransformerForConditionalGeneration(TinyTransformerConfig(**sizes))
    model.eval()
    length, new_tokens = (6, 4) if args.smoke else (args.source_length, args.new_tokens)
    report = Report(
        "smoke" if args.smoke else "full",
        model=str(args.model) if args.model else "random, " + ("smoke size" if args.smoke else "default size"),
        position_embedding_type=model.config.position_embedding_type,
        onnx=str(args.onnx) if args.onnx else "exported here",
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.onnx
        if folder is None:
            report.progress("export")
            export_onnx(model, temporary)
            folder = temporary
        rows = []
        for batch_size in batch_sizes:
            report.progress(f"batch {batch_size}")
            generator = OnnxGreedyGenerator(folder, intra_op_num_threads=args.threads)
            rows.append(time_decoding(model, generator, batch_size, length, new_tokens, args.repeats))
        report["rows"] = rows
        table = format_table(rows)
        if args.task:
            report.progress(f"{args.task}'s test split")
            split = compare_on_test_split(
                model, OnnxGreedyGenerator(folder, args.threads), args.task, args.eval_batch_size
            )
            report["test_split"] = split
            table += (
                f"\n{split['task']} test split: {split['sequences'] - split['differing']} of {split['sequences']} "
                "sequences decode to generate's tokens"
            )
    workload = (
        f"{report['model']} ({model.config.position_embedding_type} positions), onnxruntime "
        f"{onnxruntime.__version__}, {args.threads} thread(s) each, medians of {args.repeats} runs"
    )
    report.finish(table, workload, args.output)
    return report


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
