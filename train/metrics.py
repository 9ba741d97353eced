"""How well generated sequences match their targets: the one definition used by train.py and by bench/."""

from collections.abc import Iterable, Sequence

import numpy as np


def generated_answer(generated: Sequence[int], eos_token_id: int) -> np.ndarray:
    """The answer in a `generate` output row: without the decoder start token, up to and including the first </s>
    (tokens after it are padding of the batch)."""
    generated = np.asarray(generated)[1:]
    eos_positions = np.flatnonzero(generated == eos_token_id)
    return generated[: eos_positions[0] + 1] if len(eos_positions) else generated


def sequence_metrics(
    generations: Iterable[Sequence[int]], labels: Iterable[Sequence[int]], pad_token_id: int, eos_token_id: int
) -> dict[str, float]:
    """`exact_match`: the share of examples whose generated answer, up to and including </s>, equals the target.
    `token_accuracy`: the share of target tokens (</s> included) that the answer has at the same position.

    `generations` are `generate` output rows (decoder start token first); `labels` are target ids, padded with -100
    or the pad id (targets never contain either).
    """
    examples, exact, correct, total = 0, 0, 0, 0
    for generated, label in zip(generations, labels, strict=True):
        label = np.asarray(label)
        label = label[(label != -100) & (label != pad_token_id)]
        answer = generated_answer(generated, eos_token_id)
        length = min(len(answer), len(label))
        correct += int((answer[:length] == label[:length]).sum())
        total += len(label)
        exact += int(len(answer) == len(label) and bool((answer == label).all()))
        examples += 1
    return {"exact_match": exact / max(examples, 1), "token_accuracy": correct / max(total, 1)}
