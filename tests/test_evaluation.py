"""train/evaluation.py: exact match from one teacher-forced forward is greedy decoding's exact match."""

import numpy as np
import pytest
import torch
from conftest import seeded_model, tiny_config
from transformers import Seq2SeqTrainingArguments

from hf_tiny_transformer_train.evaluation import evaluates_teacher_forced, teacher_forced_exact_match
from hf_tiny_transformer_train.metrics import generated_answer, sequence_metrics


@pytest.mark.parametrize("position_embedding_type", ["relative", "learned", "sinusoidal"])
def test_teacher_forced_exact_match_is_greedy_decodings_exact_match(position_embedding_type, batch):
    model = seeded_model(tiny_config(position_embedding_type=position_embedding_type))
    eos = model.config.eos_token_id
    input_ids, attention_mask = batch(model.config.vocab_size, [7, 3, 5, 6, 2, 4], seed=1)
    with torch.no_grad():
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=False, num_beams=1, max_new_tokens=8
        )
    # Targets: greedy decoding's own answers for the even rows; for the odd rows the same answer with one token
    # changed (at a different place in each), which greedy decoding cannot produce.
    targets = []
    for row, generated_row in enumerate(generated.tolist()):
        answer = generated_answer(generated_row, eos).tolist()
        if row % 2:
            place = row % len(answer)
            answer[place] = 3 + (answer[place] - 2) % (model.config.vocab_size - 3)
        targets.append(answer)
    longest = max(map(len, targets))
    labels = torch.tensor([target + [-100] * (longest - len(target)) for target in targets])
    with torch.no_grad():
        predicted = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits.argmax(-1)
    for row in range(len(targets)):
        teacher_forced = teacher_forced_exact_match(predicted[row : row + 1].numpy(), labels[row : row + 1].numpy())
        greedy = sequence_metrics(generated[row : row + 1].tolist(), labels[row : row + 1].tolist(), 0, eos)
        assert teacher_forced["exact_match"] == greedy["exact_match"] == (0.0 if row % 2 else 1.0)
    assert teacher_forced_exact_match(predicted.numpy(), labels.numpy()) == {"exact_match": 0.5}


def test_positions_the_label_does_not_hold_do_not_count():
    labels = np.array([[5, 6, 2, -100], [7, 2, -100, -100]])
    predicted = np.array([[5, 6, 2, 9], [7, 2, 4, 4]])  # what the model predicts past </s> is never generated
    assert teacher_forced_exact_match(predicted, labels) == {"exact_match": 1.0}
    predicted[1, 1] = 3
    assert teacher_forced_exact_match(predicted, labels) == {"exact_match": 0.5}


def test_predictions_of_another_shape_than_the_labels_are_refused():
    with pytest.raises(ValueError, match=r"predicted ids of shape \(2, 3\) for labels of shape \(2, 4\)"):
        teacher_forced_exact_match(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize(
    "predict_with_generate, on_text, metric, expected",
    [
        (True, False, None, True),
        (True, False, "eval_exact_match", True),
        (True, False, "loss", True),
        (True, False, "eval_token_accuracy", False),  # measured on generated tokens
        (True, True, None, False),  # a user's data: chrF and BLEU need the generated texts
        (False, False, None, False),  # no generation metrics at all
    ],
)
def test_evaluations_are_teacher_forced_only_where_they_would_generate_for_exact_match_alone(
    predict_with_generate, on_text, metric, expected, tmp_path
):
    arguments = Seq2SeqTrainingArguments(
        str(tmp_path), predict_with_generate=predict_with_generate, metric_for_best_model=metric, report_to="none"
    )
    assert evaluates_teacher_forced(arguments, on_text) is expected
