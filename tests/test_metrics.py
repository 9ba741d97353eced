"""Exact match, token accuracy, chrF and BLEU of generations (train/metrics.py)."""

import numpy as np
import pytest
import sacrebleu

from hf_tiny_transformer_train.metrics import generation_metrics, sequence_metrics, text_metrics
from hf_tiny_transformer_train.tokenizer_training import train_tokenizer

START, EOS, PAD = 1, 2, 0


def test_exact_match_needs_the_whole_answer_up_to_eos_and_token_accuracy_counts_positions():
    labels = [[5, 6, EOS, -100], [5, 6, 7, EOS]]
    generations = [[START, 5, 6, EOS, PAD, PAD], [START, 5, 9, 7, EOS, PAD]]
    assert sequence_metrics(generations, labels, PAD, EOS) == {"exact_match": 0.5, "token_accuracy": 6 / 7}


def test_text_metrics_are_sacrebleus_corpus_scores():
    predictions, references = ["2021-03-05", "1999-12-31 x"], ["2021-03-05", "1999-12-31"]
    metrics = text_metrics(predictions, references)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert text_metrics(references, references) == {"chrf": pytest.approx(100), "bleu": pytest.approx(100)}


def test_text_metrics_on_generations_decode_answers_without_padding():
    tokenizer = train_tokenizer(["2021-03-05", "1999-12-31"] * 10, "bpe", vocab_size=270)
    targets = [tokenizer(text_target=text)["input_ids"] for text in ("2021-03-05", "1999-12-31")]
    # As the Trainer hands them over: generations start with the decoder start token, and rows of different
    # batches are padded with -100 (the second answer never reached </s>).
    width = max(map(len, targets)) + 2
    generations = np.full((2, width), -100)
    generations[0, : len(targets[0]) + 1] = [tokenizer.bos_token_id, *targets[0]]
    generations[1, : len(targets[0])] = [tokenizer.bos_token_id, *targets[0][:-1]]
    labels = np.full((2, width), -100)
    for row, target in enumerate(targets):
        labels[row, : len(target)] = target
    metrics = generation_metrics(generations, labels, tokenizer, on_text=True)
    assert metrics["exact_match"] == 0.5
    assert metrics["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(["2021-03-05", "2021-03-05"], [["2021-03-05", "1999-12-31"]]).score
    )
    assert "chrf" not in generation_metrics(generations, labels, tokenizer, on_text=False)
