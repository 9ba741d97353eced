"""Damaged or hostile checkpoints: a clear `ValueError`/`OSError` naming the file and the field, and never a pickle.

A checkpoint is the directory `save_pretrained` writes: `config.json`, `model.safetensors`, `generation_config.json`
and the two model source files. Each test damages one thing in a fresh copy and loads it through our class and
through the Auto class (which, with this package installed, resolves to our class).
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as transformers_logging

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration, TinyTransformerModel

TINY = dict(
    vocab_size=32, d_model=16, num_attention_heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1, dropout=0.0
)
LOADERS = {
    "ours": TinyTransformerForConditionalGeneration.from_pretrained,
    "auto": AutoModelForSeq2SeqLM.from_pretrained,
}


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("checkpoint") / "good"
    TinyTransformerForConditionalGeneration(TinyTransformerConfig(**TINY)).save_pretrained(directory)
    return directory


@pytest.fixture
def checkpoint(saved_checkpoint, tmp_path) -> Path:
    """A fresh copy of a valid saved checkpoint, to damage."""
    return Path(shutil.copytree(saved_checkpoint, tmp_path / "checkpoint"))


def edit_config(directory: Path, **changes) -> None:
    """Set (or, with `...`, delete) fields of `config.json`."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for name, value in changes.items():
        if value is ...:
            del config[name]
        else:
            config[name] = value
    path.write_text(json.dumps(config))


def test_the_undamaged_checkpoint_loads_with_equal_weights(checkpoint):
    original = load_file(checkpoint / "model.safetensors")
    for load in LOADERS.values():
        state = load(checkpoint).state_dict()
        assert all(torch.equal(state[name], tensor) for name, tensor in original.items())


# ---------------------------------------------------------------------------------------------------------------------
# model.safetensors: truncated, corrupted, missing.
# ---------------------------------------------------------------------------------------------------------------------


def truncate_to_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_header_json(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10] = ord("}")  # inside the JSON header that follows the 8-byte length
    path.write_bytes(bytes(data))


def claim_a_huge_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def replace_with_git_lfs_pointer(path: Path) -> None:
    # What a clone without git-lfs leaves behind instead of the weights.
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123456\n")


@pytest.mark.parametrize(
    "damage",
    [
        truncate_to_half,
        lambda path: path.write_bytes(path.read_bytes()[:5]),
        lambda path: path.write_bytes(b""),
        corrupt_header_json,
        claim_a_huge_header,
        replace_with_git_lfs_pointer,
    ],
    ids=["truncated-half", "truncated-in-length-prefix", "empty", "header-json", "huge-header", "git-lfs-pointer"],
)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_damaged_weights_file_raises_value_error_naming_it(checkpoint, damage, loader):
    damage(checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{checkpoint}: `model.safetensors` is damaged or truncated"):
        LOADERS[loader](checkpoint)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_raise_value_error_naming_the_tensor(checkpoint, value):
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    tensors["model.decoder.layers.0.feed_forward.fc1.weight"][3, 4] = value
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"tensor model.decoder.layers.0.feed_forward.fc1.weight .* NaN or infinite"):
        TinyTransformerForConditionalGeneration.from_pretrained(checkpoint)


def test_missing_weights_file_raises_os_error_naming_it(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(OSError, match=r"no file named model.safetensors"):
        TinyTransformerForConditionalGeneration.from_pretrained(checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# config.json: not JSON, missing fields, invalid fields.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_config_that_is_not_json_raises_os_error_naming_the_file(checkpoint, loader):
    (checkpoint / "config.json").write_text('{"d_model": 16,')
    with pytest.raises(OSError, match=rf"config file at '{checkpoint / 'config.json'}' is not a valid JSON file"):
        LOADERS[loader](checkpoint)


def test_config_that_is_not_an_object_raises_value_error(checkpoint):
    (checkpoint / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"`config.json`: expected a JSON object"):
        TinyTransformerForConditionalGeneration.from_pretrained(checkpoint)


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "activation_function", "norm_position"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_config_missing_an_architecture_field_raises_value_error_naming_it(checkpoint, field, loader):
    # A default standing in for it would compute a different function from the same weights.
    edit_config(checkpoint, **{field: ...})
    with pytest.raises(ValueError, match=rf"Invalid TinyTransformer `config.json`: missing field\(s\) {field}"):
        LOADERS[loader](checkpoint)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(num_attention_heads=3), r"`d_model` \(16\) must be divisible by `num_attention_heads` \(3\)"),
        (dict(position_embedding_type="rotary"), r"`position_embedding_type` must be one of"),
        (dict(ffn_dim=-4), r"`ffn_dim` must be a positive integer, got -4"),
        (dict(vocab_size=-1), r"`vocab_size` must be a positive integer"),
        (dict(encoder_layers=0), r"`encoder_layers` must be a positive integer"),
        (dict(d_model="16"), r"`d_model` must be a positive integer, got '16'"),
        (dict(dropout=1.5), r"`dropout` must be a probability in \[0, 1\)"),
        (dict(activation_function="swish-ish"), r"`activation_function` must be one of"),
        (dict(activation_function=["relu"]), r"`activation_function` must be one of"),
        (dict(tie_word_embeddings="false"), r"`tie_word_embeddings` must be true or false, got 'false'"),
        (dict(eos_token_id=32), r"`eos_token_id` must be a token id in \[0, vocab_size=32\)"),
        (dict(is_encoder_decoder=False), r"`is_encoder_decoder` must be true"),
    ],
)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_invalid_config_field_raises_value_error_naming_file_and_field(checkpoint, changes, match, loader):
    edit_config(checkpoint, **changes)
    with pytest.raises(ValueError, match=rf"Invalid TinyTransformer `config.json`: {match}"):
        LOADERS[loader](checkpoint)


def test_auto_config_alone_rejects_the_invalid_config_too(checkpoint):
    edit_config(checkpoint, num_attention_heads=3)
    with pytest.raises(ValueError, match=r"`config.json`: `d_model` \(16\) must be divisible"):
        AutoConfig.from_pretrained(checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# Weights that do not fit config.json: shapes, layers, position table, norm placement, tying.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            dict(vocab_size=40),
            r"model.encoder.embed_tokens.weight has shape \(32, 16\) in the checkpoint but the config gives \(40, 16\) "
            r"\(check `vocab_size`",
        ),
        (dict(d_model=32), r"has shape \(16,\) in the checkpoint but the config gives \(32,\) \(check `d_model`\)"),
        (
            dict(ffn_dim=64),
            r"fc1.weight has shape \(32, 16\) in the checkpoint but the config gives \(64, 16\) "
            r"\(check `ffn_dim`",
        ),
    ],
    ids=["vocab", "d_model", "ffn_dim"],
)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_weights_that_do_not_fit_the_config_raise_value_error_naming_tensor_and_field(
    checkpoint, changes, match, loader
):
    edit_config(checkpoint, **changes)
    with pytest.raises(ValueError, match=rf"{checkpoint}: `model.safetensors` does not match `config.json`: .*{match}"):
        LOADERS[loader](checkpoint)


# Tensors the config's model does not have: as in every in-tree model, left out, logged and listed under
# `unexpected_keys`; the log names the config field that decides whether they exist.
@pytest.mark.parametrize(
    "saved, changes, unexpected, field",
    [
        (dict(decoder_layers=2), dict(decoder_layers=1), "model.decoder.layers.1.", "`decoder_layers`"),
        ({}, dict(norm_position="post"), "model.encoder.final_layer_norm.", "`norm_position`"),
    ],
    ids=["fewer-layers", "post-norm"],
)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_tensors_the_config_lacks_are_left_out_logged_and_listed_as_unexpected(
    tmp_path, caplog, saved, changes, unexpected, field, loader
):
    checkpoint = tmp_path
    TinyTransformerForConditionalGeneration(TinyTransformerConfig(**{**TINY, **saved})).save_pretrained(checkpoint)
    edit_config(checkpoint, **changes)
    with CaptureLogger(transformers_logging.get_logger("transformers")) as log:
        model, loading_info = LOADERS[loader](checkpoint, output_loading_info=True)
    assert any(key.startswith(unexpected) for key in loading_info["unexpected_keys"])
    assert "UNEXPECTED" in log.out  # transformers' loading report
    ours = [
        record.getMessage()
        for record in caplog.records
        if "tensors the config's model does not have" in record.getMessage()
    ]
    assert len(ours) == 1 and unexpected in ours[0] and f"check {field}" in ours[0]
    state = model.state_dict()
    for key, tensor in load_file(checkpoint / "model.safetensors").items():  # the rest loads as it is
        if key not in loading_info["unexpected_keys"]:
            assert torch.equal(state[key], tensor), key


def test_a_file_of_one_unrelated_tensor_loads_an_initialised_model_reporting_it(checkpoint):
    """transformers' common test `test_model_weights_reload_no_missing_tied_weights`: every weight missing and
    initialised, the one tensor listed as unexpected."""
    save_file({"tensor": torch.tensor([1, 2])}, checkpoint / "model.safetensors", metadata={"format": "pt"})
    model, loading_info = TinyTransformerForConditionalGeneration.from_pretrained(checkpoint, output_loading_info=True)
    assert loading_info["unexpected_keys"] == {"tensor"}
    assert "model.encoder.layers.0.self_attn.qkv_proj.weight" in loading_info["missing_keys"]
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())


# Weights the checkpoint lacks: as in every in-tree model, initialised by `_init_weights`, reported in the log and
# listed under `missing_keys` (model surgery: more layers, a new position table, untied embeddings).
@pytest.mark.parametrize(
    "changes, missing",
    [
        (dict(encoder_layers=2), "model.encoder.layers.1."),
        (dict(position_embedding_type="learned"), "model.encoder.embed_positions.weight"),
        (dict(tie_word_embeddings=False), "model.decoder.embed_tokens.weight"),
    ],
    ids=["more-layers", "learned-positions", "untied"],
)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_weights_the_checkpoint_lacks_are_initialised_logged_and_listed_as_missing(
    checkpoint, changes, missing, loader
):
    edit_config(checkpoint, **changes)
    with CaptureLogger(transformers_logging.get_logger("transformers")) as log:
        model, loading_info = LOADERS[loader](checkpoint, output_loading_info=True)
    assert any(key.startswith(missing) for key in loading_info["missing_keys"])
    assert missing in log.out and "MISSING" in log.out
    original = load_file(checkpoint / "model.safetensors")
    state = model.state_dict()
    for key in loading_info["missing_keys"]:
        if key.endswith("layer_norm.weight"):
            assert torch.equal(state[key], torch.ones_like(state[key]))  # _init_weights, not torch's defaults
        elif key.endswith("bias"):
            assert torch.equal(state[key], torch.zeros_like(state[key]))
    for key, tensor in original.items():  # everything the file holds is loaded as it is
        assert torch.equal(state[key], tensor), key


def test_a_tied_copy_is_not_listed_as_missing_when_its_partner_is_loaded(checkpoint):
    _, loading_info = TinyTransformerForConditionalGeneration.from_pretrained(checkpoint, output_loading_info=True)
    assert not loading_info["missing_keys"]  # lm_head and the decoder's
    # embedding are tied to the stored encoder embedding, so nothing is missing


def test_an_empty_state_dict_gives_an_initialised_model_with_every_weight_missing():
    config = TinyTransformerConfig(**TINY)
    model, loading_info = TinyTransformerForConditionalGeneration.from_pretrained(
        None, config=config, state_dict={}, output_loading_info=True
    )
    assert "model.encoder.layers.0.self_attn.qkv_proj.weight" in loading_info["missing_keys"]
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())
    assert model.model.encoder.layers[0].self_attn.qkv_proj.weight.std().item() == pytest.approx(0.02, rel=0.3)


def test_an_encoder_taken_from_another_checkpoint_loads_and_the_rest_is_initialised(checkpoint, tmp_path):
    encoder_only = {
        key: tensor for key, tensor in load_file(checkpoint / "model.safetensors").items() if ".encoder." in key
    }
    save_file(encoder_only, checkpoint / "model.safetensors", metadata={"format": "pt"})
    model, loading_info = TinyTransformerForConditionalGeneration.from_pretrained(checkpoint, output_loading_info=True)
    assert loading_info["missing_keys"] and all(".encoder." not in key for key in loading_info["missing_keys"])
    for key, tensor in encoder_only.items():
        assert torch.equal(model.state_dict()[key], tensor)


def test_ignore_mismatched_sizes_keeps_the_transformers_behaviour(checkpoint):
    edit_config(checkpoint, vocab_size=40)
    model = TinyTransformerForConditionalGeneration.from_pretrained(checkpoint, ignore_mismatched_sizes=True)
    assert model.get_input_embeddings().weight.shape == (40, 16)


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_base_and_head_checkpoints_still_load_into_each_other(tmp_path, tie_word_embeddings):
    config = TinyTransformerConfig(**TINY, tie_word_embeddings=tie_word_embeddings)
    TinyTransformerForConditionalGeneration(config).save_pretrained(tmp_path / "head")
    TinyTransformerModel(config).save_pretrained(tmp_path / "base")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "head"), TinyTransformerModel)  # unused lm_head
    head = TinyTransformerForConditionalGeneration.from_pretrained(tmp_path / "base")  # new lm_head when untied
    assert head.lm_head.weight.shape == (32, 16)


# ---------------------------------------------------------------------------------------------------------------------
# Hostile files: nothing is ever unpickled.
# ---------------------------------------------------------------------------------------------------------------------


class CodeThatRunsWhenUnpickled:
    """Unpickling this calls os.system: proof of code execution is the marker file it creates."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def hostile_checkpoint(checkpoint, tmp_path):
    """The checkpoint without its safetensors file, plus a writer of pickles that run code when unpickled; the test
    fails if any of that code ran. Returns (directory, pickle writer)."""
    (checkpoint / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"

    def write_pickle(name: str) -> Path:
        path = checkpoint / name
        path.write_bytes(pickle.dumps({"model.encoder.embed_tokens.weight": CodeThatRunsWhenUnpickled(marker)}))
        return path

    yield checkpoint, write_pickle
    assert not marker.exists(), "the pickle's code ran"


def point_config_at(directory: Path, write_pickle) -> dict:
    write_pickle("adapter_model.bin")
    edit_config(directory, transformers_weights="adapter_model.bin")
    return {}


def point_index_at(directory: Path, write_pickle) -> dict:
    write_pickle("pytorch_model-00001-of-00001.bin")
    index = {"metadata": {}, "weight_map": {"model.encoder.embed_tokens.weight": "pytorch_model-00001-of-00001.bin"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return {}


# Every way transformers has of reaching a pickle: it reads them with torch's weights-only unpickler.
HOSTILE_ROUTES = {
    "pytorch_model.bin alone": lambda directory, write_pickle: write_pickle("pytorch_model.bin") and {},
    "use_safetensors=False": lambda directory, write_pickle: (
        write_pickle("pytorch_model.bin") and {"use_safetensors": False}
    ),
    "transformers_weights in config.json": point_config_at,
    "a weight index listing a pickle": point_index_at,
}


@pytest.mark.parametrize("route", sorted(HOSTILE_ROUTES))
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_code_in_a_pickled_weight_file_never_runs(hostile_checkpoint, route, loader):
    directory, write_pickle = hostile_checkpoint
    kwargs = HOSTILE_ROUTES[route](directory, write_pickle)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        LOADERS[loader](directory, **kwargs)
