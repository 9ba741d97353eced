import json

import pytest
from transformers import AutoConfig

from hf_tiny_transformer import TinyTransformerConfig


def test_defaults_are_valid_and_small():
    config = TinyTransformerConfig()
    assert config.model_type == "tiny_transformer"
    assert config.is_encoder_decoder
    assert config.decoder_start_token_id == config.bos_token_id
    assert config.d_model % config.num_attention_heads == 0


def test_standard_aliases_map_to_our_fields():
    config = TinyTransformerConfig(d_model=64, encoder_layers=3, decoder_layers=1)
    assert config.hidden_size == 64
    assert config.num_hidden_layers == 3
    # Caches are sized from the decoder's view of the config.
    assert config.get_text_config(decoder=True).num_hidden_layers == 1


def test_auto_config_builds_and_round_trips(tmp_path):
    config = AutoConfig.for_model("tiny_transformer", d_model=48, num_attention_heads=6)
    assert isinstance(config, TinyTransformerConfig)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert reloaded.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("d_model", -8),
        ("encoder_layers", 0),
        ("decoder_layers", -1),
        ("num_attention_heads", 0),
        ("ffn_dim", 0),
        ("max_position_embeddings", 0),
        ("d_model", 2.5),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("attention_dropout", 1.5),
        ("initializer_range", 0.0),
        ("activation_function", "swishy"),
        ("position_embedding_type", "rotary"),
        ("norm_position", "middle"),
        ("pad_token_id", 128),
        ("bos_token_id", -1),
        ("eos_token_id", 500),
        ("decoder_start_token_id", 128),
        ("pad_token_id", None),
        ("relative_attention_reference_length", 1),
        ("relative_attention_reference_length", 12.5),
        ("relative_attention_reference_length", True),
    ],
)
def test_invalid_field_raises_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        TinyTransformerConfig(**{field: value})


def test_d_model_not_divisible_by_heads_is_rejected():
    with pytest.raises(ValueError, match="divisible by `num_attention_heads`"):
        TinyTransformerConfig(d_model=30, num_attention_heads=4)


def test_invalid_config_json_is_rejected_on_load(tmp_path):
    TinyTransformerConfig().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["norm_position"] = "sideways"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="norm_position"):
        AutoConfig.from_pretrained(tmp_path)
