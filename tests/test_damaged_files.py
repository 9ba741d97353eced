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
import transformers
from packaging.version import Version
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

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


@pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.24"),
    reason="transformers 5.17 raises TypeError on a non-object config.json before our config sees it",
)
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
        (dict(ffn_dim=64), r"fc1.weight has shape \(16, 32\) in the checkpoint but the config gives \(16, 64\) "
                           r"\(check `ffn_dim`"),
        (dict(encoder_layers=2), r"model.encoder.layers.1.\* is missing from the checkpoint .*`encoder_layers`"),
        (dict(position_embedding_type="learned"), r"embed_positions.weight is missing from the checkpoint "
                                                  r"\(check `position_embedding_type`"),
        (dict(norm_position="post"), r"final_layer_norm.bias is not in the config's model \(check `norm_position`\)"),
        (dict(tie_word_embeddings=False), r"model.decoder.embed_tokens.weight is missing from the checkpoint"),
    ],
    ids=["vocab", "d_model", "ffn_dim", "more-layers", "learned-positions", "post-norm", "untied"],
)
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_weights_that_do_not_fit_the_config_raise_value_error_naming_tensor_and_field(
    checkpoint, changes, match, loader
):
    edit_config(checkpoint, **changes)
    with pytest.raises(ValueError, match=rf"{checkpoint}: `model.safetensors` does not match `config.json`: .*{match}"):
        LOADERS[loader](checkpoint)


def test_checkpoint_with_more_layers_than_the_config_is_rejected(tmp_path):
    TinyTransformerForConditionalGeneration(TinyTransformerConfig(**{**TINY, "decoder_layers": 2})).save_pretrained(
        tmp_path
    )
    edit_config(tmp_path, decoder_layers=1)
    with pytest.raises(ValueError, match=r"model.decoder.layers.1.\* is not in the config's model .*`decoder_layers`"):
        TinyTransformerForConditionalGeneration.from_pretrained(tmp_path)


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
def hostile_checkpoint(checkpoint, tmp_path, monkeypatch):
    """The checkpoint without its safetensors file, plus a pickle that runs code; `torch.load` is made to fail the
    test if anything calls it. Returns (directory, pickle writer, marker path)."""
    (checkpoint / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"

    def write_pickle(name: str) -> Path:
        path = checkpoint / name
        path.write_bytes(pickle.dumps({"model.encoder.embed_tokens.weight": CodeThatRunsWhenUnpickled(marker)}))
        return path

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load was called on {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)
    yield checkpoint, write_pickle, marker
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_pytorch_model_bin_alone_is_never_unpickled(hostile_checkpoint, loader):
    directory, write_pickle, _ = hostile_checkpoint
    write_pickle("pytorch_model.bin")
    with pytest.raises(OSError, match=r"no file named model.safetensors"):
        LOADERS[loader](directory)


def test_use_safetensors_false_is_refused(hostile_checkpoint):
    directory, write_pickle, _ = hostile_checkpoint
    write_pickle("pytorch_model.bin")
    with pytest.raises(ValueError, match=r"safetensors weights only; `use_safetensors=False` would unpickle"):
        TinyTransformerForConditionalGeneration.from_pretrained(directory, use_safetensors=False)


def test_a_path_to_a_pickle_file_is_refused(hostile_checkpoint):
    _, write_pickle, _ = hostile_checkpoint
    path = write_pickle("weights.pt")
    with pytest.raises(ValueError, match=r"weights.pt: TinyTransformer loads safetensors weight files only"):
        TinyTransformerForConditionalGeneration.from_pretrained(path)


def test_config_pointing_transformers_at_a_pickle_is_refused(hostile_checkpoint):
    # transformers loads whatever `transformers_weights` names, and accepts "adapter_model.bin" (a pickle).
    directory, write_pickle, _ = hostile_checkpoint
    write_pickle("adapter_model.bin")
    edit_config(directory, transformers_weights="adapter_model.bin")
    for load in LOADERS.values():
        with pytest.raises(ValueError, match=r"`transformers_weights` must name a safetensors file"):
            load(directory)


@pytest.mark.parametrize("shard", ["pytorch_model-00001-of-00001.bin", "../outside.safetensors", "/etc/passwd"])
def test_weight_index_listing_non_safetensors_or_outside_files_is_refused(hostile_checkpoint, shard):
    # transformers reads the shard names from the index and loads each by its extension, pickles included.
    directory, write_pickle, _ = hostile_checkpoint
    write_pickle("pytorch_model-00001-of-00001.bin")
    index = {"metadata": {}, "weight_map": {"model.encoder.embed_tokens.weight": shard}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    for load in LOADERS.values():
        with pytest.raises(ValueError, match=r"`model.safetensors.index.json` lists weight files"):
            load(directory)
