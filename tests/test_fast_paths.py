"""The pieces that exist for speed give the same results as the plain versions they replace.

CPU dropout from 16-bit draws and the lean per-step input preparation of generate() are each compared with torch's /
transformers' own implementation; eager decoding steps with a static cache, which attend to its written slots only,
with decoding on a dynamic cache.
"""

import pytest
import torch
from conftest import STEP_SCORES
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache, StaticLayer

import hf_tiny_transformer.modeling_tiny_transformer as modeling
from hf_tiny_transformer.fast_paths_tiny_transformer import apply_dropout, written_slots
from hf_tiny_transformer.modeling_tiny_transformer import CACHE_FIELD


# ----------------------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_drops_a_fraction_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    inputs = torch.randn(400, 1000) + 5.0  # no zeros of its own
    outputs = apply_dropout(inputs, p, training=True)
    dropped = outputs == 0
    # 400k Bernoulli(p) draws: the standard error of the fraction is below 1e-3.
    assert abs(dropped.float().mean().item() - p) < 5e-3
    torch.testing.assert_close(outputs[~dropped], inputs[~dropped] / (1 - p))


def test_dropout_decisions_are_independent_of_position():
    """Each 64-bit random word feeds four neighbouring elements: their decisions must not be correlated."""
    torch.manual_seed(1)
    dropped = apply_dropout(torch.ones(1_000_000), 0.5, training=True) == 0
    both = (dropped[:-1] & dropped[1:]).float().mean().item()
    assert abs(both - 0.25) < 5e-3
    for lane in range(4):  # every 16-bit lane of the words, alone
        assert abs(dropped[lane::4].float().mean().item() - 0.5) < 5e-3


def test_dropout_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    inputs = torch.randn(64, 128, requires_grad=True)
    outputs = apply_dropout(inputs, 0.2, training=True)
    outputs.backward(torch.ones_like(outputs))
    kept = (outputs != 0).float()
    torch.testing.assert_close(inputs.grad, kept / 0.8)


def test_dropout_backward_keeps_only_a_boolean_mask():
    """torch's CPU dropout keeps a float mask for the backward; ours a boolean one, a quarter of the memory."""
    inputs = torch.randn(16, 16, requires_grad=True)
    outputs = apply_dropout(inputs, 0.1, training=True)
    assert [saved.dtype for saved in outputs.grad_fn.saved_tensors] == [torch.bool]


def test_dropout_is_reproducible_under_a_seed_and_off_in_eval():
    inputs = torch.randn(32, 33)  # an element count that is not a multiple of 4
    torch.manual_seed(3)
    first = apply_dropout(inputs, 0.1, training=True)
    torch.manual_seed(3)
    assert torch.equal(first, apply_dropout(inputs, 0.1, training=True))
    assert apply_dropout(inputs, 0.1, training=False) is inputs
    assert apply_dropout(inputs, 0.0, training=True) is inputs


def test_dropout_keeps_bfloat16():
    inputs = torch.randn(8, 16, dtype=torch.bfloat16)
    assert apply_dropout(inputs, 0.1, training=True).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------- generate's per-step inputs
def test_lean_step_inputs_equal_transformers_general_ones(make_model, batch):
    model = make_model("sdpa")
    input_ids, attention_mask = batch(model.config.vocab_size, [6, 4])
    encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    decoder_input_ids = torch.tensor([[1, 5, 7], [1, 6, 8]])
    kwargs = {
        CACHE_FIELD: cache,
        "encoder_outputs": encoder_outputs,
        "use_cache": True,
        "decoder_attention_mask": torch.ones(2, 3, dtype=torch.long),
    }
    ours = model.prepare_inputs_for_generation(
        decoder_input_ids, next_sequence_length=1, attention_mask=attention_mask, **kwargs
    )
    general = GenerationMixin.prepare_inputs_for_generation(
        model, decoder_input_ids, next_sequence_length=1, attention_mask=attention_mask, **kwargs
    )
    assert set(ours) == set(general) - {"cache_position"}
    for key, value in general.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(ours[key], value), key
        elif key != "cache_position":
            assert ours[key] is value, key


# ------------------------------------------------------------------------------- static caches in eager decoding
def test_written_slots_are_a_view_of_the_static_layers_written_prefix():
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = StaticLayer(max_cache_len=8)
    layer.update(keys[:, :, :3], values[:, :, :3])
    buffer_keys, buffer_values = layer.update(keys[:, :, 3:], values[:, :, 3:])  # 5 of 8 slots written
    assert buffer_keys.shape[-2] == 8
    written_keys, written_values = written_slots(layer, buffer_keys, buffer_values, None)
    assert torch.equal(written_keys, keys) and torch.equal(written_values, values)
    assert written_keys.data_ptr() == layer.keys.data_ptr()  # a view: nothing copied
    # A mask over the whole buffer (compiled graphs, padded decoder inputs) keeps it; so does a mask that is not a
    # tensor (flex attention's BlockMask); a relative position bias over the written keys cuts it to them.
    whole_buffer_mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    assert written_slots(layer, buffer_keys, buffer_values, whole_buffer_mask)[0].shape[-2] == 8
    assert written_slots(layer, buffer_keys, buffer_values, object())[0] is buffer_keys
    assert written_slots(layer, buffer_keys, buffer_values, torch.zeros(1, 3, 1, 5))[0].shape[-2] == 5
    dynamic = DynamicLayer()
    dynamic_keys, dynamic_values = dynamic.update(keys, values)
    assert written_slots(dynamic, dynamic_keys, dynamic_values, None)[0] is dynamic_keys


def test_static_cache_steps_attend_to_the_written_keys_and_decode_like_a_dynamic_cache(make_model, batch, monkeypatch):
    """generate with a static cache: every eager step attends to the keys written so far, never to the buffer's
    empty slots, and gives the dynamic cache's tokens and scores."""
    model = make_model("sdpa")
    input_ids, attention_mask = batch(model.config.vocab_size, [6, 4])
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, **STEP_SCORES)
    attended = []

    def recording_written_slots(*args):
        key, value = written_slots(*args)
        attended.append(key.shape[-2])
        return key, value

    monkeypatch.setattr(modeling, "written_slots", recording_written_slots)
    static = model.generate(input_ids, attention_mask=attention_mask, cache_implementation="static", **settings)
    layers = model.config.decoder_layers
    assert attended == [step + 1 for step in range(6) for _ in range(layers)]
    dynamic = model.generate(input_ids, attention_mask=attention_mask, **settings)
    assert torch.equal(static.sequences, dynamic.sequences)
    # The same keys in the same order; the two attentions may sum them in another order.
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(dynamic.scores), rtol=1e-5, atol=1e-5)


def test_eager_dropout_on_attention_weights_matches_its_rate(make_model):
    """attention_dropout goes through the same dropout: α rows lose about that fraction of their entries."""
    model = make_model("eager", attention_dropout=0.25).train()
    torch.manual_seed(4)
    input_ids = torch.randint(3, model.config.vocab_size, (8, 30))
    outputs = model(input_ids=input_ids, decoder_input_ids=input_ids, output_attentions=True)
    weights = torch.cat([attention.flatten() for attention in outputs.encoder_attentions])
    assert abs((weights == 0).float().mean().item() - 0.25) < 0.02
