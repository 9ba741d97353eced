"""The kernel-level measurements behind TinyTransformer's design choices, each against the alternative it replaced.

    python bench/design_kernels.py [--threads 1] [--repeats 100]

Prints median microseconds, alternating the two variants of each comparison so that machine noise hits both:
- a projection y = xW + b with W stored [in, out] (ours, transformers' Conv1D) against nn.Linear's [out, in];
- CPU dropout from 16-bit draws with a boolean mask (ours) against torch's dropout, forward and forward + backward;
- appending one decoding step to a self-attention cache in place (ours) against DynamicLayer's concatenation.
"""

import argparse
import statistics

import torch
import torch.nn.functional as F
from timing import alternate
from transformers.cache_utils import DynamicLayer

from hf_tiny_transformer.fast_paths_tiny_transformer import InPlaceAppendLayer, apply_dropout


def alternate_medians(functions: dict, repeats: int) -> dict[str, float]:
    """Median microseconds per call of each function (two untimed calls of each first)."""
    seconds = alternate(functions, repeats, warmup=2)
    return {name: statistics.median(values) * 1e6 for name, values in seconds.items()}


def report(title: str, ours: str, theirs: str, times: dict[str, float]) -> None:
    print(f"{title:58s} ours {times[ours]:9.1f} us   alternative {times[theirs]:9.1f} us   "
          f"ratio {times[theirs] / times[ours]:.2f}x")


def projections(repeats: int) -> None:
    for rows, inputs, outputs in [(1, 128, 384), (1, 512, 1536), (32, 128, 384), (32, 512, 1536), (32, 2048, 512),
                                  (2048, 512, 1536)]:
        x = torch.randn(rows, inputs)
        weight_in_out = torch.randn(inputs, outputs)
        weight_out_in = weight_in_out.t().contiguous()
        bias = torch.randn(outputs)
        with torch.inference_mode():
            times = alternate_medians(
                {
                    "ours": lambda: torch.addmm(bias, x, weight_in_out),
                    "linear": lambda: F.linear(x, weight_out_in, bias),
                },
                repeats if rows < 2048 else max(5, repeats // 10),
            )
        report(f"projection {rows} x {inputs} -> {outputs}", "ours", "linear", times)


def dropout(repeats: int) -> None:
    for shape in [(32, 64, 128), (32, 64, 512)]:
        x = torch.randn(*shape, requires_grad=True)
        gradient = torch.randn(*shape)
        with torch.no_grad():
            times = alternate_medians(
                {"ours": lambda: apply_dropout(x, 0.1, True), "torch": lambda: F.dropout(x, 0.1, True)}, repeats
            )
        report(f"dropout forward {shape}", "ours", "torch", times)
        times = alternate_medians(
            {
                "ours": lambda: apply_dropout(x, 0.1, True).backward(gradient),
                "torch": lambda: F.dropout(x, 0.1, True).backward(gradient),
            },
            repeats,
        )
        report(f"dropout forward + backward {shape}", "ours", "torch", times)


def cache_append(repeats: int) -> None:
    """One decoding step's keys and values appended to a cache already holding `length` positions."""
    for batch, heads, head_dim, length in [(1, 4, 32, 100), (32, 4, 32, 100), (32, 8, 64, 100)]:
        layers = {"ours": InPlaceAppendLayer(), "dynamic": DynamicLayer()}
        step = [torch.randn(batch, heads, 1, head_dim) for _ in range(2)]
        with torch.inference_mode():
            for layer in layers.values():
                layer.update(torch.randn(batch, heads, length, head_dim), torch.randn(batch, heads, length, head_dim))

            def append(layer):
                layer.update(*step)
                if layer.get_seq_length() >= length + 50:  # stay near `length`: drop the appended positions again
                    layer.crop(-50)

            times = alternate_medians({name: (lambda layer=layer: append(layer)) for name, layer in layers.items()}, repeats)
        report(f"cache append, batch {batch}, {heads} heads x {head_dim}, {length} cached", "ours", "dynamic", times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), medians of {args.repeats} alternating calls")
    projections(args.repeats)
    dropout(args.repeats)
    cache_append(args.repeats)


if __name__ == "__main__":
    main()
