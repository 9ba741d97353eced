"""The one timing helper of the benchmarks: variants called in turn, so that machine noise hits all of them."""

import time
from collections.abc import Callable


def alternate(
    functions: dict[str, Callable[[], object]],
    repeats: int,
    synchronize: Callable[[], None] = lambda: None,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each function over `repeats` rounds, after `warmup` untimed calls of each.

    Round r calls the functions in their order when r is even and in reverse order when r is odd (A B, B A, ...), so
    that a slow spell of the machine, or a cache warmed by the previous call, does not always favour the same one.
    `synchronize` waits for queued device work (CUDA) before each clock reading.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    seconds = {name: [] for name in functions}
    names = list(functions)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            synchronize()
            start = time.perf_counter()
            functions[name]()
            synchronize()
            seconds[name].append(time.perf_counter() - start)
    return seconds
