"""The pieces that exist for speed give the same results as the plain versions they replace.

CPU dropout from 16-bit draws and the lean per-step input preparation of generate() are each compared with torch's /
transformers' own implementation; eager decoding steps with a static cache, which attend to its written slots only,
with decoding on a dynamic cache; generate()'s own dynamic cache, written in place, with transformers' DynamicLayer.
"""

import pytest
import torch
from conftest import STEP_SCORES
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache, StaticLayer

import hf_tiny_transformer.fast_paths_tiny_transformer as fast_paths
import hf_tiny_transformer.modeling_tiny_transformer as modeling
from hf_tiny_transformer.fast_paths_tiny_transformer import PreallocatedDynamicLayer, apply_dropout, written_slots
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


# ------------------------------------------------------------------------------ generate's own dynamic cache
def assert_holds_as_dynamic_layer(layer: DynamicLayer, reference: DynamicLayer):
    assert layer.get_seq_length() == reference.get_seq_length()
    assert torch.equal(layer.keys, reference.keys) and torch.equal(layer.values, reference.values)


def test_preallocated_layer_holds_what_a_dynamic_layer_holds_through_every_cache_operation(monkeypatch):
    """Steps written in place, then each DynamicLayer operation that replaces or cuts the tensors (beam search's
    reorder, crop, batch selection and repetition, reset), each followed by more steps: both layers return and hold
    the same tensors throughout, and steps after an operation are written in place again."""
    monkeypatch.setattr(fast_paths, "IN_PLACE_MIN_ELEMENTS", 0)  # in place even at this tiny size
    generator = torch.Generator().manual_seed(0)

    def step(layer: DynamicLayer, reference: DynamicLayer, batch: int, length: int = 1):
        keys, values = (torch.randn(batch, 2, length, 4, generator=generator) for _ in range(2))
        returned, expected = layer.update(keys, values), reference.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(returned, expected))
        assert torch.equal(layer.keys, reference.keys) and torch.equal(layer.values, reference.values)
        return returned

    layer, reference = PreallocatedDynamicLayer(capacity=6), DynamicLayer()
    with torch.no_grad():
        first = step(layer, reference, batch=3, length=3)
        assert layer.in_place and layer.keys.shape == (3, 2, 3, 4)
        for _ in range(3):  # up to the capacity, in the same buffers
            step(layer, reference, batch=3)
        assert layer.keys.data_ptr() == first[0].data_ptr() and layer.capacity == 6
        assert torch.equal(first[0], reference.keys[:, :, :3])  # an earlier step's keys stay what they were
        operations = {
            "reorder_cache": lambda cache_layer: cache_layer.reorder_cache(torch.tensor([2, 0, 0])),
            "crop": lambda cache_layer: cache_layer.crop(-2),
            "batch_select_indices": lambda cache_layer: cache_layer.batch_select_indices(torch.tensor([0, 2])),
            "batch_repeat_interleave": lambda cache_layer: cache_layer.batch_repeat_interleave(2),
            "reset": lambda cache_layer: cache_layer.reset(),
        }
        batch = 3
        for name, operation in operations.items():
            operation(layer)
            operation(reference)
            batch = {"batch_select_indices": 2, "batch_repeat_interleave": 4}.get(name, batch)
            after = step(layer, reference, batch)  # past the first capacity after reorder_cache: the buffers grow
            assert step(layer, reference, batch)[0].data_ptr() == after[0].data_ptr(), name  # in place again
        assert layer.capacity > 6  # outgrown after the reorder: the buffers grew


def test_preallocated_layer_concatenates_with_gradients_in_small_caches_and_after_inference_mode(monkeypatch):
    keys, values = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    small = PreallocatedDynamicLayer(capacity=8)  # 1 x 2 x 4 x 8 elements: concatenating is the cheaper update
    small.update(keys, values)
    assert not small.in_place and small.keys._base is None
    monkeypatch.setattr(fast_paths, "IN_PLACE_MIN_ELEMENTS", 0)
    trained = PreallocatedDynamicLayer(capacity=8)
    with_grad = keys.clone().requires_grad_()
    trained.update(with_grad, values)
    trained.update(with_grad, values)[0].sum().backward()  # in place, this would fail: a kept tensor changed
    assert torch.equal(with_grad.grad, torch.full_like(keys, 2.0))
    layer = PreallocatedDynamicLayer(capacity=8)
    with torch.inference_mode():
        layer.update(keys, values)
    with torch.no_grad():  # inference tensors cannot be written outside inference mode: new buffers
        written_keys, _ = layer.update(keys + 1, values)
    assert torch.equal(written_keys, torch.cat([keys, keys + 1], dim=-2)) and not written_keys.is_inference()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_writes_its_own_cache_in_place_and_leaves_the_callers_cache_alone(
    make_model, batch, monkeypatch, num_beams
):
    """generate()'s default cache gets PreallocatedDynamicLayers (greedy) and gives the tokens and scores of
    transformers' DynamicLayers (a cache the caller passes, which stays as it was made), greedy and with beam search."""
    monkeypatch.setattr(fast_paths, "IN_PLACE_MIN_ELEMENTS", 0)  # in place even at this tiny size
    model = make_model("sdpa")
    input_ids, attention_mask = batch(model.config.vocab_size, [6, 4])
    settings = dict(max_new_tokens=7, min_new_tokens=7, num_beams=num_beams, do_sample=False, **STEP_SCORES)
    own = model.generate(input_ids, attention_mask=attention_mask, **settings)
    callers_cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    passed = model.generate(input_ids, attention_mask=attention_mask, **{CACHE_FIELD: callers_cache}, **settings)
    assert torch.equal(own.sequences, passed.sequences)
    torch.testing.assert_close(torch.stack(own.scores), torch.stack(passed.scores), rtol=1e-5, atol=1e-5)
    own_cache = getattr(own, CACHE_FIELD)
    assert getattr(passed, CACHE_FIELD) is callers_cache
    assert all(type(layer) is DynamicLayer for layer in callers_cache.self_attention_cache.layers)
    # Beam search reorders the whole cache at every step: there transformers' DynamicLayer is the faster (it only
    # copies what the reorder copied; bench/README.md), and generate keeps it.
    own_kind = PreallocatedDynamicLayer if num_beams == 1 else DynamicLayer
    for layer, reference in zip(own_cache.self_attention_cache.layers, callers_cache.self_attention_cache.layers):
        assert type(layer) is own_kind and getattr(layer, "in_place", True)
        assert_holds_as_dynamic_layer(layer, reference)  # the written positions only
