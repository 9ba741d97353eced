"""How well generated sequences match their targets: the one definition used by train.py and by bench/.

On token ids: exact match and token accuracy (`sequence_metrics`). On decoded texts, for a user's text-to-text data:
chrF and BLEU as sacrebleu computes them (`text_metrics`), the field's standard, comparable across papers.
"""

from collections.abc import Iterable, Sequence

import numpy as np
import sacrebleu
from transformers import PreTrainedTokenizerBase


def generated_answer(generated: Sequence[int], eos_token_id: int) -> np.ndarray:
    """The answer in a `generate` output row: without the decoder start token, up to and including the first </s>
    (tokens after it are padding of the batch)."""
    generated = np.asarray(generated)[1:]
    eos_positions = np.flatnonzero(generated == eos_token_id)
    return generated[: eos_positions[0] + 1] if len(eos_positions) else generated


def target_ids(label: Sequence[int], pad_token_id: int) -> np.ndarray:
    """The target in a row of labels: without the padding (-100 or the pad id) that batching added."""
    label = np.asarray(label)
    return label[(label != -100) & (label != pad_token_id)]


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
        label = target_ids(label, pad_token_id)
        answer = generated_answer(generated, eos_token_id)
        length = min(len(answer), len(label))
        correct += int((answer[:length] == label[:length]).sum())
        total += len(label)
        exact += int(len(answer) == len(label) and bool((answer == label).all()))
        examples += 1
    return {"exact_match": exact / max(examples, 1), "token_accuracy": correct / max(total, 1)}


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`chrf` (character n-gram F-score, orders 1-6, beta 2) and `bleu` (4-gram BLEU on sacrebleu's 13a
    tokenization) of the decoded `predictions` against their `references`, over the whole corpus, on sacrebleu's
    0-100 scale."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return {
        "chrf": sacrebleu.corpus_chrf(list(predictions), [list(references)]).score,
        "bleu": sacrebleu.corpus_bleu(list(predictions), [list(references)]).score,
    }


def generation_metrics(
    generations: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    tokenizer: PreTrainedTokenizerBase,
    on_text: bool,
) -> dict[str, float]:
    """`sequence_metrics` of `generate` output rows against their labels; with `on_text`, also `text_metrics` of the
    decoded answers against the decoded targets (what the tokenizer can represent of the reference texts)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    metrics = sequence_metrics(generations, labels, pad, eos)
    if on_text:
        # Rows of different batches are padded with -100 where the Trainer concatenates them: no tokens.
        answers = [answer[answer != -100] for answer in (generated_answer(row, eos) for row in generations)]
        targets = [target_ids(label, pad) for label in labels]
        metrics.update(
            text_metrics(
                tokenizer.batch_decode(answers, skip_special_tokens=True),
                tokenizer.batch_decode(targets, skip_special_tokens=True),
            )
        )
    return metrics
