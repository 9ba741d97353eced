"""The evaluations (during training and after it) and the typed-input families, scored on one teacher-forced forward
instead of `generate`.

Greedy decoding reproduces a target exactly if and only if, fed the target's own prefix (teacher forcing), the model's
most likely next token is the target's token at every position, </s> included: each greedy step then sees the
prefix it was fed. So a forward pass on the validation batch, the one that already gives the loss, gives greedy exact
match too, without a decoding loop of up to 50 steps per batch (a reverse run of 1,200 steps spent about 50 s,
measured with the cores shared, in 12 generated evaluations of 500; seed 42 on an idle machine: 42 s of 245). After
training the same holds for the evaluation on the validation split and for the typed-input families, which report
exact match alone (the default reverse command on a 2-core AMD EPYC: 47 s of evaluation after training, generated, of
a 125 s run). The test split and the longer test still generate: their exact match comes from `generate` itself, with
token accuracy and, for a user's data, chrF and BLEU on the generated texts.
"""

import contextlib

import numpy as np
import torch
from transformers import EvalPrediction, Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_tiny_transformer_train.trainer import TinyTransformerTrainer


def teacher_forced_exact_match(predicted_ids: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`exact_match`: the share of rows whose most likely token equals the label at every position the label holds
    (not -100): the share of examples greedy decoding gets right. Rows of different batches may be padded with -100."""
    predicted_ids, labels = np.asarray(predicted_ids), np.asarray(labels)
    if predicted_ids.shape != labels.shape:
        raise ValueError(f"predicted ids of shape {predicted_ids.shape} for labels of shape {labels.shape}")
    right = (predicted_ids == labels) | (labels == -100)
    return {"exact_match": float(right.all(axis=1).mean()) if len(labels) else 0.0}


def evaluates_teacher_forced(training_args: Seq2SeqTrainingArguments, on_text: bool) -> bool:
    """Whether the evaluations during training may be scored teacher-forced: where they would generate only for
    exact match, not for a user's text metrics (chrF, BLEU) nor for a best-model metric of the generated tokens."""
    metric = (training_args.metric_for_best_model or "loss").removeprefix("eval_")
    return training_args.predict_with_generate and not on_text and metric in ("loss", "exact_match")


class TeacherForcedEvaluationTrainer(TinyTransformerTrainer):
    """A `TinyTransformerTrainer` whose evaluations (`evaluate()`, inside `train()` and after it) and
    `predict_exact_match()` score loss and exact match on a teacher-forced forward (`teacher_forced_exact_match`);
    `predict()` generates, as `Seq2SeqTrainer` does with `predict_with_generate`, and scores with
    `compute_generation_metrics`."""

    def __init__(self, *args, compute_generation_metrics, **kwargs):
        super().__init__(
            *args,
            compute_metrics=self.compute_any_metrics,
            preprocess_logits_for_metrics=self.keep_most_likely_tokens,
            **kwargs,
        )
        self.compute_generation_metrics = compute_generation_metrics
        self.teacher_forced = False

    @contextlib.contextmanager
    def scoring_teacher_forced(self):
        previous, self.teacher_forced = self.teacher_forced, True
        try:
            yield
        finally:
            self.teacher_forced = previous

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        with self.scoring_teacher_forced():
            return super().evaluate(*args, **kwargs)

    def predict_exact_match(self, test_dataset, metric_key_prefix: str, **gen_kwargs):
        """`predict()`'s output, its exact match scored on a teacher-forced forward: greedy decoding's exact match
        without a decoding loop (the labels bound the forward, so `gen_kwargs` such as a longer split's max_length
        have nothing to do). Its predictions are the most likely token at each label position."""
        with self.scoring_teacher_forced():
            return self.predict(test_dataset, metric_key_prefix=metric_key_prefix)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.teacher_forced:
            # Trainer's own step: loss and logits of one forward (reduced to token ids by most_likely_tokens).
            return super(Seq2SeqTrainer, self).prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)

    def keep_most_likely_tokens(self, logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
        """Of a teacher-forced forward, only the most likely token per position is kept (not the logits over the
        vocabulary); generated ids pass unchanged."""
        if not self.teacher_forced:
            return logits
        if isinstance(logits, tuple):  # the model's other outputs (encoder states) come after the logits
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_any_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        if self.teacher_forced:
            return teacher_forced_exact_match(prediction.predictions, prediction.label_ids)
        return self.compute_generation_metrics(prediction)
