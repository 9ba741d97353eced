"""generate(): cache correctness, padding invariance, dict outputs, assisted decoding, static cache."""

import pytest
import torch
from conftest import STEP_SCORES
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from hf_tiny_transformer.modeling_tiny_transformer import CACHE_FIELD

GREEDY = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
# GREEDY, returning a dict that holds every step's scores.
GREEDY_WITH_SCORES = dict(**GREEDY, **STEP_SCORES)


@pytest.fixture
def decisive_model(make_model):
    """A random model with a larger init scale, so its greedy outputs vary from token to token."""
    return make_model(initializer_range=0.5, seed=3)


@pytest.mark.parametrize(
    "mode",
    [
        dict(num_beams=1),
        dict(num_beams=3),
        dict(num_beams=3, num_return_sequences=2),
        dict(do_sample=True, top_k=5),
    ],
    ids=["greedy", "beam", "beam-multiple", "sampling"],
)
def test_cached_generation_matches_uncached(decisive_model, batch, mode):
    input_ids, attention_mask = batch(40, [9, 6, 3])
    outputs = {}
    for use_cache in (True, False):
        torch.manual_seed(0)
        outputs[use_cache] = decisive_model.generate(
            input_ids, attention_mask=attention_mask, use_cache=use_cache, **{**GREEDY, **mode}
        )
    assert torch.equal(outputs[True], outputs[False])
    assert outputs[True].shape[1] == 13  # decoder start + 12 new tokens


def test_cached_greedy_scores_match_uncached_scores(decisive_model, batch):
    """Token equality alone could hide small cache errors behind a dominant argmax: compare every step's scores. In
    float64: the two paths multiply matrices of different shapes, whose float32 rounding depends on the CPU's kernels
    (5e-5 of scores up to 9 on an AMD EPYC, under 1e-5 on an Intel Xeon), while a cache error moves a score by far more
    than float64's rounding (generate hands the scores back in float32: one rounding, the same on both paths but for
    the last bit)."""
    input_ids, attention_mask = batch(40, [9, 6, 3])
    model = decisive_model.double()
    scores = {}
    for use_cache in (True, False):
        result = model.generate(input_ids, attention_mask=attention_mask, use_cache=use_cache, **GREEDY_WITH_SCORES)
        scores[use_cache] = torch.stack(result.scores)
    assert model.dtype == torch.float64
    torch.testing.assert_close(scores[True], scores[False], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_padded_batch_generates_what_each_example_generates_alone(decisive_model, batch, padding_side, num_beams):
    input_ids, attention_mask = batch(40, [9, 6, 3], side=padding_side)
    together = decisive_model.generate(input_ids, attention_mask=attention_mask, num_beams=num_beams, **GREEDY)
    for row in range(3):
        alone = input_ids[row][attention_mask[row].bool()].unsqueeze(0)
        assert torch.equal(decisive_model.generate(alone, num_beams=num_beams, **GREEDY)[0], together[row])


def test_incremental_cached_logits_match_full_forward(decisive_model, batch):
    input_ids, attention_mask = batch(40, [7, 4])
    decoder_input_ids = torch.randint(3, 40, (2, 6))
    full = decisive_model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    encoder_outputs = decisive_model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    cache = None
    for step in range(6):
        output = decisive_model(
            encoder_outputs=encoder_outputs,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids[:, step : step + 1],
            cache=cache,
            use_cache=True,
        )
        cache = output.cache if "cache" in output else output.past_key_values
        torch.testing.assert_close(output.logits[:, 0], full.logits[:, step], atol=1e-5, rtol=1e-5)
    assert isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() == 6


def test_cache_is_accepted_under_its_older_name_past_key_values(decisive_model, batch):
    input_ids, _ = batch(40, [5])
    encoder_outputs = decisive_model.get_encoder()(input_ids=input_ids)
    start = torch.tensor([[decisive_model.config.decoder_start_token_id]])
    first = decisive_model(encoder_outputs=encoder_outputs, decoder_input_ids=start, use_cache=True)
    cache = first.cache if "cache" in first else first.past_key_values
    next_token = first.logits[:, -1:].argmax(-1)
    via_old_name = decisive_model(
        encoder_outputs=encoder_outputs, decoder_input_ids=next_token, past_key_values=cache, use_cache=True
    )
    assert cache.get_seq_length() == 2  # the cache was used and extended, not silently ignored
    reference = decisive_model(encoder_outputs=encoder_outputs, decoder_input_ids=torch.cat([start, next_token], 1))
    torch.testing.assert_close(via_old_name.logits[:, 0], reference.logits[:, 1], atol=1e-5, rtol=1e-5)


def test_cached_decoding_feeds_one_token_per_step_and_projects_encoder_states_once(decisive_model, batch):
    """The structural reason cached decoding costs the same per token however long the output grows."""
    self_attention_lengths, cross_projections = [], []
    first_layer = decisive_model.model.decoder.layers[0]
    hooks = [
        first_layer.self_attn.qkv_proj.register_forward_hook(
            lambda module, args, out: self_attention_lengths.append(args[0].shape[1])
        ),
        first_layer.encoder_attn.kv_proj.register_forward_hook(lambda *_: cross_projections.append(1)),
    ]
    input_ids, attention_mask = batch(40, [9, 6])
    decisive_model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    for hook in hooks:
        hook.remove()
    assert self_attention_lengths == [1] * 12
    assert len(cross_projections) == 1


def test_generate_returns_scores_and_attentions_in_a_dict(decisive_model, batch):
    input_ids, attention_mask = batch(40, [7, 5])
    result = decisive_model.generate(
        input_ids,
        attention_mask=attention_mask,
        output_attentions=True,
        output_hidden_states=True,
        **GREEDY_WITH_SCORES,
    )
    assert result.sequences.shape == (2, 13)
    assert len(result.scores) == 12 and result.scores[0].shape == (2, 40)
    assert len(result.encoder_attentions) == decisive_model.config.encoder_layers
    assert result.encoder_attentions[0].shape == (2, 4, 7, 7)
    assert len(result.decoder_attentions) == 12
    assert result.cross_attentions[-1][0].shape == (2, 4, 1, 7)
    assert len(result.decoder_hidden_states) == 12
    chosen = torch.stack([scores.argmax(-1) for scores in result.scores], dim=1)
    assert torch.equal(chosen, result.sequences[:, 1:])


def test_assisted_decoding_gives_the_greedy_output(decisive_model, make_model, batch):
    assistant = make_model(seed=11, initializer_range=0.5, encoder_layers=1, decoder_layers=1)
    input_ids, _ = batch(40, [8])
    plain = decisive_model.generate(input_ids, **GREEDY)
    assisted = decisive_model.generate(input_ids, assistant_model=assistant, **GREEDY)
    assert torch.equal(plain, assisted)


def test_static_cache_generation_matches_dynamic(decisive_model, batch):
    input_ids, attention_mask = batch(40, [9, 6])
    dynamic = decisive_model.generate(input_ids, attention_mask=attention_mask, **GREEDY)
    static = decisive_model.generate(input_ids, attention_mask=attention_mask, cache_implementation="static", **GREEDY)
    assert torch.equal(dynamic, static)


def test_generation_stops_at_eos_and_pads_finished_rows(make_model, batch):
    model = make_model(initializer_range=0.5, seed=5)
    input_ids, attention_mask = batch(40, [6, 6, 6], seed=4)
    first_tokens = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=1)[:, 1]
    model.generation_config.eos_token_id = int(first_tokens[0])
    out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8)
    assert out[0, 1] == first_tokens[0]
    assert torch.all(out[0, 2:] == model.config.pad_token_id)


def test_user_supplied_cache_is_used(decisive_model, batch):
    input_ids, _ = batch(40, [6])
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    out = (
        decisive_model.generate(input_ids, cache=cache, **GREEDY)
        if "cache" in _forward_arguments(decisive_model)
        else decisive_model.generate(input_ids, past_key_values=cache, **GREEDY)
    )
    assert torch.equal(out, decisive_model.generate(input_ids, **GREEDY))
    assert cache.get_seq_length() == 12


def test_forward_gives_back_the_callers_cache_holding_only_what_it_wrote(decisive_model, batch):
    """transformers' own cache layers stay in the cache the caller passed, each holding exactly the keys and values
    of the positions decoded so far (no buffer with unwritten slots): what torch.export's outputs must match."""
    input_ids, attention_mask = batch(40, [6, 4])
    encoder_outputs = decisive_model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    cache = EncoderDecoderCache(DynamicCache(config=decisive_model.config), DynamicCache(config=decisive_model.config))
    layers = list(cache.self_attention_cache.layers)
    decoder_input_ids = torch.tensor([[1, 5, 7], [1, 6, 8]])
    inputs = dict(encoder_outputs=encoder_outputs, attention_mask=attention_mask, use_cache=True)
    with torch.no_grad():
        first = decisive_model(decoder_input_ids=decoder_input_ids[:, :2], **{CACHE_FIELD: cache}, **inputs)
        second = decisive_model(decoder_input_ids=decoder_input_ids[:, 2:], **{CACHE_FIELD: cache}, **inputs)
    assert getattr(first, CACHE_FIELD) is cache and getattr(second, CACHE_FIELD) is cache
    assert cache.self_attention_cache.layers == layers  # the same layer objects, none swapped
    for layer in cache.self_attention_cache.layers:
        assert type(layer) is DynamicLayer
        tensors = [value for value in vars(layer).values() if isinstance(value, torch.Tensor)]
        assert tensors and all(tensor.shape[2] == 3 for tensor in tensors)
    with torch.no_grad():
        full = decisive_model(
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
            **{key: value for key, value in inputs.items() if key != "use_cache"},
        )
    torch.testing.assert_close(second.logits[:, -1], full.logits[:, -1], rtol=1e-4, atol=1e-5)


def test_generate_returns_transformers_own_cache_layers(decisive_model, batch):
    input_ids, attention_mask = batch(40, [6, 4])
    out = decisive_model.generate(input_ids, attention_mask=attention_mask, return_dict_in_generate=True, **GREEDY)
    cache = getattr(out, CACHE_FIELD)
    # DynamicLayers (generate's own cache may write in place: fast_paths_tiny_transformer.PreallocatedDynamicLayer),
    # holding the written positions and nothing else.
    written = out.sequences.shape[1] - 1
    assert cache.get_seq_length() == written
    for layer in cache.self_attention_cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys.shape[-2] == layer.values.shape[-2] == written


def _forward_arguments(model):
    import inspect

    return set(inspect.signature(model.prepare_inputs_for_generation).parameters)
