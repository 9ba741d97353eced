"""labels -> loss, Trainer gradient accumulation, gradient checkpointing, device_map."""

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_tiny_transformer.modeling_tiny_transformer import shift_tokens_right


def test_labels_are_shifted_right_behind_the_start_token(make_model):
    model = make_model()
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    start, pad = model.config.decoder_start_token_id, model.config.pad_token_id
    assert decoder_input_ids.tolist() == [[start, 5, 6, 7], [start, 8, 2, pad]]
    assert torch.equal(decoder_input_ids, shift_tokens_right(labels, pad, start))


def test_loss_is_cross_entropy_over_non_ignored_labels(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [6, 4])
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    expected = F.cross_entropy(output.logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(output.loss, expected)
    teacher_forced = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels),
    )
    torch.testing.assert_close(teacher_forced.logits, output.logits)


def test_num_items_in_batch_turns_the_mean_into_a_sum_over_that_count(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [6, 4])
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    mean = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    summed = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, num_items_in_batch=12).loss
    torch.testing.assert_close(summed, mean * 6 / 12)


class FixedLengthCollator:
    def __call__(self, features):
        return {key: torch.stack([torch.as_tensor(feature[key]) for feature in features]) for key in features[0]}


def ragged_examples(count: int, vocab_size: int = 40):
    """Examples whose labels have different numbers of ignored positions, so micro-batches hold unequal token
    counts: exactly the case where a mean-of-means loss differs from one large batch."""
    generator = torch.Generator().manual_seed(0)
    examples = []
    for index in range(count):
        input_ids = torch.randint(3, vocab_size, (8,), generator=generator)
        labels = torch.randint(3, vocab_size, (6,), generator=generator)
        labels[1 + index % 5 :] = -100
        examples.append({"input_ids": input_ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels})
    return examples


def train_one_step(make_model, tmp_path, batch_size: int, accumulation: int):
    model = make_model(dropout=0.0).train()
    arguments = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / f"bs{batch_size}x{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Seq2SeqTrainer(
        model=model, args=arguments, train_dataset=ragged_examples(32), data_collator=FixedLengthCollator()
    )
    trainer.train()
    return model


def test_trainer_gradient_accumulation_4x8_equals_one_batch_of_32(make_model, tmp_path):
    one_batch = train_one_step(make_model, tmp_path, batch_size=32, accumulation=1)
    accumulated = train_one_step(make_model, tmp_path, batch_size=8, accumulation=4)
    initial = make_model(dropout=0.0)
    largest_update = max((a - b).abs().max().item() for a, b in zip(one_batch.parameters(), initial.parameters()))
    difference = max((a - b).abs().max().item() for a, b in zip(one_batch.parameters(), accumulated.parameters()))
    assert largest_update > 1e-3  # the step did something
    assert difference < 1e-6


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(make_model, batch):
    input_ids, attention_mask = batch(40, [6, 4])
    labels = torch.randint(3, 40, (2, 5))
    results = []
    for checkpointing in (False, True):
        model = make_model(dropout=0.0).train()
        if checkpointing:
            # transformers 5.24 renamed gradient to activation checkpointing (the old names warn); 5.17 has the old.
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                assert model.is_activation_checkpointing
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                assert model.is_gradient_checkpointing
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for plain, checkpointed in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(plain, checkpointed)


def test_no_split_modules_keep_each_layer_on_one_device(make_model):
    accelerate = pytest.importorskip("accelerate")
    model = make_model(encoder_layers=3, decoder_layers=3)
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.decoder.layers[0].parameters())
    # Two devices, the first too small for the whole model: the map must split between layers, never inside one.
    device_map = accelerate.infer_auto_device_map(
        model,
        max_memory={0: int(2.5 * layer_bytes), 1: 100 * layer_bytes},
        no_split_module_classes=model._no_split_modules,
    )
    assert len(set(device_map.values())) == 2
    assert not [name for name in device_map if re.search(r"layers\.\d+\.", name)]
