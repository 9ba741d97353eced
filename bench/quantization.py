#!/usr/bin/env python
"""torchao's int8 quantization of a trained model: what it keeps of the answers, and its speed, size and memory.

    python -m bench.quantization                                        # trains a short reverse model first
    python -m bench.quantization --model outputs/tiny-transformer-reverse --max_length 50

Rows: the model in float32, and each int8 mode (int8 weights with int8 activations quantized dynamically, and int8
weights only) reached both ways users quantize: `quantize_(model, config)` on a loaded model (every `nn.Linear`,
the output layer included) and `from_pretrained(folder, quantization_config=TorchAoConfig(config))` (transformers
leaves the output layer, tied to the embeddings, in float32). Columns:
- test exact match: greedy `generate` on the task's held-out test split against its targets, and the share of test
  answers identical to float32's;
- greedy tokens/s at batch 1 and 32: exactly --new_tokens tokens per sequence from test sources, the variants
  alternating (bench.common.alternate), medians of --repeats, and the ratio to float32;
- size on disk: the weights `save_pretrained` writes (safetensors); where it cannot save the model, `torch.save` of
  the state dict, marked so;
- in memory: the bytes of the parameters and buffers (a quantized weight's int8 values and scales).
A line below the table checks that TorchAoConfig and `quantize_` compute the same model where they quantize the same
layers: `quantize_` without the output layer gives TorchAoConfig's greedy answers on the whole test split.
The script prints and writes JSON (--output); it never asserts.
"""

import argparse
import gc
import tempfile
import warnings
from pathlib import Path

import torch
import transformers
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, TorchAoConfig

from bench.common import SHORT_RUN, SMOKE_RUN, Report, alternate, given_or_short_model, summarize, text_table
from hf_tiny_transformer_train.data import TASKS, generate_examples
from hf_tiny_transformer_train.metrics import generated_answer, sequence_metrics

# torchao's configs by the names the rows use.
MODES = {
    "int8 dynamic activations + int8 weights": "Int8DynamicActivationInt8WeightConfig",
    "int8 weights only": "Int8WeightOnlyConfig",
}
ROUTES = ("quantize_", "TorchAoConfig")
FLOAT32 = "float32"


def torchao_config(mode: str):
    from torchao import quantization

    return getattr(quantization, MODES[mode])()


def load_variant(folder: Path, mode: str | None, route: str | None, output_layer: bool = True):
    """The model of `folder` in float32 (`mode` None) or quantized by `mode` through `route`; `output_layer` False
    leaves the output layer out of `quantize_`, as TorchAoConfig does."""
    if route == "TorchAoConfig":
        config = TorchAoConfig(torchao_config(mode))
        return AutoModelForSeq2SeqLM.from_pretrained(folder, quantization_config=config).eval()
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    if mode is not None:
        from torchao.quantization import quantize_

        def linear(module: torch.nn.Module, name: str) -> bool:
            return isinstance(module, torch.nn.Linear) and (output_layer or name != "lm_head")

        quantize_(model, torchao_config(mode), filter_fn=linear)
    return model.eval()


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; for a tensor subclass (torchao's quantized weights), those of the tensors inside it."""
    if is_traceable_wrapper_subclass(tensor):
        inner_names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in inner_names)
    return tensor.numel() * tensor.element_size()


def memory_bytes(model: torch.nn.Module) -> int:
    """The parameters' and buffers' bytes, a tensor shared by two modules (tied embeddings) counted once."""
    return sum(tensor_bytes(tensor) for tensor in [*model.parameters(), *model.buffers()])


def quantized_linears(model: torch.nn.Module) -> tuple[int, int]:
    """How many `nn.Linear`s hold a torchao tensor as weight, and how many `nn.Linear`s there are."""
    from torchao.utils import TorchAOBaseTensor

    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return sum(isinstance(module.weight, TorchAOBaseTensor) for module in linears), len(linears)


def disk_bytes(model, folder: Path) -> dict:
    """The bytes of the weights `save_pretrained` writes to `folder`; where it fails, of `torch.save(state_dict)`."""
    try:
        with warnings.catch_warnings():
            # torchao's tensors answer transformers' storage check with this notice just before the check fails.
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            model.save_pretrained(folder)
    except Exception as error:  # what a user saving this model meets; reported in the table, measured otherwise
        path = folder.with_suffix(".pt")
        torch.save(model.state_dict(), path)
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return {"bytes": path.stat().st_size, "format": "torch.save", "save_pretrained_error": reason}
    return {"bytes": sum(path.stat().st_size for path in folder.glob("*.safetensors")), "format": "safetensors"}


def held_out_test_split(task: str, size: int, min_length: int, max_length: int, tokenizer, seed: int = 0) -> dict:
    """The task's held-out test examples (the split that train.py tests on, whatever seed trained the model: each
    source belongs to one split), tokenized."""
    examples = list(generate_examples(task, "test", size, min_length, max_length, seed))
    sources = [example["source"] for example in examples]
    return {
        "sources": sources,
        "labels": tokenizer(text_target=[example["target"] for example in examples])["input_ids"],
    }


def greedy_answers(model, tokenizer, sources: list[str], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """`generate`'s greedy output rows (decoder start token first) for every source."""
    rows = []
    for start in range(0, len(sources), batch_size):
        inputs = tokenizer(sources[start : start + batch_size], padding=True, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        rows.extend(output.tolist())
    return rows


def same_answers(rows: list[list[int]], reference_rows: list[list[int]], eos_token_id: int) -> float:
    """The share of `generate` rows whose answer (up to and including </s>) is the reference row's."""
    same = [
        generated_answer(row, eos_token_id).tolist() == generated_answer(reference, eos_token_id).tolist()
        for row, reference in zip(rows, reference_rows, strict=True)
    ]
    return sum(same) / len(same)


def timed_generation(model, tokenizer, sources: list[str], new_tokens: int):
    """A call that generates exactly `new_tokens` tokens greedily for `sources` (one batch)."""
    inputs = tokenizer(sources, padding=True, return_tensors="pt")
    config = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
        decoder_start_token_id=model.config.decoder_start_token_id, bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id,
    )  # fmt: skip

    def run():
        with torch.inference_mode():
            model.generate(**inputs, generation_config=config)

    return run


def table(rows: list[dict], batch_sizes: list[int]) -> str:
    reference = rows[0]
    header = ["model", "int8 linears", "test exact match", "same as float32"]
    for batch in batch_sizes:
        header += [f"tokens/s b{batch}", "x float32"]
    header += ["on disk", "x float32", "in memory", "x float32"]
    lines = [tuple(header)]
    for row in rows:
        cells = [row["name"], f"{row['quantized_linears']}/{row['linears']}", f"{row['test_exact_match']:.3f}",
                 f"{row['same_as_float32']:.3f}"]  # fmt: skip
        for batch in batch_sizes:
            speed = row["generation"][str(batch)]["tokens_per_s"]
            cells += [f"{speed:,.0f}", f"{speed / reference['generation'][str(batch)]['tokens_per_s']:.2f}"]
        marker = "" if row["disk"]["format"] == "safetensors" else " *"
        cells += [f"{row['disk']['bytes'] / 1e6:.2f} MB{marker}", f"{row['disk']['bytes'] / reference['disk']['bytes']:.2f}",
                  f"{row['memory_bytes'] / 1e6:.2f} MB", f"{row['memory_bytes'] / reference['memory_bytes']:.2f}"]  # fmt: skip
        lines.append(tuple(cells))
    text = text_table(lines)
    failures = {row["disk"]["save_pretrained_error"] for row in rows if "save_pretrained_error" in row["disk"]}
    for failure in sorted(failures):
        text += f"\n* save_pretrained fails ({failure}); the size is torch.save's of the state dict"
    return text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a trained model folder (default: train a short reverse model)")
    parser.add_argument("--task", default="reverse", choices=list(TASKS), help="the model's task: its test split")
    parser.add_argument("--min_length", type=int, help="shortest test source (default: the short run's, 1)")
    parser.add_argument("--max_length", type=int, help="longest test source (default: the short run's, 20)")
    parser.add_argument("--test_size", type=int, help="test examples (default: the short run's, 500)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per sequence when timing")
    parser.add_argument("--batch_sizes", default="1,32", help="comma-separated batch sizes timed")
    parser.add_argument("--repeats", type=int, default=7, help="timed generations per variant and batch size")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads, here and in the training run (default: torch's)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny model, one repeat: checks the script runs")
    parser.add_argument("--output", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    run = SMOKE_RUN if args.smoke else SHORT_RUN
    data = dict(run["data"])
    try:
        for name in ("min_length", "max_length", "test_size"):
            value = getattr(args, name)
            if value is not None:
                if value < 1:
                    raise ValueError(f"--{name} must be at least 1; got {value}")
                data[name] = value
        if data["max_length"] < data["min_length"]:
            raise ValueError(
                f"--max_length ({data['max_length']}) must be at least --min_length ({data['min_length']})"
            )
        try:
            batch_sizes = [int(item) for item in args.batch_sizes.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"--batch_sizes takes comma-separated whole numbers; got {args.batch_sizes!r}") from None
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"--batch_sizes takes whole numbers >= 1; got {args.batch_sizes!r}")
        for name in ("new_tokens", "repeats", "threads"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1; got {value}")
        if args.model is not None and not (args.model / "config.json").is_file():
            raise ValueError(f"--model {args.model}: not a model folder (no config.json)")
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    repeats = 1 if args.smoke else args.repeats
    new_tokens = 4 if args.smoke else args.new_tokens

    report = Report("smoke" if args.smoke else "full", task=args.task, data=data, new_tokens=new_tokens)
    with tempfile.TemporaryDirectory(prefix="quantization-") as scratch:
        scratch = Path(scratch)
        folder = given_or_short_model(args.model, args.task, data, scratch, report, args.smoke, args.threads)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        test = held_out_test_split(args.task, data["test_size"], data["min_length"], data["max_length"], tokenizer)
        longest_answer = max(map(len, test["labels"]))
        variants = {FLOAT32: load_variant(folder, None, None)}
        position_limit = getattr(variants[FLOAT32].config, "position_limit", None)
        if position_limit is not None and new_tokens + 1 > position_limit:
            parser.error(f"--new_tokens {new_tokens}: the model's decoder takes at most {position_limit - 1}")
        for mode in MODES:
            for route in ROUTES:
                variants[f"{mode}, {route}"] = load_variant(folder, mode, route)

        rows, answers = [], {}
        for name, model in variants.items():
            report.progress(f"{name}: test split, size")
            answers[name] = greedy_answers(model, tokenizer, test["sources"], longest_answer, batch_size=250)
            quantized, linears = quantized_linears(model)
            rows.append({
                "name": name,
                "quantized_linears": quantized,
                "linears": linears,
                "test_exact_match": sequence_metrics(
                    answers[name], test["labels"], tokenizer.pad_token_id, tokenizer.eos_token_id
                )["exact_match"],
                "same_as_float32": same_answers(answers[name], answers[FLOAT32], tokenizer.eos_token_id),
                "disk": disk_bytes(model, scratch / name.replace(" ", "-").replace(",", "")),
                "memory_bytes": memory_bytes(model),
                "generation": {},
            })  # fmt: skip

        # Where both routes quantize the same layers, they give the same answers.
        agreement = {}
        for mode in MODES:
            without_output_layer = load_variant(folder, mode, "quantize_", output_layer=False)
            same = answers[f"{mode}, TorchAoConfig"] == greedy_answers(
                without_output_layer, tokenizer, test["sources"], longest_answer, batch_size=250
            )
            agreement[mode] = same
        report["torchao_config_equals_quantize_without_output_layer"] = agreement

        for batch in batch_sizes:
            report.progress(f"timing greedy generation at batch {batch}")
            sources = [test["sources"][index % len(test["sources"])] for index in range(batch)]
            calls = {name: timed_generation(model, tokenizer, sources, new_tokens) for name, model in variants.items()}
            seconds = alternate(calls, repeats)
            for row in rows:
                row["generation"][str(batch)] = summarize(seconds[row["name"]], tokens=batch * new_tokens)

    report["rows"] = rows
    text = table(rows, batch_sizes)
    for mode, same in agreement.items():
        text += (f"\n{mode}: TorchAoConfig's answers {'equal' if same else 'DIFFER FROM'} those of quantize_ with the "
                 f"output layer left out, on all {len(test['sources'])} test sources")  # fmt: skip
    workload = (f"{args.model or f'a short {args.task} model trained here'}, test on {args.task} "
                f"{data['min_length']}-{data['max_length']} ({data['test_size']} sources), timing {new_tokens} new "
                f"tokens, medians of {repeats}")  # fmt: skip
    report.finish(text, workload, args.output)
    return report


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
