"""The occurrence bias (occurrences_tiny_transformer.py): the indices it counts, the bias it adds to encoder-decoder
attention, the same outputs on every path (cache or none, beams, backends, padding, tuples), and a clear error for
every input it cannot count."""

import json

import pytest
import torch
from conftest import occurrence_bias_model, seeded_model, tiny_config
from transformers import AutoModelForSeq2SeqLM

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
from hf_tiny_transformer.configuration_tiny_transformer import OCCURRENCE_BIAS_PAIRS
from hf_tiny_transformer.modeling_tiny_transformer import CACHE_FIELD
from hf_tiny_transformer.occurrences_tiny_transformer import (
    OCCURRENCE_DIFFERENCES,
    OCCURRENCE_MAX_DIFFERENCE,
    occurrence_indices,
)


def repeated_source(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sources of three values each repeated, the second left-padded: ids and attention mask."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = 3 + torch.randint(0, 3, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :3], attention_mask[1, :3] = 0, 0
    return input_ids, attention_mask


def test_occurrence_indices_count_earlier_equal_tokens_and_skip_padding():
    ids = torch.tensor([[5, 7, 5, 5, 7, 9], [0, 0, 5, 0, 5, 5]])
    assert occurrence_indices(ids).tolist() == [[0, 0, 1, 2, 1, 0], [0, 1, 0, 2, 1, 2]]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # the two leading zeros are padding, the third not
    assert occurrence_indices(ids, mask).tolist() == [[0, 0, 1, 2, 1, 0], [0, 0, 0, 0, 1, 2]]
    # A decoding step's new tokens, counted over the whole sequence.
    assert torch.equal(occurrence_indices(ids, last=2), occurrence_indices(ids)[:, -2:])


def attention_with_table(pairs: str, row: int) -> torch.Tensor:
    """The first head's encoder-decoder attention of SOURCE and DECODER with no content score (zero query weights)
    and a bias table of zeros except 50 in `row`."""
    model = occurrence_bias_model(
        attn_implementation="eager", position_embedding_type="learned", occurrence_bias_pairs=pairs
    )
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.encoder_attn.q_proj.weight.zero_()
            layer.encoder_attn.q_proj.bias.zero_()
        table = model.model.decoder.occurrence_bias.bias.weight
        table.zero_()
        table[row] = 50.0
    return model(input_ids=SOURCE, decoder_input_ids=DECODER, output_attentions=True).cross_attentions[0][0, 0]


SOURCE = torch.tensor([[7, 5, 7, 7, 5]])  # occurrence indices 0 0 1 2 1
DECODER = torch.tensor([[7, 7, 5, 7]])  # occurrence indices 0 1 0 2
NEXT_COPY = OCCURRENCE_MAX_DIFFERENCE + 1  # the table's row of a difference of +1


def test_the_bias_compares_the_occurrence_indices_of_equal_tokens():
    # A table that favours a difference of +1 only: a decoder query whose token occurred r times before attends to
    # exactly the source copies of its token that occurred r + 1 times before.
    expected = torch.tensor([
        [0, 0, 1, 0, 0],  # the first 7: the second 7
        [0, 0, 0, 1, 0],  # the second 7: the third
        [0, 0, 0, 0, 1],  # the first 5: the second 5
        [0.2] * 5,  # the third 7: the source has no fourth, so no key is favoured
    ])  # fmt: skip
    torch.testing.assert_close(attention_with_table("same_token", NEXT_COPY), expected, atol=1e-4, rtol=0)
    # The last row biases the pairs of different tokens, whatever their indices: a 7 attends to the 5s, a 5 to the 7s.
    expected = torch.tensor(
        [[0, 0.5, 0, 0, 0.5], [0, 0.5, 0, 0, 0.5], [1 / 3, 0, 1 / 3, 1 / 3, 0], [0, 0.5, 0, 0, 0.5]]
    )
    torch.testing.assert_close(attention_with_table("same_token", OCCURRENCE_DIFFERENCES), expected, atol=1e-4, rtol=0)


def test_the_default_tells_other_tokens_first_occurrences_from_their_copies():
    # The pairs of equal tokens as above.
    torch.testing.assert_close(
        attention_with_table("same_token_and_first", NEXT_COPY),
        attention_with_table("same_token", NEXT_COPY),
        atol=1e-6,
        rtol=0,
    )
    # The row after the differences: other tokens' first occurrences only, each distinct value once (the first 5 for
    # a 7, the first 7 for a 5), however many copies follow.
    expected = torch.tensor([[0, 1, 0, 0, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    first = attention_with_table("same_token_and_first", OCCURRENCE_DIFFERENCES)
    torch.testing.assert_close(first, expected.float(), atol=1e-4, rtol=0)
    # The last row: their later copies (the second 5 for a 7, the second and third 7 for a 5).
    expected = torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0.5, 0.5, 0], [0, 0, 0, 0, 1]])
    repeats = attention_with_table("same_token_and_first", OCCURRENCE_DIFFERENCES + 1)
    torch.testing.assert_close(repeats, expected, atol=1e-4, rtol=0)


def test_the_first_version_biases_every_pair_by_its_indices():
    # occurrence_bias_pairs="all": any source token whose index is the query's + 1, of its value or another.
    expected = torch.tensor([
        [0, 0, 0.5, 0, 0.5],  # index 0: the keys of index 1
        [0, 0, 0, 1, 0],  # index 1: the key of index 2
        [0, 0, 0.5, 0, 0.5],
        [0.2] * 5,  # index 2: no key of index 3, so no key is favoured
    ])  # fmt: skip
    torch.testing.assert_close(attention_with_table("all", NEXT_COPY), expected, atol=1e-4, rtol=0)
    model = occurrence_bias_model(occurrence_bias_pairs="all")
    assert model.model.decoder.occurrence_bias.bias.num_embeddings == OCCURRENCE_DIFFERENCES


def test_a_folder_saved_before_the_pairs_field_loads_as_the_first_version(tmp_path):
    # A config.json with the occurrence bias and no `occurrence_bias_pairs` (saved before the field) means "all", and
    # its 9-row table loads and computes as it did; a new save states the field.
    model = occurrence_bias_model(occurrence_bias_pairs="all")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["occurrence_bias_pairs"] == "all"
    del config["occurrence_bias_pairs"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert loaded.config.occurrence_bias_pairs == "all"
    inputs = dict(input_ids=SOURCE, decoder_input_ids=DECODER)
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    assert TinyTransformerConfig(occurrence_bias=True).occurrence_bias_pairs == "same_token_and_first"
    with pytest.raises(ValueError, match="`occurrence_bias_pairs` must be one of"):
        TinyTransformerConfig(occurrence_bias=True, occurrence_bias_pairs="equal")


@pytest.mark.parametrize("pairs", OCCURRENCE_BIAS_PAIRS)
@pytest.mark.parametrize("position_embedding_type", ["sinusoidal", "learned", "relative"])
def test_every_decoding_path_gives_the_same_tokens(position_embedding_type, pairs):
    model = occurrence_bias_model(position_embedding_type=position_embedding_type, occurrence_bias_pairs=pairs)
    input_ids, attention_mask = repeated_source()
    settings = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
    greedy = model.generate(input_ids, attention_mask=attention_mask, **settings)
    assert torch.equal(greedy, model.generate(input_ids, attention_mask=attention_mask, use_cache=False, **settings))
    # Teacher-forced over the generated tokens, the argmax is the next generated token.
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=greedy).logits
    assert torch.equal(logits[:, :-1].argmax(-1), greedy[:, 1:])
    beams = model.generate(input_ids, attention_mask=attention_mask, num_beams=3, **settings)
    assert torch.equal(
        beams, model.generate(input_ids, attention_mask=attention_mask, num_beams=3, use_cache=False, **settings)
    )
    # The padded row equals its source alone; eager equals SDPA.
    alone = model.generate(input_ids[1:, 3:], **settings)
    assert torch.equal(greedy[1:], alone)
    eager = occurrence_bias_model(
        attn_implementation="eager", position_embedding_type=position_embedding_type, occurrence_bias_pairs=pairs
    )
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=greedy)
    torch.testing.assert_close(eager(**inputs).logits, logits, atol=1e-5, rtol=1e-5)


def test_the_bias_changes_what_the_model_computes():
    # The same weights without the occurrence bias: other logits, so the table is read (and not silently skipped).
    model = occurrence_bias_model()
    input_ids, attention_mask = repeated_source()
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :6])
    without = TinyTransformerForConditionalGeneration(tiny_config()).eval()
    without.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(model(**inputs).logits, without(**inputs).logits, atol=1e-3)


def test_encoder_outputs_carry_the_indices_as_an_object_or_a_tuple():
    model = occurrence_bias_model()
    input_ids, attention_mask = repeated_source()
    decoder_input_ids = input_ids[:, :5]
    expected = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    encoder = model.get_encoder()
    output = encoder(input_ids=input_ids, attention_mask=attention_mask)
    assert torch.equal(output.occurrence_indices, occurrence_indices(input_ids, attention_mask))
    assert torch.equal(output.input_ids, input_ids)  # the decoder tells the pairs of equal tokens by them
    as_tuple = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=False)
    for encoder_outputs in (output, as_tuple):
        logits = model(
            encoder_outputs=encoder_outputs, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
        ).logits
        assert torch.equal(logits, expected)
    # States alone, with the source ids beside them: counted from the ids.
    logits = model(
        input_ids=input_ids, encoder_outputs=(output.last_hidden_state,), attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
    ).logits  # fmt: skip
    assert torch.equal(logits, expected)


def test_inputs_it_cannot_count_are_refused_by_name():
    model = occurrence_bias_model()
    input_ids, attention_mask = repeated_source()
    states = model.get_encoder()(input_ids=input_ids).last_hidden_state
    embeds = model.get_input_embeddings()(input_ids)
    cases = [
        (dict(inputs_embeds=embeds, decoder_input_ids=input_ids), "pass `input_ids`, not `inputs_embeds`"),
        (
            dict(input_ids=input_ids, decoder_inputs_embeds=embeds),
            "pass `decoder_input_ids`, not `decoder_inputs_embeds`",
        ),
        (dict(encoder_outputs=(states,), decoder_input_ids=input_ids), "with their `occurrence_indices`"),
        (
            dict(encoder_outputs=(states, occurrence_indices(input_ids)), decoder_input_ids=input_ids),
            "with their `input_ids`",
        ),
        (
            dict(
                encoder_outputs=(states, occurrence_indices(input_ids), input_ids[:, :4]), decoder_input_ids=input_ids
            ),
            r"`encoder_outputs.input_ids` must have shape \[2, 9\], got \[2, 4\]",
        ),
        (
            dict(
                input_ids=input_ids,
                decoder_inputs_embeds=embeds,
                decoder_occurrence_indices=occurrence_indices(input_ids),
            ),
            "compares the decoder's token ids with the source's: pass `decoder_input_ids`",
        ),
        (
            dict(input_ids=input_ids, decoder_input_ids=input_ids, decoder_occurrence_indices=torch.zeros(2, 3)),
            "`decoder_occurrence_indices` must be an integer tensor",
        ),
        (
            dict(input_ids=input_ids, decoder_input_ids=input_ids, decoder_occurrence_indices=torch.zeros(2, 3).long()),
            r"`decoder_occurrence_indices` must have shape \[2, 9\], got \[2, 3\]",
        ),
        (
            dict(input_ids=input_ids, decoder_input_ids=input_ids, decoder_occurrence_indices=-torch.ones(2, 9).long()),
            "cannot be negative",
        ),
    ]
    for inputs, message in cases:
        with pytest.raises(ValueError, match=message):
            model(**inputs)
    with pytest.raises(ValueError, match="are for a model with `occurrence_bias=True`; this one has none"):
        seeded_model(tiny_config())(
            input_ids=input_ids, decoder_input_ids=input_ids, decoder_occurrence_indices=input_ids
        )
    # A cached step without the indices of its new token: the cache holds no ids to count them over.
    first = model(input_ids=input_ids, decoder_input_ids=input_ids[:, :1], use_cache=True)
    with pytest.raises(ValueError, match="pass `decoder_occurrence_indices`"):
        step = {CACHE_FIELD: getattr(first, CACHE_FIELD)}  # the cache's name differs across transformers 5.x
        model(input_ids=input_ids, decoder_input_ids=input_ids[:, 1:2], use_cache=True, **step)
    with pytest.raises(ValueError, match="attn_implementation 'flex_attention' cannot apply"):
        model.set_attn_implementation("flex_attention")
        model(input_ids=input_ids, decoder_input_ids=input_ids)


def test_the_config_field_is_checked_and_absent_in_earlier_files_means_off():
    with pytest.raises(ValueError, match="`occurrence_bias` must be true or false, got 'yes'"):
        TinyTransformerConfig(occurrence_bias="yes")
    saved = tiny_config().to_dict()
    del saved["occurrence_bias"]
    assert TinyTransformerConfig.from_dict(saved).occurrence_bias is False
    assert TinyTransformerForConditionalGeneration(tiny_config()).model.decoder.occurrence_bias is None
