"""train/trainer.py: the relative position-bias tables on a learning rate of their own, and its flag."""

import pytest
import torch
from conftest import seeded_model, tiny_config

from hf_tiny_transformer_train import train
from hf_tiny_transformer_train.arguments import TrainingArguments
from hf_tiny_transformer_train.trainer import TinyTransformerTrainer, position_bias_parameters

LEARNING_RATE = 1e-3


def model_of(scheme: str, **overrides):
    return seeded_model(tiny_config(position_embedding_type=scheme, **overrides)).train()


def optimizer_of(model, tmp_path, scale: float) -> torch.optim.Optimizer:
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "never"),
        learning_rate=LEARNING_RATE,
        weight_decay=0.01,
        warmup_steps=0,
        lr_scheduler_type="linear",
        max_steps=10,
        position_bias_learning_rate_scale=scale,
        use_cpu=True,
        report_to="none",
    )
    trainer = TinyTransformerTrainer(model=model, args=arguments)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    return trainer


def rates_by_parameter(optimizer: torch.optim.Optimizer) -> dict[int, list[float]]:
    """id(parameter) -> the learning rates of the groups that hold it (one, if each parameter is in one group)."""
    rates = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            rates.setdefault(id(parameter), []).append(group["lr"])
    return rates


def test_the_bias_tables_learn_at_the_scaled_rate_and_every_other_weight_at_the_learning_rate(tmp_path):
    model = model_of("relative")
    trainer = optimizer_of(model, tmp_path, scale=10)
    biases = {id(parameter) for parameter in position_bias_parameters(model)}
    # The tables of the encoder's and decoder's self-attention and of encoder-decoder attention (from the start and
    # from the end of the source): four [buckets, heads] weights.
    assert len(biases) == 4
    rates = rates_by_parameter(trainer.optimizer)
    assert set(rates) == {id(parameter) for parameter in model.parameters()}  # every weight, each once
    for parameter_id, group_rates in rates.items():
        expected = 10 * LEARNING_RATE if parameter_id in biases else LEARNING_RATE
        assert group_rates == [pytest.approx(expected)]
    # The Trainer's weight decay split is kept: the bias tables are in no decayed group, as before.
    plain = optimizer_of(model_of("relative"), tmp_path, scale=1).optimizer
    decays = {
        group["weight_decay"] for group in trainer.optimizer.param_groups if biases & set(map(id, group["params"]))
    }
    assert decays == {0.0} and len(plain.param_groups) == 2
    # The schedule scales every group alike: halfway through the linear decay, the ratio is still 10.
    for _ in range(5):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    rates = rates_by_parameter(trainer.optimizer)
    bias_rate = rates[next(iter(biases))][0]
    other_rate = rates[id(model.lm_head.weight)][0]
    assert 0 < other_rate < LEARNING_RATE and bias_rate == pytest.approx(10 * other_rate)


def test_one_adam_step_moves_the_bias_tables_ten_times_as_far(batch, tmp_path):
    model = model_of("relative", dropout=0.0)
    trainer = optimizer_of(model, tmp_path, scale=10)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    input_ids, attention_mask = batch(40, [7, 5])
    model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids[:, :4]).loss.backward()
    trainer.optimizer.step()
    # Adam's first step moves each weight with a gradient by the learning rate (times its rate of the schedule's
    # first step), whatever the gradient's size: the tables 10 times as far as any other weight.
    largest = {
        kind: max(
            (parameter.detach() - before[name]).abs().max().item()
            for name, parameter in model.named_parameters()
            if ("position_bias" in name.split(".")) == (kind == "bias")
        )
        for kind in ("bias", "other")
    }
    assert largest["bias"] == pytest.approx(10 * largest["other"], rel=1e-3)


@pytest.mark.parametrize("scheme", ["learned", "sinusoidal"])
def test_a_model_without_bias_tables_gets_the_trainers_own_groups(tmp_path, scheme):
    model = model_of(scheme)
    assert position_bias_parameters(model) == []
    optimizer = optimizer_of(model, tmp_path, scale=10).optimizer
    assert len(optimizer.param_groups) == 2
    assert {group["lr"] for group in optimizer.param_groups} == {LEARNING_RATE}


def test_frozen_tables_keep_the_learning_rate_groups_of_the_trainable_weights(tmp_path):
    model = model_of("relative")
    for parameter in position_bias_parameters(model):
        parameter.requires_grad_(False)
    assert position_bias_parameters(model) == []  # frozen (as under LoRA): nothing to scale
    optimizer = optimizer_of(model, tmp_path, scale=10).optimizer
    assert {group["lr"] for group in optimizer.param_groups} == {LEARNING_RATE}


def test_the_relative_recipes_set_the_scale_and_a_recipes_value_is_inert_without_tables():
    for task in ("copy", "reverse", "add", "sort"):
        _, _, training_args = train.parse_arguments(["--task", task])
        assert training_args.position_bias_learning_rate_scale == 10
    # The copy recipe's 10 with learned positions: nothing to act on, and no error (the flag was not given).
    model_args, _, training_args = train.parse_arguments(["--task", "copy", "--position_embedding_type", "learned"])
    assert model_args.position_embedding_type == "learned" and training_args.position_bias_learning_rate_scale == 10


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--position_bias_learning_rate_scale", "0"], "--position_bias_learning_rate_scale must be positive; got 0"),
        (["--position_bias_learning_rate_scale", "-2"], "--position_bias_learning_rate_scale must be positive"),
        (
            ["--task", "sort", "--position_embedding_type", "learned", "--occurrence_bias", "false"]
            + ["--position_bias_learning_rate_scale", "5"],
            "--position_bias_learning_rate_scale acts on relative position biases and occurrence biases; this "
            "model's position_embedding_type is 'learned' and it has no occurrence bias",
        ),
        (
            ["--task", "copy", "--position_embedding_type", "sinusoidal", "--position_bias_learning_rate_scale", "3"],
            "position_embedding_type is 'sinusoidal'",
        ),
    ],
)
def test_a_scale_that_cannot_act_stops_before_any_work(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        train.parse_arguments([*flags, "--output_dir", str(tmp_path / "never")])
    assert stopped.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "never").exists()
