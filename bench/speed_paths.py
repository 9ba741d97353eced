#!/usr/bin/env python
"""What each speed path of hf_tiny_transformer/fast_paths_tiny_transformer.py is worth on a path users run.

    python -m bench.speed_paths [--threads 1] [--repeats 15]

Each row times one user path (a training step with the config's default dropout 0.1, greedy generation) with the
speed path and with the plain code it replaces, on the same model and inputs, the two alternating; it prints the
medians and their ratio (plain / ours: above 1 means the speed path pays). The plain variants:
- `F.dropout` instead of the 16-bit CPU dropout (`apply_dropout`);
- transformers' general `prepare_inputs_for_generation` instead of `lean_generation_inputs`;
- SDPA's own bf16 backward instead of the eager attention for bf16 training on a CPU (`sdpa_backward_is_slow`);
- with a static cache (`cache_implementation="static"`), transformers' general `prepare_inputs_for_generation`, whose
  4-D mask over the cache's whole buffer makes every step attend to all of it, instead of the lean inputs, with which
  each eager step attends to the written slots only (`written_slots`);
- generate()'s own dynamic cache with transformers' DynamicLayers, which concatenate the cache at every step, instead of
  PreallocatedDynamicLayers, which write the step in place (`preallocate_generation_cache`).
"""

import argparse
import gc
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
import transformers
from transformers import GenerationConfig, GenerationMixin

import hf_tiny_transformer.modeling_tiny_transformer as modeling
from bench.common import BOS, EOS, FIRST_ORDINARY_ID, PAD, alternate
from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration

SMALL = dict(vocab_size=128, d_model=128, encoder_layers=2, decoder_layers=2, num_attention_heads=4, ffn_dim=512)
SMOKE = dict(vocab_size=32, d_model=16, encoder_layers=1, decoder_layers=1, num_attention_heads=2, ffn_dim=32)


def plain_dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(hidden_states, p=p, training=training) if p > 0.0 else hidden_states


class Patched:
    """Calls `function` with module attributes temporarily replaced: {(module, name): value}."""

    def __init__(self, function: Callable, replacements: dict):
        self.function, self.replacements = function, replacements

    def __call__(self):
        saved = {key: getattr(*key) for key in self.replacements}
        for (owner, name), value in self.replacements.items():
            setattr(owner, name, value)
        try:
            return self.function()
        finally:
            for (owner, name), value in saved.items():
                setattr(owner, name, value)


def training_step(model, batch: int, length: int, bf16: bool = False):
    """One optimizer step on a fixed batch; with `bf16`, under CPU autocast as the Trainer's `--bf16` runs it."""
    source = torch.randint(
        FIRST_ORDINARY_ID, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1)
    )
    inputs = {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": source.flip(1)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generation(model, batch: int, length: int, new_tokens: int, cache_implementation: str | None = None):
    source = torch.randint(
        FIRST_ORDINARY_ID, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(2)
    )
    config = GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, decoder_start_token_id=BOS,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, cache_implementation=cache_implementation,
    )  # fmt: skip
    model.eval()

    def run():
        with torch.inference_mode():
            model.generate(input_ids=source, attention_mask=torch.ones_like(source), generation_config=config)

    return run


def compare(title: str, ours: Callable, plain: Callable, repeats: int, clock: str = "wall") -> dict:
    seconds = alternate({"ours": ours, "plain": plain}, repeats, clock=clock)
    ratio = statistics.median(p / o for o, p in zip(seconds["ours"], seconds["plain"]))
    medians = {name: statistics.median(values) * 1e3 for name, values in seconds.items()}
    print(f"{title:62s} ours {medians['ours']:8.2f} ms   plain {medians['plain']:8.2f} ms   plain/ours {ratio:5.2f}x")
    return {"path": title, "ours_ms": medians["ours"], "plain_ms": medians["plain"], "ratio": ratio}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall clock, or this process's CPU time (shared machines)",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny model and short inputs: checks the script runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    sizes = SMOKE if args.smoke else SMALL
    batch, length, new_tokens = (2, 6, 4) if args.smoke else (32, 64, 128)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"medians of {args.repeats} alternating runs ({args.clock} clock); d_model {sizes['d_model']}, {sizes['encoder_layers']}+"
          f"{sizes['decoder_layers']} layers")  # fmt: skip
    torch.manual_seed(0)
    model = TinyTransformerForConditionalGeneration(TinyTransformerConfig(**sizes, dropout=0.1))
    rows = []

    step = training_step(model, batch, length)
    rows.append(compare(
        f"CPU dropout: training step, dropout 0.1, b{batch} {length}+{length}",
        step, Patched(step, {(modeling, "apply_dropout"): plain_dropout}), args.repeats, args.clock,
    ))  # fmt: skip
    bf16_step = training_step(model, batch, length, bf16=True)
    rows.append(compare(
        f"eager attention for bf16 on CPU: training step, --bf16, b{batch} {length}+{length}",
        bf16_step, Patched(bf16_step, {(modeling, "sdpa_backward_is_slow"): lambda query: False}), args.repeats, args.clock,
    ))  # fmt: skip
    general = GenerationMixin.prepare_inputs_for_generation
    for generate_batch in (1, batch):
        run = generation(model, generate_batch, length, new_tokens)
        rows.append(compare(
            f"lean step inputs: greedy, b{generate_batch}, {new_tokens} tokens",
            run, Patched(run, {(type(model), "prepare_inputs_for_generation"): general}), args.repeats, args.clock,
        ))  # fmt: skip
    for generate_batch in (1, batch):
        run = generation(model, generate_batch, length, new_tokens, cache_implementation="static")
        rows.append(compare(
            f"static cache, written slots only: greedy, b{generate_batch}, {new_tokens} tokens",
            run, Patched(run, {(type(model), "prepare_inputs_for_generation"): general}), args.repeats, args.clock,
        ))  # fmt: skip
    for generate_batch in (1, batch):
        run = generation(model, generate_batch, length, new_tokens)
        rows.append(compare(
            f"generate's own cache written in place: greedy, b{generate_batch}, {new_tokens} tokens",
            run, Patched(run, {(modeling, "preallocate_generation_cache"): lambda cache, capacity: None}),
            args.repeats, args.clock,
        ))  # fmt: skip
    return rows


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
