"""The Trainer of train.py: transformers' `Seq2SeqTrainer`, with the relative position biases on a learning rate of
their own.

A relative position bias is a small table per attention (one weight per head and distance bucket) added to the
attention scores. For a head to attend to one distance alone (the source token at the output's own distance from
the end, for reverse), the table's entry for that distance must exceed its neighbours' by several units. Adam moves
every weight by about the learning rate per step, whatever its gradient, so at 2e-3 the tables need over a thousand
steps to get there: reverse (seed 44) reached 99.9% validation exact match after 1,500 steps. With the tables at ten
times the learning rate, after 300 (bench/README.md, "Position-bias learning rate"). The other weights act together
through products (QKᵀ), so their rate is not the limit.
"""

from torch import nn
from transformers import Seq2SeqTrainer

# The model's bias tables, by attribute name (TinyTransformerStack.position_bias, .occurrence_bias): also found in a
# model loaded with trust_remote_code, whose classes are copies of this package's.
BIAS_TABLE_MODULES = ("position_bias", "occurrence_bias")


def position_bias_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of `model`'s relative position-bias and occurrence-bias tables (none without)."""
    return [
        parameter
        for name, parameter in model.named_parameters()
        if set(BIAS_TABLE_MODULES) & set(name.split(".")) and parameter.requires_grad
    ]


class TinyTransformerTrainer(Seq2SeqTrainer):
    """A `Seq2SeqTrainer` whose optimizer gives the relative position-bias tables `args.position_bias_learning_rate_scale`
    times the learning rate (arguments.TrainingArguments); the scheduler scales that rate as it scales the others.
    `predict_exact_match` scores a split that reports exact match alone (evaluation.py's trainer overrides it)."""

    def predict_exact_match(self, test_dataset, metric_key_prefix: str, **gen_kwargs):
        """`predict()` on a split that reports exact match alone (the typed-input families): generated here;
        evaluation.py's trainer scores it on a teacher-forced forward instead."""
        return self.predict(test_dataset, metric_key_prefix=metric_key_prefix, **gen_kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(model)
        scale = getattr(self.args, "position_bias_learning_rate_scale", 1.0)
        biases = {id(parameter) for parameter in position_bias_parameters(self.model if model is None else model)}
        if scale == 1.0 or not biases:
            return optimizer
        # Before the first step the optimizer holds no state: the groups (weight decay or not) are split in place,
        # each bias part becoming a group of its own with the scaled rate (and the same decay setting).
        for group in list(optimizer.param_groups):
            moved = [parameter for parameter in group["params"] if id(parameter) in biases]
            if moved:
                group["params"] = [parameter for parameter in group["params"] if id(parameter) not in biases]
                optimizer.add_param_group({**group, "params": moved, "lr": group["lr"] * scale})
        return optimizer
