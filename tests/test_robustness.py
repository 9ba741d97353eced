"""Bad input, searched for rather than guessed: property-based configs and inputs, edge-case tensors, bf16 autocast.

Every bad config or input must end in a `ValueError` that names the field or argument; every valid one must give
finite outputs. Hypothesis example counts are kept small so the file runs in seconds on two CPU cores.
"""

import math

import pytest
import torch
from conftest import STEP_LOGITS
from huggingface_hub.errors import StrictDataclassError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
from hf_tiny_transformer.configuration_tiny_transformer import NORM_POSITIONS, POSITION_EMBEDDING_TYPES, SIZE_FIELDS

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ACTIVATIONS = ("relu", "gelu", "silu", "gelu_new", "tanh", "quick_gelu")
IMPLEMENTATIONS = ("eager", "sdpa")

# Self-contained (not the conftest factories): several messages below quote vocab_size=40 and d_model=32.
TINY = dict(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, num_attention_heads=4, ffn_dim=64)


def tiny_config(**overrides) -> TinyTransformerConfig:
    return TinyTransformerConfig(**{**TINY, "dropout": 0.0, **overrides})


def tiny_model(attn_implementation: str = "sdpa", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = TinyTransformerForConditionalGeneration(tiny_config(**overrides)).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in tensors)


# ---------------------------------------------------------------------------------------------------------------------
# Random valid configs: build, forward, backward, generate, all finite.
# ---------------------------------------------------------------------------------------------------------------------


@st.composite
def valid_configs(draw) -> TinyTransformerConfig:
    num_attention_heads = draw(st.integers(1, 4))
    d_model = num_attention_heads * draw(st.integers(1, 32 // num_attention_heads))
    return TinyTransformerConfig(
        vocab_size=draw(st.integers(4, 64)),
        d_model=d_model,
        num_attention_heads=num_attention_heads,
        encoder_layers=draw(st.integers(1, 2)),
        decoder_layers=draw(st.integers(1, 2)),
        ffn_dim=draw(st.integers(1, 64)),
        max_position_embeddings=draw(st.integers(4, 24)),
        dropout=draw(st.sampled_from([0.0, 0.1, 0.5])),
        attention_dropout=draw(st.sampled_from([0.0, 0.2])),
        activation_function=draw(st.sampled_from(ACTIVATIONS)),
        position_embedding_type=draw(st.sampled_from(POSITION_EMBEDDING_TYPES)),
        relative_attention_num_buckets=draw(st.sampled_from([4, 8, 32])),
        relative_attention_max_distance=draw(st.sampled_from([17, 128])),
        norm_position=draw(st.sampled_from(NORM_POSITIONS)),
        tie_word_embeddings=draw(st.booleans()),
        initializer_range=draw(st.sampled_from([0.02, 0.5])),
    )


@st.composite
def ids_and_mask(draw, vocab_size: int, max_length: int, batch_size: int):
    """[batch, length] ids and a 0/1 mask; rows may be partly or (with a small chance) entirely padding."""
    length = draw(st.integers(1, max_length))
    size = batch_size * length
    ids = torch.tensor(draw(st.lists(st.integers(0, vocab_size - 1), min_size=size, max_size=size)))
    ids = ids.view(batch_size, length)
    kept = [draw(st.integers(0, length)) for _ in range(batch_size)]
    mask = (torch.arange(length) < torch.tensor(kept).unsqueeze(1)).long()
    return ids, mask


@settings(SETTINGS, max_examples=20)
@given(data=st.data(), config=valid_configs(), implementation=st.sampled_from(IMPLEMENTATIONS))
def test_random_valid_configs_train_and_generate_with_finite_outputs(data, config, implementation):
    torch.manual_seed(0)
    model = TinyTransformerForConditionalGeneration(config)
    model.set_attn_implementation(implementation)
    batch_size = data.draw(st.integers(1, 3), label="batch_size")
    limit = config.max_position_embeddings
    input_ids, attention_mask = data.draw(ids_and_mask(config.vocab_size, limit, batch_size), label="source")
    labels, labels_kept = data.draw(ids_and_mask(config.vocab_size, limit, batch_size), label="labels")
    labels = labels.masked_fill(labels_kept == 0, -100)  # ignored positions, possibly whole rows

    model.train()
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    output.loss.backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    assert finite(output.loss, output.logits, *gradients)
    assert output.logits.shape == (batch_size, labels.shape[1], config.vocab_size)

    model.eval()
    max_new_tokens = min(3, limit - 1)
    generated = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False, **STEP_LOGITS
    )
    assert finite(*generated.logits)
    assert generated.sequences.shape[0] == batch_size and generated.sequences.shape[1] <= 1 + max_new_tokens
    assert bool(((generated.sequences >= 0) & (generated.sequences < config.vocab_size)).all())


# ---------------------------------------------------------------------------------------------------------------------
# Random invalid configs: a ValueError naming the field.
# ---------------------------------------------------------------------------------------------------------------------

JSON_JUNK = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
NOT_A_POSITIVE_INT = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), JSON_JUNK)
NOT_A_PROBABILITY = st.one_of(
    st.floats(allow_nan=True).filter(lambda value: not 0.0 <= value < 1.0), st.booleans(), JSON_JUNK
)
NOT_A_BOOL = st.one_of(st.integers(), st.floats(), JSON_JUNK)
BAD_VALUES = {
    **{
        name: NOT_A_POSITIVE_INT
        for name in SIZE_FIELDS[:7]  # the model's sizes (the relative buckets' have their own tests)
    },
    "dropout": NOT_A_PROBABILITY,
    "attention_dropout": NOT_A_PROBABILITY,
    "initializer_range": st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.booleans(), JSON_JUNK),
    "activation_function": st.one_of(
        st.text(max_size=6).filter(lambda name: name not in ACTIVATIONS + ("gelu",)), st.integers(), JSON_JUNK
    ),
    "position_embedding_type": st.one_of(st.text(max_size=6), st.integers(), JSON_JUNK).filter(
        lambda value: value not in POSITION_EMBEDDING_TYPES
    ),
    "norm_position": st.one_of(st.text(max_size=6), st.integers(), JSON_JUNK).filter(
        lambda value: value not in NORM_POSITIONS
    ),
    "pad_token_id": st.one_of(
        st.integers(max_value=-1), st.integers(min_value=40), st.none(), st.floats(), st.booleans(), st.text(max_size=2)
    ),
    **{
        name: st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=40),
            st.floats(),
            st.booleans(),
            st.text(max_size=2),
            st.lists(st.integers(0, 3), min_size=1, max_size=2),
        )
        for name in ("bos_token_id", "eos_token_id", "decoder_start_token_id")
    },
    "tie_word_embeddings": NOT_A_BOOL,
    "use_cache": NOT_A_BOOL,
    "is_encoder_decoder": st.one_of(st.just(False), NOT_A_BOOL),
    "relative_attention_num_buckets": st.one_of(
        NOT_A_POSITIVE_INT,
        st.integers(1, 3),
        st.integers(2, 64).map(lambda n: 2 * n + 1),  # fewer than 4, or odd
    ),
    "relative_attention_max_distance": st.one_of(NOT_A_POSITIVE_INT, st.integers(1, 4)),  # not above 8 buckets / 2
}


@settings(SETTINGS, max_examples=120)
@given(field=st.sampled_from(sorted(BAD_VALUES)), data=st.data())
def test_random_invalid_config_field_raises_value_error_naming_it(field, data):
    value = data.draw(BAD_VALUES[field], label=field)
    # transformers 5.17 type-checks the fields its base class declares (`is_encoder_decoder`) before ours run, with
    # huggingface_hub's StrictDataclassError, which names the field too.
    with pytest.raises((ValueError, StrictDataclassError), match=f"[`']{field}[`']"):
        tiny_config(**{field: value})


@settings(SETTINGS, max_examples=30)
@given(d_model=st.integers(1, 64), num_attention_heads=st.integers(1, 16))
def test_d_model_must_be_divisible_by_heads(d_model, num_attention_heads):
    if d_model % num_attention_heads == 0:
        assert tiny_config(d_model=d_model, num_attention_heads=num_attention_heads).head_dim >= 1
    else:
        with pytest.raises(ValueError, match="`d_model`.*`num_attention_heads`"):
            tiny_config(d_model=d_model, num_attention_heads=num_attention_heads)


def test_fields_edited_after_construction_are_checked_when_the_model_is_built():
    config = tiny_config()
    config.d_model = 30  # not divisible by 4 heads; attribute assignment bypasses __post_init__
    with pytest.raises(ValueError, match="`d_model`"):
        TinyTransformerForConditionalGeneration(config)


# ---------------------------------------------------------------------------------------------------------------------
# Bad tensors: each a ValueError naming the argument, never an error from inside torch.
# ---------------------------------------------------------------------------------------------------------------------

IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
DECODER_IDS = torch.tensor([[1, 5, 6], [1, 7, 8]])


@pytest.fixture(scope="module")
def shared_model() -> TinyTransformerForConditionalGeneration:
    """One tiny model (vocab 40, d_model 32) for the bad-input tests, which only call it."""
    return tiny_model()


@pytest.mark.parametrize(
    "inputs, match",
    [
        (dict(input_ids=IDS.float()), r"`input_ids` must hold integer token ids .* torch.float32"),
        (dict(input_ids=IDS.bool()), r"`input_ids` must hold integer token ids .* torch.bool"),
        (dict(input_ids=IDS.to(torch.uint8)), r"`input_ids` must hold integer token ids .* torch.uint8"),
        (dict(input_ids=IDS.to(torch.int16)), r"`input_ids` must hold integer token ids .* torch.int16"),
        (dict(decoder_input_ids=DECODER_IDS.double()), r"`decoder_input_ids` must hold integer token ids"),
        (dict(input_ids=IDS.numpy()), r"`input_ids` must be a torch.Tensor"),
        (dict(input_ids=IDS[0]), r"`input_ids` must have shape \[batch, length\], got shape \(4,\)"),
        (dict(input_ids=IDS[None]), r"`input_ids` must have shape \[batch, length\], got shape \(1, 2, 4\)"),
        (dict(decoder_input_ids=DECODER_IDS[0]), r"`decoder_input_ids` must have shape \[batch, length\]"),
        (dict(input_ids=IDS[:0], decoder_input_ids=DECODER_IDS[:0]), r"`input_ids` must hold at least one token"),
        (dict(input_ids=IDS[:, :0]), r"`input_ids` must hold at least one token"),
        (dict(decoder_input_ids=DECODER_IDS[:, :0]), r"`decoder_input_ids` must hold at least one token"),
        (dict(input_ids=torch.tensor([[5, -1, 7, 8], [1, 2, 3, 4]])), r"`input_ids` contains id -1, outside .*40\)"),
        (dict(input_ids=torch.tensor([[5, 40, 7, 8], [1, 2, 3, 4]])), r"`input_ids` contains id 40"),
        (dict(decoder_input_ids=torch.tensor([[1, 99, 6], [1, 7, 8]])), r"`decoder_input_ids` contains id 99"),
        (dict(attention_mask=torch.ones(2, 5)), r"`attention_mask` must have shape \[batch, length\] = \(2, 4\)"),
        (dict(attention_mask=torch.ones(4)), r"`attention_mask` must have shape .* got \(4,\)"),
        (dict(attention_mask=torch.ones(2, 1, 4, 4)), r"`attention_mask` must have shape .* got \(2, 1, 4, 4\)"),
        (dict(attention_mask=[[1, 1, 1, 1]] * 2), r"`attention_mask` must have shape .* got list"),
        (dict(attention_mask=torch.full((2, 4), 2)), r"`attention_mask` must hold only 1 \(token\) and 0 \(padding\)"),
        (dict(attention_mask=torch.full((2, 4), 0.5)), r"`attention_mask` must hold only 1 .* got 0.5"),
        (dict(attention_mask=torch.full((2, 4), -1)), r"`attention_mask` must hold only 1 .* got -1"),
        (dict(decoder_attention_mask=torch.ones(2, 4)), r"`decoder_attention_mask` must have shape .* \(2, 3\)"),
        (dict(input_ids=IDS[:1]), r"encoder states hold 1 sequences but the decoder input holds 2"),
        (dict(input_ids=None, encoder_outputs=(torch.randn(2, 4, 7),)), r"`encoder_hidden_states` must have shape"),
        (dict(input_ids=None, encoder_outputs=(torch.randn(4, 32),)), r"`encoder_hidden_states` must have shape"),
        (dict(input_ids=None, inputs_embeds=torch.randn(2, 4, 31)), r"`inputs_embeds` must have shape"),
        (dict(input_ids=None, inputs_embeds=torch.zeros(2, 4, 32, dtype=torch.long)), r"`inputs_embeds` must be a"),
        (dict(inputs_embeds=torch.randn(2, 4, 32)), r"exactly one of `input_ids` and `inputs_embeds`"),
        (dict(decoder_input_ids=None), r"Pass `decoder_input_ids`"),
    ],
)
def test_bad_input_raises_value_error_naming_it(shared_model, inputs, match):
    arguments = {"input_ids": IDS, "decoder_input_ids": DECODER_IDS, **inputs}
    with pytest.raises(ValueError, match=match):
        shared_model(**{name: value for name, value in arguments.items() if value is not None})


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([[1, 2, 40], [1, 2, 3]]), r"`labels` contains id 40, outside the vocabulary \[0, 40\) or -100"),
        (torch.tensor([[1, 2, -5], [1, 2, 3]]), r"`labels` contains id -5"),
        (torch.tensor([[1.0, 2.0, 3.0]] * 2), r"`labels` must hold integer token ids"),
        (torch.tensor([1, 2, 3]), r"`labels` must have shape \[batch, length\]"),
        (torch.tensor([[1, 2, 3, 4]] * 2), r"`labels` must have shape \[batch, target_length\] = \(2, 3\)"),
    ],
)
def test_bad_labels_raise_value_error_naming_them(shared_model, labels, match):
    inputs = dict(input_ids=IDS, labels=labels)
    if labels.shape[-1] == 4:
        inputs["decoder_input_ids"] = DECODER_IDS  # labels longer than the decoder input
    with pytest.raises(ValueError, match=match):
        shared_model(**inputs)


def test_int32_ids_and_labels_work_like_int64(shared_model):
    expected = shared_model(input_ids=IDS, labels=DECODER_IDS)
    actual = shared_model(input_ids=IDS.int(), labels=DECODER_IDS.int())
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=0)


def test_labels_that_are_all_ignored_give_zero_loss_not_nan(shared_model):
    output = shared_model(input_ids=IDS, labels=torch.full_like(DECODER_IDS, -100))
    assert output.loss.item() == 0.0


@settings(SETTINGS, max_examples=25)
@given(
    argument=st.sampled_from(["input_ids", "decoder_input_ids", "labels"]),
    bad_id=st.one_of(st.integers(-(2**63), -101), st.integers(-99, -1), st.integers(40, 2**63 - 1)),
    row=st.integers(0, 1),
    column=st.integers(0, 2),
)
def test_any_out_of_range_id_raises_value_error_naming_argument_and_id(shared_model, argument, bad_id, row, column):
    inputs = dict(input_ids=IDS.clone(), decoder_input_ids=DECODER_IDS.clone(), labels=DECODER_IDS.clone())
    inputs[argument][row, column] = bad_id
    with pytest.raises(ValueError, match=rf"`{argument}` contains id {bad_id}, outside the vocabulary"):
        shared_model(**inputs)


@settings(SETTINGS, max_examples=30)
@given(
    shape=st.lists(st.integers(0, 3), min_size=0, max_size=4),
    dtype=st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8, torch.float32, torch.bool]),
)
def test_any_ids_tensor_either_runs_or_raises_value_error_naming_input_ids(shared_model, shape, dtype):
    input_ids = torch.ones(shape, dtype=dtype)
    is_valid = dtype in (torch.int64, torch.int32) and len(shape) == 2 and min(shape) > 0
    if is_valid:
        assert finite(shared_model(input_ids=input_ids, decoder_input_ids=DECODER_IDS[:1].expand(shape[0], -1)).logits)
    else:
        with pytest.raises(ValueError, match="`input_ids`"):
            shared_model(input_ids=input_ids, decoder_input_ids=DECODER_IDS)


# ---------------------------------------------------------------------------------------------------------------------
# All-padding rows: finite everywhere, with every attention implementation, and harmless to the other rows.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("norm_position", NORM_POSITIONS)
def test_all_padding_rows_give_finite_outputs_and_gradients(implementation, norm_position):
    model = tiny_model(attn_implementation=implementation, norm_position=norm_position)
    input_ids = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 5:] = 0
    attention_mask[1] = 0  # an encoder row with no token at all
    decoder_input_ids = torch.randint(3, 40, (3, 4))
    decoder_attention_mask = torch.ones_like(decoder_input_ids)
    decoder_attention_mask[2] = 0  # and a decoder row with no token at all

    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
        labels=decoder_input_ids,
        output_attentions=implementation == "eager",
    )
    output.loss.backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    assert finite(output.loss, output.logits, output.encoder_last_hidden_state, *gradients)
    if implementation == "eager":
        assert finite(*output.encoder_attentions, *output.decoder_attentions, *output.cross_attentions)

    # The first row has real tokens and full masks: it must not notice its neighbours.
    alone = model(input_ids=input_ids[:1, :6], decoder_input_ids=decoder_input_ids[:1])
    torch.testing.assert_close(output.logits[:1], alone.logits, rtol=1e-5, atol=1e-5)

    generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3, **STEP_LOGITS)
    assert finite(*generated.logits)


# ---------------------------------------------------------------------------------------------------------------------
# Lengths past the position table.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned"])
@pytest.mark.parametrize("argument", ["input_ids", "decoder_input_ids", "labels"])
def test_length_past_the_position_table_raises_value_error(position_embedding_type, argument):
    model = tiny_model(position_embedding_type=position_embedding_type, max_position_embeddings=8)
    inputs = dict(input_ids=torch.full((1, 8), 5), decoder_input_ids=torch.full((1, 8), 5))
    assert finite(model(**inputs).logits)  # exactly max_position_embeddings long is fine
    if argument == "labels":
        del inputs["decoder_input_ids"]  # the decoder reads the labels shifted right
    inputs[argument] = torch.full((1, 9), 5)
    name = "input_ids" if argument == "input_ids" else "decoder_input_ids"
    with pytest.raises(ValueError, match=rf"`{name}` reaches position 9, beyond `max_position_embeddings` \(8\)"):
        model(**inputs)


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generating_past_the_position_table_raises_value_error(position_embedding_type, use_cache):
    model = tiny_model(position_embedding_type=position_embedding_type, max_position_embeddings=8)
    with pytest.raises(ValueError, match=r"`decoder_input_ids` reaches position 9, beyond `max_position_embeddings`"):
        model.generate(torch.full((1, 4), 5), max_new_tokens=12, min_new_tokens=12, use_cache=use_cache)


def test_relative_positions_have_no_length_limit():
    model = tiny_model(position_embedding_type="relative", max_position_embeddings=8)
    assert finite(model(input_ids=torch.full((1, 20), 5), decoder_input_ids=torch.full((1, 30), 5)).logits)
    generated = model.generate(torch.full((1, 20), 5), max_new_tokens=30, min_new_tokens=30, do_sample=False)
    assert generated.shape == (1, 31)


# ---------------------------------------------------------------------------------------------------------------------
# Mixed precision: bf16 autocast on CPU.
# ---------------------------------------------------------------------------------------------------------------------

# Measured on the input below (torch 2.13 CPU, init std 0.2 so logits reach ±4): max|Δlogits| ≈ 0.75% of
# max|logits|, |Δloss| ≤ 0.05% of the loss, ‖Δgrad‖/‖grad‖ ≤ 1.2%. The bounds leave about 2.5x headroom.
BF16_LOGITS_TOLERANCE = 0.02  # relative to max|logits| in fp32
BF16_LOSS_TOLERANCE = 0.005  # relative to the fp32 loss
BF16_GRADIENT_TOLERANCE = 0.03  # ‖g_bf16 − g_fp32‖ / ‖g_fp32‖


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("norm_position", NORM_POSITIONS)
def test_bf16_autocast_forward_and_backward_are_finite_and_close_to_fp32(implementation, norm_position):
    model = tiny_model(attn_implementation=implementation, norm_position=norm_position, initializer_range=0.2)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 40, (4, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    attention_mask[2] = 0  # an all-padding row too
    labels = torch.randint(3, 40, (4, 10), generator=generator)
    # A source of only padding has no defined attention: SDPA gives it zeros, the eager form a uniform average (each
    # finite), and bf16 training on a CPU runs the eager form (fast_paths_tiny_transformer.py). So that row is checked
    # for finite outputs only, and its labels are left out of the loss that the gradients compare.
    has_tokens = attention_mask.bool().any(dim=-1)
    labels[~has_tokens] = -100

    def run(enabled: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        output.loss.backward()
        gradient = torch.cat([parameter.grad.flatten() for parameter in model.parameters()])
        return output, gradient

    reference, reference_gradient = run(enabled=False)
    mixed, mixed_gradient = run(enabled=True)
    assert mixed.logits.dtype == torch.bfloat16  # autocast really ran the matmuls in bf16
    assert finite(mixed.loss, mixed.logits, mixed_gradient)
    logits_error = (mixed.logits.float() - reference.logits)[has_tokens].abs().max()
    assert logits_error <= BF16_LOGITS_TOLERANCE * reference.logits[has_tokens].abs().max()
    assert abs(mixed.loss.item() - reference.loss.item()) <= BF16_LOSS_TOLERANCE * reference.loss.item()
    gradient_error = (mixed_gradient - reference_gradient).norm() / reference_gradient.norm()
    assert gradient_error <= BF16_GRADIENT_TOLERANCE
