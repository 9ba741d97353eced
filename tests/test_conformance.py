"""Behaviours every in-tree transformers model shares, pinned for ours: `get_encoder(modality=...)` as the library's
export helpers call it, and the deprecation of the cache's old name where transformers deprecates it.

(The third, missing weights initialised and listed under `missing_keys`, is in test_damaged_files.py with the rest
of loading.)
"""

import warnings

import pytest
import torch

from hf_tiny_transformer.modeling_tiny_transformer import CACHE_FIELD


@pytest.mark.parametrize("modality", [None, "image", "audio"])
def test_get_encoder_takes_a_modality_like_every_transformers_model(make_model, modality):
    model = make_model()
    expected = model.model.encoder if modality is None else model  # no image or audio encoder: the model itself
    assert model.get_encoder(modality=modality) is expected
    assert model.model.get_encoder(modality=modality) is (model.model.encoder if modality is None else model.model)


@pytest.mark.slow
def test_transformers_exporter_exports_forward_and_generation(make_model, batch):
    exporter_dynamo = pytest.importorskip("transformers.exporters.exporter_dynamo")
    model = make_model()
    input_ids, attention_mask = batch(40, [7, 4])
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5])
    exporter = exporter_dynamo.DynamoExporter()
    exported = exporter.export(model, inputs, config=exporter_dynamo.DynamoConfig())
    if isinstance(exported, torch.export.ExportedProgram):  # transformers 5.17 returns the bare program
        exported = exported.module()
    torch.testing.assert_close(exported(**inputs)["logits"], model(**inputs).logits)
    # Decomposes the model into encoder and decoding steps through `get_encoder(modality=...)`.
    stages = exporter.export_for_generation(
        model, dict(input_ids=input_ids, attention_mask=attention_mask), config=exporter_dynamo.DynamoConfig()
    )
    assert getattr(stages, "components", stages)  # 5.17 returns the stages as a dict


def test_the_old_cache_name_warns_exactly_where_transformers_deprecates_it(make_model, batch):
    """transformers 5.24 calls it `cache` and deprecates `past_key_values` with a FutureWarning; in 5.17
    `past_key_values` is the current name and must not warn."""
    model = make_model()
    input_ids, _ = batch(40, [5])
    encoder_outputs = model.get_encoder()(input_ids=input_ids)
    start = torch.tensor([[model.config.decoder_start_token_id]])
    cache = getattr(model(encoder_outputs=encoder_outputs, decoder_input_ids=start, use_cache=True), CACHE_FIELD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(encoder_outputs=encoder_outputs, decoder_input_ids=start, past_key_values=cache, use_cache=True)
    deprecations = [w for w in caught if issubclass(w.category, FutureWarning) and "past_key_values" in str(w.message)]
    assert len(deprecations) == (1 if CACHE_FIELD == "cache" else 0)
    assert cache.get_seq_length() == 2  # accepted under either name


def test_generate_passes_the_cache_without_deprecation_warnings(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [6, 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
