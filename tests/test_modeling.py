"""Forward pass: outputs, attention semantics, backends, padding, embeddings inputs, gradients."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSeq2SeqLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput

import hf_tiny_transformer.modeling_tiny_transformer as modeling
from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration, TinyTransformerModel
from hf_tiny_transformer.configuration_tiny_transformer import NORM_POSITIONS


def copy_with_attention(model, implementation):
    twin = TinyTransformerForConditionalGeneration(model.config.__class__(**model.config.to_diff_dict())).eval()
    twin.load_state_dict(model.state_dict())
    twin.set_attn_implementation(implementation)
    return twin


def test_auto_classes_build_our_models(make_config):
    config = make_config()
    assert isinstance(AutoModel.from_config(config), TinyTransformerModel)
    assert isinstance(AutoModelForSeq2SeqLM.from_config(config), TinyTransformerForConditionalGeneration)


def test_default_attention_is_sdpa(make_model):
    assert make_model().config._attn_implementation == "sdpa"


def test_outputs_have_expected_types_and_shapes(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [7, 5, 3])
    labels = torch.randint(3, 40, (3, 4))
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert isinstance(output, Seq2SeqLMOutput)
    assert output.logits.shape == (3, 4, 40)
    assert output.encoder_last_hidden_state.shape == (3, 7, 32)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)

    base = model.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=labels)
    assert isinstance(base, Seq2SeqModelOutput)
    assert base.last_hidden_state.shape == (3, 4, 32)


def test_head_outputs_are_the_base_models_fields_and_its_logits(make_model, batch):
    """The head's output is the base model's, its last hidden states turned into logits: every other field equal,
    and the caller's cache comes back."""
    model = make_model(attn_implementation="eager")
    input_ids, attention_mask = batch(40, [7, 5])
    decoder_input_ids = torch.randint(3, 40, (2, 4))
    outputs = {}
    for name, forward in (("head", model), ("base", model.model)):
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        outputs[name] = forward(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, cache=cache,
            use_cache=True, output_attentions=True, output_hidden_states=True,
        )  # fmt: skip
        assert getattr(outputs[name], modeling.CACHE_FIELD) is cache
    head, base = outputs["head"], outputs["base"]
    assert set(head.keys()) == set(base.keys()) - {"last_hidden_state"} | {"logits"}
    torch.testing.assert_close(head.logits, model.lm_head(base.last_hidden_state), rtol=0, atol=0)
    for name in base.keys() - {"last_hidden_state", modeling.CACHE_FIELD}:  # states and attentions, tuples or tensors
        torch.testing.assert_close(head[name], base[name], rtol=0, atol=0)


def test_self_attention_splits_the_fused_projection_into_query_key_and_value(make_model):
    """qkv_proj's output rows are [W_q; W_k; W_v] (nn.Linear's [out, in]), each split into heads: α and the output
    equal the design document's equations computed from the three slices."""
    model = make_model(attn_implementation="eager")
    attention = model.model.encoder.layers[0].self_attn
    heads, head_dim, d_model = attention.num_heads, attention.head_dim, model.config.d_model
    hidden_states = torch.randn(2, 5, d_model)
    output, weights = attention(hidden_states, None)

    def heads_of(part: int) -> torch.Tensor:  # [batch, length, d] -> [batch, heads, length, head_dim]
        rows = slice(part * d_model, (part + 1) * d_model)
        projected = F.linear(hidden_states, attention.qkv_proj.weight[rows], attention.qkv_proj.bias[rows])
        return projected.view(2, 5, heads, head_dim).transpose(1, 2)

    query, key, value = heads_of(0), heads_of(1), heads_of(2)
    expected_weights = torch.softmax(query @ key.transpose(2, 3) / head_dim**0.5, dim=-1)  # α = softmax(QKᵀ/√d)
    torch.testing.assert_close(weights, expected_weights)
    expected_output = attention.out_proj((expected_weights @ value).transpose(1, 2).reshape(2, 5, d_model))
    torch.testing.assert_close(output, expected_output)


def test_return_dict_false_gives_tuples_starting_with_loss(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [6, 6])
    labels = torch.randint(3, 40, (2, 5))
    as_dict = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    as_tuple = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    base_tuple = model.model(input_ids=input_ids, decoder_input_ids=labels, return_dict=False, use_cache=False)
    assert isinstance(base_tuple, tuple) and base_tuple[0].shape == (2, 5, 32)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_weights_are_row_stochastic_causal_and_ignore_padding(make_model, batch, implementation):
    model = make_model(attn_implementation=implementation)
    input_ids, attention_mask = batch(40, [6, 4])
    decoder_input_ids = torch.randint(3, 40, (2, 5))
    output = model(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, output_attentions=True
    )
    heads = model.config.num_attention_heads
    assert len(output.encoder_attentions) == model.config.encoder_layers
    assert len(output.decoder_attentions) == len(output.cross_attentions) == model.config.decoder_layers
    for encoder_attention in output.encoder_attentions:
        assert encoder_attention.shape == (2, heads, 6, 6)
        torch.testing.assert_close(encoder_attention.sum(-1), torch.ones(2, heads, 6))
        assert torch.all(encoder_attention[1, :, :, 4:] == 0)  # padded keys of the shorter example
    for self_attention in output.decoder_attentions:
        assert self_attention.shape == (2, heads, 5, 5)
        torch.testing.assert_close(self_attention.sum(-1), torch.ones(2, heads, 5))
        above_diagonal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        assert torch.all(self_attention[..., above_diagonal] == 0)
    for cross_attention in output.cross_attentions:
        assert cross_attention.shape == (2, heads, 5, 6)
        torch.testing.assert_close(cross_attention.sum(-1), torch.ones(2, heads, 5))
        assert torch.all(cross_attention[1, :, :, 4:] == 0)


def test_hidden_states_cover_embeddings_and_every_layer(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [5, 5])
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=input_ids[:, :3],
        output_hidden_states=True,
    )
    assert len(output.encoder_hidden_states) == model.config.encoder_layers + 1
    assert len(output.decoder_hidden_states) == model.config.decoder_layers + 1
    torch.testing.assert_close(output.encoder_hidden_states[-1], output.encoder_last_hidden_state)
    assert output.decoder_hidden_states[0].shape == (2, 3, 32)


@pytest.mark.parametrize("padding_side", [None, "right", "left"])
@pytest.mark.parametrize("norm_position", NORM_POSITIONS)
def test_eager_and_sdpa_agree_in_fp32(make_model, batch, padding_side, norm_position):
    model = make_model(norm_position=norm_position)
    lengths = [7, 7, 7] if padding_side is None else [7, 4, 2]
    input_ids, attention_mask = batch(40, lengths, side=padding_side or "right")
    decoder_input_ids = torch.randint(3, 40, (3, 6))
    eager = copy_with_attention(model, "eager")
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    sdpa_logits = model(**kwargs).logits
    eager_logits = eager(**kwargs).logits
    assert (sdpa_logits - eager_logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_eager_and_sdpa_agree_in_bf16(make_model, batch, padding_side):
    model = make_model().to(torch.bfloat16)
    eager = copy_with_attention(model, "eager").to(torch.bfloat16)
    input_ids, attention_mask = batch(40, [7, 3], side=padding_side)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :4])
    difference = (model(**kwargs).logits.float() - eager(**kwargs).logits.float()).abs().max().item()
    assert difference < 3e-2


def test_bf16_training_on_cpu_runs_the_eager_attention_under_sdpa(make_model, batch, monkeypatch):
    # SDPA's bf16 backward on a CPU is several times slower than the eager attention's (fast_paths_tiny_transformer.py),
    # so an SDPA model training under autocast computes exactly what the eager model does; evaluation keeps SDPA.
    calls = []
    eager_forward = modeling.eager_attention_forward
    monkeypatch.setattr(modeling, "eager_attention_forward", lambda *a, **k: calls.append(1) or eager_forward(*a, **k))
    model = make_model()
    eager = copy_with_attention(model, "eager")
    input_ids, attention_mask = batch(40, [7, 3])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids[:, :4])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**kwargs)
    assert calls == []
    losses, gradients, eager_calls = [], [], []
    for twin in (model, eager):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = twin(**kwargs).loss
        loss.backward()
        losses.append(loss.item())
        gradients.append({name: parameter.grad for name, parameter in twin.named_parameters()})
        eager_calls.append(len(calls) - sum(eager_calls))
    assert eager_calls == [6, 6]  # 2 encoder self-attentions, 2 decoder self- and 2 encoder-decoder attentions
    assert losses[0] == losses[1]
    for name, sdpa_gradient in gradients[0].items():
        # transformers builds the decoder's causal mask per backend (none for SDPA, [batch, 1, query, key] for eager),
        # so a relative position-bias table sums its gradient over another shape: equal up to summation order.
        exact = dict(atol=0, rtol=0) if "position_bias" not in name else dict(atol=1e-4, rtol=0.02)
        torch.testing.assert_close(sdpa_gradient, gradients[1][name], **exact, msg=name)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_example_matches_the_example_alone(make_model, batch, padding_side):
    model = make_model()
    input_ids, attention_mask = batch(40, [8, 5], side=padding_side)
    decoder_input_ids = torch.randint(3, 40, (2, 4))
    together = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    short = input_ids[1][attention_mask[1].bool()].unsqueeze(0)
    alone = model(input_ids=short, decoder_input_ids=decoder_input_ids[1:]).logits
    torch.testing.assert_close(together[1:], alone, atol=1e-5, rtol=1e-5)


def test_inputs_embeds_match_input_ids(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [6, 4])
    decoder_input_ids = torch.randint(3, 40, (2, 3))
    from_ids = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    embed = model.get_input_embeddings()
    from_embeds = model(
        inputs_embeds=embed(input_ids),
        attention_mask=attention_mask,
        decoder_inputs_embeds=embed(decoder_input_ids),
    ).logits
    torch.testing.assert_close(from_ids, from_embeds)


def test_gradients_reach_hidden_states_attentions_and_every_parameter(make_model, batch):
    model = make_model(attn_implementation="eager").train()
    input_ids, attention_mask = batch(40, [6, 4])
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=torch.randint(3, 40, (2, 5)),
        output_attentions=True,
        output_hidden_states=True,
    )
    retained = [
        output.encoder_hidden_states[0],
        output.decoder_hidden_states[0],
        output.encoder_attentions[0],
        output.decoder_attentions[0],
        output.cross_attentions[0],
    ]
    for tensor in retained:
        tensor.retain_grad()
    output.loss.backward()
    for tensor in retained:
        assert tensor.grad is not None
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_dropout_only_acts_in_training(make_model, batch):
    model = make_model(dropout=0.3, attention_dropout=0.3)
    input_ids, _ = batch(40, [6])
    kwargs = dict(input_ids=input_ids, decoder_input_ids=input_ids)
    torch.testing.assert_close(model(**kwargs).logits, model(**kwargs).logits)
    model.train()
    assert not torch.equal(model(**kwargs).logits, model(**kwargs).logits)


def test_tied_stacks_share_one_embedding_module_and_untied_ones_have_separate_parameters(make_model, tmp_path):
    tied = make_model()
    assert tied.lm_head.weight is tied.model.encoder.embed_tokens.weight
    # One module, not one parameter in two modules: FSDP2 (through Accelerate) shards the input embedding in a group
    # of its own, and a parameter also held by a module of another group would be trained as two copies.
    assert tied.model.decoder.embed_tokens is tied.model.encoder.embed_tokens
    tied.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert reloaded.model.decoder.embed_tokens is reloaded.model.encoder.embed_tokens
    assert reloaded.lm_head.weight is reloaded.model.encoder.embed_tokens.weight
    untied = make_model(tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.encoder.embed_tokens.weight
    assert untied.model.decoder.embed_tokens is not untied.model.encoder.embed_tokens
    parameters = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert parameters == 2 * 40 * 32


@pytest.mark.slow
def test_flex_attention_matches_sdpa_if_available(make_model, batch, position_embedding_type):
    pytest.importorskip("torch.nn.attention.flex_attention")
    if position_embedding_type == "relative":
        pytest.skip("flex attention cannot add the relative position bias: see the test of its error below")
    model = make_model()
    input_ids, attention_mask = batch(40, [8, 5])
    # Decoder inputs as long as the source: flex attention compiles a kernel per shape and mask (on an empty compile
    # cache, 30 s of CPU with 4 decoder tokens, 24 s with 8).
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :8])
    try:
        flex = copy_with_attention(model, "flex_attention")
    except (ImportError, ValueError) as error:
        pytest.skip(f"flex attention unavailable here: {error}")
    with torch.no_grad():  # flex attention has no CPU backward
        torch.testing.assert_close(flex(**kwargs).logits, model(**kwargs).logits, atol=1e-4, rtol=1e-4)


def test_output_attentions_under_a_backend_without_weights_is_a_clear_error(make_model):
    model = make_model()
    attention = model.model.encoder.layers[0].self_attn
    model.config._attn_implementation = "flex_attention"  # its BlockMask cannot feed the eager path that returns α
    with pytest.raises(ValueError, match="output_attentions"):
        attention(torch.randn(1, 3, model.config.d_model), None, output_attentions=True)


@pytest.mark.parametrize("implementation", ["flex_attention", "flash_attention_2"])
def test_relative_positions_under_a_backend_that_cannot_add_a_bias_is_a_clear_error(implementation):
    config = TinyTransformerConfig(vocab_size=40, d_model=32, num_attention_heads=4, position_embedding_type="relative")
    model = TinyTransformerForConditionalGeneration(config).eval()
    model.config._attn_implementation = implementation  # set directly: flash attention is not installed here
    ids = torch.randint(3, 40, (1, 4))
    with pytest.raises(ValueError, match=rf"position_embedding_type='relative'.*{implementation}.*'sdpa' or 'eager'"):
        model(input_ids=ids, decoder_input_ids=ids)


def relative_model(reference_length: int | None, seed: int = 0) -> TinyTransformerForConditionalGeneration:
    config = TinyTransformerConfig(
        vocab_size=40, d_model=32, num_attention_heads=4, position_embedding_type="relative",
        relative_attention_reference_length=reference_length,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = TinyTransformerForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases far from zero, so that scaling them shows
        for bias in (
            model.model.decoder.position_bias.from_start.bias,
            model.model.decoder.position_bias.from_end.bias,
        ):
            bias.weight.normal_(0, 2.0)
    return model


def encoder_attention_bias(model, source_positions: torch.Tensor) -> torch.Tensor:
    position_ids = torch.arange(3)[None]
    return model.model.decoder.position_bias(position_ids, 3, source_positions)[1]


def test_encoder_decoder_bias_is_unchanged_up_to_the_reference_length_and_grows_as_log_squared_past_it():
    plain, scaled = relative_model(None), relative_model(6)
    short, long = torch.arange(6)[None], torch.arange(12)[None]
    # Sources of up to 6 tokens: exactly the bias of a model without scaling, in every row.
    assert torch.equal(encoder_attention_bias(scaled, short), encoder_attention_bias(plain, short))
    # 12 tokens: (log 12 / log 6)^2 times the unscaled bias.
    factor = (torch.log(torch.tensor(12.0)) / torch.log(torch.tensor(6.0))) ** 2
    torch.testing.assert_close(encoder_attention_bias(scaled, long), encoder_attention_bias(plain, long) * factor)


def test_encoder_decoder_bias_is_scaled_by_each_rows_own_source_length():
    plain, scaled = relative_model(None), relative_model(4)
    # Row 0 has 8 real tokens, row 1 three (then padding, which token_positions counts as position 0).
    attention_mask = torch.tensor([[1] * 8, [1, 1, 1] + [0] * 5])
    source_positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    got, unscaled = encoder_attention_bias(scaled, source_positions), encoder_attention_bias(plain, source_positions)
    factor = (torch.log(torch.tensor(8.0)) / torch.log(torch.tensor(4.0))) ** 2
    torch.testing.assert_close(got[0], unscaled[0] * factor)
    assert torch.equal(got[1], unscaled[1])


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_length_scaled_bias_keeps_cached_generation_equal_to_a_full_forward(implementation):
    model = relative_model(4, seed=1)
    model.set_attn_implementation(implementation)
    input_ids = torch.randint(5, 40, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # a padded row: its own, shorter source length
    generated = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False, min_new_tokens=6
    )
    full = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=generated[:, :-1]).logits
    assert torch.equal(full.argmax(-1), generated[:, 1:])
