#!/usr/bin/env python
"""The comparison with transformers' BART at the same size: training and generation speed, and memory, of
TinyTransformer and `BartForConditionalGeneration`.

    python -m bench.compare_with_bart --quick                               # a few minutes: small size, few repeats
    python -m bench.compare_with_bart --output bench/results/cpu-fp32.json  # the full table (~10 min, 2 quiet cores)

Every figure is a ratio measured in this run against `BartForConditionalGeneration` configured to the same d_model,
layers, heads, feed-forward width, vocabulary and sequence lengths, on the same inputs. The two models alternate
(ours, BART, then BART, ours, ...) so that machine noise hits both, and each figure is the median of the repeats.
Peak memory is measured in a fresh process per model and workload. The device is chosen automatically: CUDA in
bf16 (autocast for training) with SDPA, or flash attention when `flash_attn` is installed; otherwise CPU in fp32.

The script prints and writes JSON; it never asserts a target (see bench/README.md for the targets).
"""

import argparse
import gc
import multiprocessing
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig
from transformers.utils import is_flash_attn_2_available

from bench.common import (
    BOS,
    EOS,
    FIRST_ORDINARY_ID,
    MODEL_NAMES,
    PAD,
    Report,
    alternate,
    build_model,
    make_optimizer,
    summarize,
    text_table,
)
from hf_tiny_transformer import TinyTransformerConfig


@dataclass(frozen=True)
class Size:
    """One model size; both models get exactly these dimensions."""

    name: str
    d_model: int
    layers: int  # encoder layers = decoder layers
    heads: int
    ffn_dim: int
    vocab_size: int = 128
    max_positions: int = 256  # enough for 256 generated tokens
    dropout: float = 0.1  # both libraries' default


# train.py's model: TinyTransformerConfig's default size, the one place it is written.
_DEFAULT = TinyTransformerConfig()
SMALL = Size(
    "small", d_model=_DEFAULT.d_model, layers=_DEFAULT.encoder_layers, heads=_DEFAULT.num_attention_heads,
    ffn_dim=_DEFAULT.ffn_dim,
)  # fmt: skip
MEDIUM = Size("medium", d_model=512, layers=6, heads=8, ffn_dim=2048)
# `--smoke`: every measurement once on a model of a few thousand parameters, to check that the script runs.
TINY = Size("tiny", d_model=16, layers=1, heads=2, ffn_dim=32, vocab_size=32, max_positions=300)
SIZES = {size.name: size for size in (SMALL, MEDIUM, TINY)}


# ----------------------------------------------------------------------------------------------------------- setup
@dataclass(frozen=True)
class Device:
    type: str
    dtype: torch.dtype  # of generation weights and of the training autocast
    attn_implementation: str

    @property
    def autocast(self):
        return torch.autocast(self.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


def pick_device(requested: str | None, attn_implementation: str | None = None) -> Device:
    device_type = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        attn = attn_implementation or ("flash_attention_2" if is_flash_attn_2_available() else "sdpa")
        return Device("cuda", torch.bfloat16, attn)
    return Device(device_type, torch.float32, attn_implementation or "sdpa")


def synchronize(device: Device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_models(
    size: Size, device: Device, seed: int = 0, position_embedding_type: str = "learned"
) -> dict[str, torch.nn.Module]:
    """Ours and BART of `size` (bench.common.build_model), each with the device's attention, on the device."""
    models = {}
    for name in MODEL_NAMES:
        model = build_model(
            name, vocab_size=size.vocab_size, d_model=size.d_model, encoder_layers=size.layers,
            decoder_layers=size.layers, num_attention_heads=size.heads, ffn_dim=size.ffn_dim,
            max_position_embeddings=size.max_positions, dropout=size.dropout,
            position_embedding_type=position_embedding_type, seed=seed,
        )  # fmt: skip
        model.set_attn_implementation(device.attn_implementation)
        models[name] = model.to(device.type)
    return models


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())  # tied matrices count once


def random_ids(batch: int, length: int, vocab_size: int, device: Device, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_ORDINARY_ID, vocab_size, (batch, length), generator=generator).to(device.type)


def paired_speedup(seconds: dict[str, list[float]]) -> float:
    """Median over repeats of BART's time / ours, each repeat's two runs back to back: a slow spell of the machine
    lasting a few seconds then shifts both runs of a pair instead of one model's median."""
    return statistics.median(bart / ours for ours, bart in zip(seconds["ours"], seconds["bart"]))


# ----------------------------------------------------------------------------------------------------- throughput
def matmul_peak_flops(device: Device, quick: bool) -> dict:
    """FLOP/s of a large square torch.matmul in the benchmark's dtype (fp32 on CPU): the machine's practical peak."""
    n = 8192 if device.type == "cuda" else (1024 if quick else 2048)
    a = torch.randn(n, n, device=device.type, dtype=device.dtype)
    b = torch.randn(n, n, device=device.type, dtype=device.dtype)
    seconds = alternate({"matmul": lambda: torch.matmul(a, b)}, 5 if quick else 9, lambda: synchronize(device))[
        "matmul"
    ]
    return {"n": n, "dtype": str(device.dtype), "flops_per_s": 2 * n**3 / statistics.median(seconds)}


def training_flops_per_step(size: Size, batch: int, source_length: int, target_length: int) -> float:
    """Forward + backward FLOPs of one step, the same for both models: 3 x (2 x every matmul weight x the tokens it
    sees + the attention products QKᵀ and αV, counted in full). This is the usual 6·N per token plus attention."""
    d, f, layers, vocab = size.d_model, size.ffn_dim, size.layers, size.vocab_size
    source_tokens, target_tokens = batch * source_length, batch * target_length
    encoder_weights = layers * (4 * d * d + 2 * d * f)  # Q K V O, W_1 W_2
    decoder_weights = layers * (6 * d * d + 2 * d * f) + d * vocab  # self Q K V O, cross Q O, W_1 W_2, LM head
    cross_key_value_weights = layers * 2 * d * d  # cross-attention K V, applied to the encoder states
    matmul = 2 * (source_tokens * (encoder_weights + cross_key_value_weights) + target_tokens * decoder_weights)
    attention = 4 * d * batch * layers * (source_length**2 + target_length**2 + target_length * source_length)
    return 3.0 * (matmul + attention)


def training_step_function(model, device: Device, inputs: dict, optimizer: torch.optim.Optimizer):
    def step():
        with device.autocast:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def benchmark_training(
    size: Size, device: Device, peak: float, repeats: int, batch=32, length=64, clock: str = "wall", warmup: int = 1
) -> dict:
    models = build_models(size, device)
    source = random_ids(batch, length, size.vocab_size, device, seed=1)
    inputs = {
        "input_ids": source,
        "attention_mask": torch.ones_like(source),
        "labels": random_ids(batch, length, size.vocab_size, device, seed=2),
    }
    steps = {}
    for name, model in models.items():
        model.train()
        steps[name] = training_step_function(model, device, inputs, make_optimizer(model))
    seconds = alternate(steps, repeats, lambda: synchronize(device), warmup=warmup, clock=clock)
    flops = training_flops_per_step(size, batch, length, length)
    result = {"size": size.name, "batch": batch, "source_length": length, "target_length": length}
    for name in MODEL_NAMES:
        median = statistics.median(seconds[name])
        result[name] = {
            **summarize(seconds[name]),
            "parameters": count_parameters(models[name]),
            "tokens_per_s": batch * 2 * length / median,  # source + target tokens
            "mfu": flops / median / peak,
        }
    result["speedup"] = paired_speedup(seconds)
    return result


# ----------------------------------------------------------------------------------------------------- generation
def generation_config(new_tokens: int, num_beams: int, cache_implementation: str | None = None) -> GenerationConfig:
    """Exactly `new_tokens` tokens (EOS is suppressed until then), greedy or beam search, with the KV cache: generate's
    default (dynamic) or `cache_implementation`."""
    return GenerationConfig(
        cache_implementation=cache_implementation,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        num_beams=num_beams,
        do_sample=False,
        use_cache=True,
        decoder_start_token_id=BOS,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def generate_function(model, source: torch.Tensor, config: GenerationConfig):
    attention_mask = torch.ones_like(source)

    def run():
        with torch.inference_mode():
            output = model.generate(input_ids=source, attention_mask=attention_mask, generation_config=config)
        if output.shape[1] != config.max_new_tokens + 1:  # + the decoder start token
            raise RuntimeError(f"generated {output.shape[1] - 1} tokens, expected {config.max_new_tokens}")

    return run


def prepare_for_generation(models: dict, device: Device, compiled: frozenset = frozenset()) -> None:
    """Eval mode in the device's dtype; the models named in `compiled` get a compiled forward, as transformers
    documents for decoding (`torch.compile(model.forward)`, with a static cache: `config_for`)."""
    for name, model in models.items():
        model.eval()
        if device.dtype != torch.float32:
            model.to(dtype=device.dtype)
        if name in compiled:
            model.forward = torch.compile(model.forward, dynamic=False)


def config_for(name: str, compiled: frozenset, new_tokens: int, num_beams: int, cache: str | None) -> GenerationConfig:
    """generation_config for one model: a static cache where its decoding step is compiled."""
    return generation_config(new_tokens, num_beams, "static" if name in compiled else cache)


def benchmark_generation(
    size: Size,
    device: Device,
    cases: list[tuple[int, int]],
    repeats: int,
    new_tokens=128,
    length=64,
    clock: str = "wall",
    cache_implementation: str | None = None,
    compiled: frozenset = frozenset(),
    warmup: int = 1,
) -> list[dict]:
    """tokens/s for each (batch, num_beams) case; tokens = batch x new tokens (beams are not counted)."""
    models = build_models(size, device)
    prepare_for_generation(models, device, compiled)
    results = []
    for batch, num_beams in cases:
        source = random_ids(batch, length, size.vocab_size, device, seed=3)
        runs = {
            name: generate_function(
                model, source, config_for(name, compiled, new_tokens, num_beams, cache_implementation)
            )
            for name, model in models.items()
        }
        seconds = alternate(runs, repeats, lambda: synchronize(device), warmup=warmup, clock=clock)
        result = {"size": size.name, "batch": batch, "num_beams": num_beams, "new_tokens": new_tokens}
        for name in MODEL_NAMES:
            tokens_per_s = batch * new_tokens / statistics.median(seconds[name])
            result[name] = {**summarize(seconds[name]), "tokens_per_s": tokens_per_s}
        result["speedup"] = paired_speedup(seconds)
        results.append(result)
    return results


def benchmark_per_token_time(
    size: Size,
    device: Device,
    batch: int,
    repeats: int,
    length=64,
    clock: str = "wall",
    cache_implementation: str | None = None,
    compiled: frozenset = frozenset(),
    warmup: int = 1,
) -> dict:
    """Seconds per generated token (greedy, cached) at 32 and 256 new tokens; a cache keeps the ratio near 1."""
    models = build_models(size, device)
    prepare_for_generation(models, device, compiled)
    source = random_ids(batch, length, size.vocab_size, device, seed=4)
    result = {"size": size.name, "batch": batch}
    per_token = {}
    for new_tokens in (32, 256):
        runs = {
            name: generate_function(model, source, config_for(name, compiled, new_tokens, 1, cache_implementation))
            for name, model in models.items()
        }
        seconds = alternate(runs, repeats, lambda: synchronize(device), warmup=warmup, clock=clock)
        for name in MODEL_NAMES:
            per_token[name, new_tokens] = statistics.median(seconds[name]) / new_tokens
    for name in MODEL_NAMES:
        result[name] = {
            "s_per_token_32": per_token[name, 32],
            "s_per_token_256": per_token[name, 256],
            "ratio_256_to_32": per_token[name, 256] / per_token[name, 32],
        }
    return result


# --------------------------------------------------------------------------------------------------------- memory
def rss_bytes(field: str) -> int:
    """This process's `VmRSS` (resident now) or `VmHWM` (peak resident) in bytes, from /proc/self/status. Not
    `ru_maxrss`: the kernel carries the parent's resident size at fork over into it, so every child would report at
    least the (large) parent's."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def peak_memory_child(spec: dict) -> dict:
    """Runs in a fresh process: build one model, run the workload, report peak RSS (and peak CUDA memory)."""
    torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"], spec["attn_implementation"])
    size = SIZES[spec["size"]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_bytes("VmRSS")  # torch and transformers imported, no model yet
    model = build_models(size, device)[spec["model"]]
    if spec["workload"] == "train":
        source = random_ids(32, 64, size.vocab_size, device, seed=1)
        inputs = {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": source}
        model.train()
        step = training_step_function(model, device, inputs, make_optimizer(model))
        for _ in range(2):  # the optimizer state is allocated by the first step
            step()
    else:
        prepare_for_generation({"model": model}, device)
        source = random_ids(spec["batch"], 64, size.vocab_size, device, seed=3)
        generate_function(model, source, generation_config(128, spec["num_beams"]))()
    peak = rss_bytes("VmHWM")
    result = {"peak_rss_bytes": peak, "baseline_rss_bytes": baseline, "peak_rss_delta_bytes": peak - baseline}
    if device.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return result


def benchmark_memory(workloads: list[dict], device: Device, threads: int) -> list[dict]:
    """Peak memory of each workload, ours and BART each in its own fresh (spawned) process, one at a time."""
    context = multiprocessing.get_context("spawn")
    results = []
    for workload in workloads:
        result = dict(workload)
        for name in MODEL_NAMES:
            spec = {
                **workload,
                "model": name,
                "device": device.type,
                "attn_implementation": device.attn_implementation,
                "threads": threads,
            }
            with context.Pool(1) as pool:
                result[name] = pool.apply(peak_memory_child, (spec,))
        key = "peak_cuda_bytes" if device.type == "cuda" else "peak_rss_delta_bytes"
        result["ratio"] = result["ours"][key] / result["bart"][key]
        results.append(result)
    return results


# ------------------------------------------------------------------------------------------------------ reporting
def format_table(report: dict) -> str:
    rows = [("measure", "ours", "BART", "ours/BART", "target")]

    def add(measure, ours, bart, ratio, target=""):
        rows.append((measure, ours, bart, ratio, target))

    for size, counts in report.get("parameters", {}).items():
        ratio = counts["ours"] / counts["bart"]
        add(f"parameters, {size}", f"{counts['ours']:,}", f"{counts['bart']:,}", f"{ratio:.3f}", "within 5%")
    for result in report.get("training", []):
        add(
            f"training tokens/s, {result['size']} (b32, 64+64)",
            f"{result['ours']['tokens_per_s']:,.0f}",
            f"{result['bart']['tokens_per_s']:,.0f}",
            f"{result['speedup']:.2f}x",
            ">= 1.25x",
        )
        add(
            f"training MFU, {result['size']}",
            f"{result['ours']['mfu']:.1%}",
            f"{result['bart']['mfu']:.1%}",
            f"{result['ours']['mfu'] / result['bart']['mfu']:.2f}x",
        )
    for result in report.get("generation", []):
        kind = "greedy" if result["num_beams"] == 1 else f"{result['num_beams']}-beam"
        add(
            f"generation tokens/s, {result['size']}, {kind}, batch {result['batch']}",
            f"{result['ours']['tokens_per_s']:,.0f}",
            f"{result['bart']['tokens_per_s']:,.0f}",
            f"{result['speedup']:.2f}x",
            ">= 1.25x" if kind == "greedy" else "",
        )
    for result in report.get("per_token", []):
        add(
            f"per-token time 256 / 32 tokens, {result['size']}, batch {result['batch']}",
            f"{result['ours']['ratio_256_to_32']:.2f}",
            f"{result['bart']['ratio_256_to_32']:.2f}",
            "",
            "<= 1.5 (ours)",
        )
        milliseconds = {
            name: f"{result[name]['s_per_token_32'] * 1e3:.2f} / {result[name]['s_per_token_256'] * 1e3:.2f}"
            for name in MODEL_NAMES
        }
        add("  ms per token at 32 / at 256", milliseconds["ours"], milliseconds["bart"], "")
    for result in report.get("memory", []):
        if result["workload"] == "train":
            what = f"peak memory, training {result['size']}"
        else:
            what = f"peak memory, generation {result['size']} b{result['batch']} beams {result['num_beams']}"
        key = "peak_cuda_bytes" if "peak_cuda_bytes" in result["ours"] else "peak_rss_delta_bytes"
        unit = "CUDA" if key == "peak_cuda_bytes" else "RSS over baseline"
        add(
            f"{what} ({unit}), MiB",
            f"{result['ours'][key] / 2**20:,.0f}",
            f"{result['bart'][key] / 2**20:,.0f}",
            f"{result['ratio']:.2f}x",
            "<= 1.00x" if result["workload"] == "train" else "",
        )
    return text_table(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small size only, few repeats")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model, one repeat, no untimed run first: checks that the script runs",
    )
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time each run by the wall clock (default) or by this process's CPU time, which on a shared machine "
        "leaves out the time other jobs held the core (use with --threads 1; CPU only)",
    )
    parser.add_argument(
        "--cache_implementation",
        choices=["static"],
        help="the generation rows with this cache for both models (default: generate's own, a dynamic cache)",
    )
    parser.add_argument(
        "--compile_decoding",
        choices=["ours", "both"],
        help="compile the decoding step (`torch.compile(model.forward)` with a static cache, as transformers documents "
        "it) of ours, or of both models; a model not compiled runs as the other flags say (default: neither)",
    )
    parser.add_argument(
        "--attn_implementation",
        choices=["sdpa", "eager", "flash_attention_2"],
        help="attention of both models (default: flash_attention_2 on CUDA where flash_attn is installed, else sdpa)",
    )
    parser.add_argument(
        "--sections",
        default="training,generation,memory",
        help="comma-separated subset of: training, generation, memory",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.device == "cuda":
        parser.error("--clock cpu times CPU work only; CUDA runs need the wall clock")
    compiled = frozenset({"ours": ["ours"], "both": MODEL_NAMES, None: []}[args.compile_decoding])
    sections = set(args.sections.split(","))
    unknown = sections - {"training", "generation", "memory"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    transformers.logging.set_verbosity_error()
    device = pick_device(args.device, args.attn_implementation)
    quick = args.quick or args.smoke
    sizes = [TINY] if args.smoke else [SMALL] if quick else [SMALL, MEDIUM]
    # Shapes of the inputs: the benchmark's own, or a few tokens for --smoke.
    training_shape = {"batch": 2, "length": 6} if args.smoke else {}
    generation_shape = {"new_tokens": 4, "length": 6} if args.smoke else {}
    # Each timed run follows one untimed run of each model (lazy initialisation, allocator growth); --smoke times the
    # first runs themselves: it checks that every measurement is made, and half of its work was the untimed runs.
    warmup = 0 if args.smoke else 1
    report = Report(
        "smoke" if args.smoke else "quick" if quick else "full",
        device={"type": device.type, "dtype": str(device.dtype), "attn_implementation": device.attn_implementation},
    )
    progress = report.progress

    report["parameters"] = {}
    for size in sizes:
        models = build_models(size, device)
        report["parameters"][size.name] = {name: count_parameters(model) for name, model in models.items()}
    if "training" in sections:
        progress("matmul peak")
        report["matmul_peak"] = matmul_peak_flops(device, quick)
        report["training"] = []
        for size in sizes:
            progress(f"training, {size.name}")
            repeats = 1 if args.smoke else 5 if quick else (9 if size is SMALL else 4)
            peak = report["matmul_peak"]["flops_per_s"]
            report["training"].append(
                benchmark_training(size, device, peak, repeats, **training_shape, clock=args.clock, warmup=warmup)
            )
    if "generation" in sections:
        report["generation"], report["per_token"] = [], []
        for size in sizes:
            progress(f"generation, {size.name}")
            cases = [(1, 1), (32, 1), (1, 4), (32, 4)] if size is not MEDIUM else [(1, 1), (32, 1)]
            repeats = 1 if args.smoke else 3 if quick or size is MEDIUM else 11
            report["generation"] += benchmark_generation(
                size, device, cases, repeats, **generation_shape, clock=args.clock,
                cache_implementation=args.cache_implementation, compiled=compiled, warmup=warmup,
            )  # fmt: skip
        progress("per-token time at 32 and 256 tokens")
        repeats = 1 if args.smoke else 3 if quick else 9
        report["per_token"].append(
            benchmark_per_token_time(
                sizes[0],
                device,
                batch=1,
                repeats=repeats,
                clock=args.clock,
                cache_implementation=args.cache_implementation,
                compiled=compiled,
                warmup=warmup,
            )  # fmt: skip
        )
    if "memory" in sections:
        progress("peak memory (one fresh process per model and workload)")
        workloads = [{"workload": "train", "size": size.name} for size in sizes]
        workloads.append({"workload": "generate", "size": sizes[-1].name, "batch": 32, "num_beams": 1})
        report["memory"] = benchmark_memory(workloads, device, torch.get_num_threads())
    cache = args.cache_implementation or "dynamic"
    decoding = f", decoding step compiled with a static cache: {', '.join(sorted(compiled))}" if compiled else ""
    workload = (
        f"{device.type} {report['device']['dtype']}, attention {device.attn_implementation}, {cache} cache, "
        f"{args.clock} clock{decoding}"
    )
    report.finish(format_table(report), workload, args.output)
    return report


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
