"""The pieces that exist for speed give the same results as the plain versions they replace.

CPU dropout from 16-bit draws, the in-place self-attention cache and the lean per-step input preparation of
generate() are each compared with torch's / transformers' own implementation.
"""

import pytest
import torch
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from hf_tiny_transformer.fast_paths_tiny_transformer import InPlaceAppendLayer, append_in_place, apply_dropout
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


# --------------------------------------------------------------------------------------------------------- the cache
def random_states(batch_size: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch_size, 2, length, 4, generator=generator) for _ in range(2))


def feed(layer, steps: list[int], batch_size: int = 3, seed: int = 0):
    """Update `layer` with chunks of `steps[i]` positions; return the final keys and values."""
    for index, length in enumerate(steps):
        keys, values = layer.update(*random_states(batch_size, length, seed + index))
    return keys, values


@pytest.mark.parametrize("steps", [[1] * 130, [5, 1, 1, 70, 1], [64], [65, 63, 1]])
def test_in_place_layer_matches_dynamic_layer_across_reallocations(steps):
    with torch.no_grad():
        ours = feed(InPlaceAppendLayer(), steps)
        reference = feed(DynamicLayer(), steps)
    for mine, theirs in zip(ours, reference):
        assert torch.equal(mine, theirs)


def test_in_place_layer_follows_beam_reordering_cropping_and_batch_selection():
    ours, reference = InPlaceAppendLayer(), DynamicLayer()
    beams = torch.tensor([2, 0, 0])
    with torch.no_grad():
        for layer in (ours, reference):
            feed(layer, [4, 1, 1])
            layer.reorder_cache(beams)
            feed(layer, [1], seed=10)
            layer.crop(-2)
            feed(layer, [1, 1], seed=20)
            layer.batch_select_indices(torch.tensor([0, 2]))
            feed(layer, [1], batch_size=2, seed=30)
            layer.batch_repeat_interleave(2)
            feed(layer, [1], batch_size=4, seed=40)
    assert ours.get_seq_length() == reference.get_seq_length() == 9
    assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values)


def test_in_place_layer_concatenates_when_autograd_records():
    layer = InPlaceAppendLayer()
    first = [state.requires_grad_() for state in random_states(1, 3, 0)]
    second = [state.requires_grad_() for state in random_states(1, 1, 1)]
    layer.update(*first)
    keys, values = layer.update(*second)
    (keys.sum() + values.sum()).backward()  # would fail if a buffer read by the first step had been overwritten
    assert torch.equal(first[0].grad, torch.ones_like(first[0]))


def test_only_empty_dynamic_layers_are_swapped():
    cache = DynamicCache()
    cache.layers.extend([DynamicLayer(), DynamicLayer()])
    with torch.no_grad():
        cache.layers[1].update(*random_states(1, 2, 0))
    append_in_place(cache)
    assert type(cache.layers[0]) is InPlaceAppendLayer
    assert type(cache.layers[1]) is DynamicLayer  # already holds states: left alone


def test_generation_uses_the_in_place_layers_and_matches_the_uncached_result(make_model, batch):
    model = make_model("sdpa")
    input_ids, attention_mask = batch(model.config.vocab_size, [7, 3, 5])
    settings = dict(max_new_tokens=70, min_new_tokens=70, do_sample=False)  # crosses the 64-position growth
    cached = model.generate(
        input_ids, attention_mask=attention_mask, return_dict_in_generate=True, use_cache=True, **settings
    )
    uncached = model.generate(input_ids, attention_mask=attention_mask, use_cache=False, **settings)
    assert torch.equal(cached.sequences, uncached)
    layers = getattr(cached, CACHE_FIELD).self_attention_cache.layers
    assert all(type(layer) is InPlaceAppendLayer for layer in layers)


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


def test_static_caches_still_get_transformers_masks(make_model, batch):
    model = make_model("sdpa")
    input_ids, attention_mask = batch(model.config.vocab_size, [6, 4])
    settings = dict(max_new_tokens=6, do_sample=False)
    static = model.generate(input_ids, attention_mask=attention_mask, cache_implementation="static", **settings)
    dynamic = model.generate(input_ids, attention_mask=attention_mask, **settings)
    assert torch.equal(static, dynamic)


def test_eager_dropout_on_attention_weights_matches_its_rate(make_model):
    """attention_dropout goes through the same dropout: α rows lose about that fraction of their entries."""
    model = make_model("eager", attention_dropout=0.25).train()
    torch.manual_seed(4)
    input_ids = torch.randint(3, model.config.vocab_size, (8, 30))
    outputs = model(input_ids=input_ids, decoder_input_ids=input_ids, output_attentions=True)
    weights = torch.cat([attention.flatten() for attention in outputs.encoder_attentions])
    assert abs((weights == 0).float().mean().item() - 0.25) < 0.02
