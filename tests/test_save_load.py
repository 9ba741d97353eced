"""save_pretrained / from_pretrained: files written, exact round trips, and remote code in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import occurrence_bias_model
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSeq2SeqLM
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as transformers_logging

from hf_tiny_transformer import TinyTransformerForConditionalGeneration, TinyTransformerModel
from hf_tiny_transformer.absolute_positions_tiny_transformer import sinusoidal_position_table
from hf_tiny_transformer.checkpoint_checks_tiny_transformer import PROJECTION_WEIGHT


def inputs_for(model, batch, repeats: bool = False):
    input_ids, attention_mask = batch(model.config.vocab_size, [7, 4])
    if repeats:  # three values, each repeated (pad ids stay pad)
        input_ids = torch.where(attention_mask.bool(), 3 + input_ids % 3, input_ids)
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5])


def save_in_earlier_layout(model, directory) -> None:
    """`model` saved as checkpoints were before the projections became `nn.Linear`s: every projection weight stored
    [in, out] (transformers' `Conv1D` layout) and no `projection_layout` in `config.json`."""
    model.save_pretrained(directory)
    tensors = load_file(directory / "model.safetensors")
    projection = PROJECTION_WEIGHT.search
    earlier = {key: tensor.T.contiguous() if projection(key) else tensor for key, tensor in tensors.items()}
    save_file(earlier, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    del config["projection_layout"]
    (directory / "config.json").write_text(json.dumps(config))


def test_save_writes_safetensors_config_with_auto_map_and_source(make_model, tmp_path):
    make_model().save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "configuration_tiny_transformer.py",
        "modeling_tiny_transformer.py",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "tiny_transformer"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_tiny_transformer.TinyTransformerConfig",
        "AutoModel": "modeling_tiny_transformer.TinyTransformerModel",
        "AutoModelForSeq2SeqLM": "modeling_tiny_transformer.TinyTransformerForConditionalGeneration",
    }
    # Tied embeddings are stored once.
    assert list(load_file(tmp_path / "model.safetensors")).count("lm_head.weight") == 0
    # Every projection is an nn.Linear, stored [out, in], and the file says so.
    assert config["projection_layout"] == "out_in"
    assert load_file(tmp_path / "model.safetensors")["model.encoder.layers.0.self_attn.qkv_proj.weight"].shape == (
        96,
        32,
    )


def test_every_projection_is_an_nn_linear_of_the_in_tree_layout(make_model):
    model = make_model()
    projections = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    # 2 encoder layers x 4, 2 decoder layers x 7, and lm_head
    assert len(projections) == 23
    qkv_proj = model.model.encoder.layers[0].self_attn.qkv_proj
    assert (qkv_proj.in_features, qkv_proj.out_features) == (32, 96) and qkv_proj.weight.shape == (96, 32)


@pytest.mark.parametrize("loader", [TinyTransformerForConditionalGeneration, AutoModelForSeq2SeqLM, AutoModel])
def test_a_checkpoint_of_the_earlier_in_out_layout_loads_converted(make_model, batch, tmp_path, loader):
    model = make_model()
    save_in_earlier_layout(model, tmp_path / "earlier")
    with CaptureLogger(transformers_logging.get_logger("transformers")) as log:
        loaded, loading_info = loader.from_pretrained(tmp_path / "earlier", output_loading_info=True)
    assert "MISMATCH" not in log.out  # converted, not re-initialised
    assert not loading_info["mismatched_keys"] and not loading_info["missing_keys"]
    reference = model if loader is not AutoModel else model.model
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.config.projection_layout == "out_in"
    loaded.save_pretrained(tmp_path / "again")  # saved again: the current layout, loadable as any checkpoint
    assert json.loads((tmp_path / "again" / "config.json").read_text())["projection_layout"] == "out_in"
    again = loader.from_pretrained(tmp_path / "again").eval()
    inputs = inputs_for(model, batch)
    assert torch.equal(again(**inputs)[0], reference(**inputs)[0])  # logits, or the bare model's hidden states


def test_a_config_without_projection_layout_over_current_weights_is_refused_naming_the_layout(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["projection_layout"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"has no `projection_layout`.*earlier \[in, out\] layout.*qkv_proj.weight"):
        TinyTransformerForConditionalGeneration.from_pretrained(tmp_path)


def test_current_weights_under_a_config_of_the_earlier_layout_are_refused_naming_the_layout(make_model, tmp_path):
    save_in_earlier_layout(make_model(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "projection_layout": "out_in"}))
    with pytest.raises(ValueError, match=r"qkv_proj.weight has shape \(32, 96\).*\[in, out\] projection layout"):
        TinyTransformerForConditionalGeneration.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": False}, {"norm_position": "post"}],
    ids=["tied", "untied", "post-norm"],
)
def test_round_trip_through_auto_class_is_exact(make_model, batch, tmp_path, overrides):
    model = make_model(**overrides)
    inputs = inputs_for(model, batch)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is TinyTransformerForConditionalGeneration
    assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)
    tied = reloaded.lm_head.weight is reloaded.model.encoder.embed_tokens.weight
    assert tied == model.config.tie_word_embeddings


def test_base_model_loads_from_a_head_checkpoint(make_model, batch, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is TinyTransformerModel
    inputs = inputs_for(model, batch)
    assert torch.equal(base(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state)


@pytest.mark.parametrize("position_embedding_type", ["sinusoidal"])
def test_sinusoidal_table_is_rebuilt_after_loading(make_model, tmp_path):
    make_model().save_pretrained(tmp_path)
    reloaded = TinyTransformerForConditionalGeneration.from_pretrained(tmp_path)
    for positions in (reloaded.model.encoder.embed_positions, reloaded.model.decoder.embed_positions):
        assert torch.equal(positions.weight, sinusoidal_position_table(*positions.weight.shape))


@pytest.mark.parametrize("position_embedding_type", ["learned"])
def test_every_weight_and_buffer_follows_the_initialisation_scheme(make_model):
    model = make_model(d_model=64, ffn_dim=128, vocab_size=64)
    std = model.config.initializer_range
    for name, parameter in model.named_parameters():
        if name.endswith("layer_norm.weight"):
            assert torch.equal(parameter, torch.ones_like(parameter)), name
        elif name.endswith("bias"):
            assert torch.equal(parameter, torch.zeros_like(parameter)), name
        else:  # projections, token and learned position embeddings: N(0, initializer_range²)
            assert parameter.dim() == 2, name
            assert abs(parameter.std().item() - std) < 0.15 * std and abs(parameter.mean().item()) < std / 4, name
    sinusoidal = make_model(position_embedding_type="sinusoidal")
    for name, buffer in sinusoidal.named_buffers():
        assert torch.equal(buffer, sinusoidal_position_table(*buffer.shape)), name


def test_resized_embeddings_stay_tied_and_round_trip(make_model, batch, tmp_path):
    model = make_model()
    model.resize_token_embeddings(48)
    assert model.config.vocab_size == 48
    assert model.lm_head.weight.shape == (48, 32)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    inputs = inputs_for(model, batch)
    inputs["input_ids"][0, 0] = 45  # a new id is accepted
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class RefuseOurPackage(importlib.abc.MetaPathFinder):
        # Stands in for a machine where hf_tiny_transformer is not installed.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hf_tiny_transformer":
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, RefuseOurPackage())
    try:
        import hf_tiny_transformer  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("hf_tiny_transformer must not be importable here")

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

    # One folder per position scheme: checkpoint/ and inputs.pt in, out.pt written.
    for folder in sys.argv[1:]:
        checkpoint = f"{folder}/checkpoint"
        inputs = torch.load(f"{folder}/inputs.pt")
        model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
        assert type(config).__name__ == "TinyTransformerConfig"
        base = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
        assert type(base).__name__ == "TinyTransformerModel"
        assert "hf_tiny_transformer" not in type(model).__module__
        logits = model(**inputs).logits
        generated = model.generate(
            inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=6, num_beams=2
        )
        result = {"logits": logits, "generated": generated, "module": type(model).__module__}
        torch.save({**result, "position_embedding_type": config.position_embedding_type}, f"{folder}/out.pt")
    """
)


@pytest.mark.slow
def test_remote_code_loads_in_a_fresh_process_without_our_package(
    tiny_model_of_each_scheme, batch, tmp_path, same_threads_as_child_processes
):
    # This side computes with the child's thread count (the fixture), the child, started with OMP_NUM_THREADS from
    # the environment, with the same. Even so the last bits of the logits may differ between the two processes (on a
    # 2-core AMD EPYC with 4 threads forced they did), so the logits agree within float32 rounding; the tokens, which
    # the copied code must produce as the package does, agree exactly.
    models = {**tiny_model_of_each_scheme, "occurrence_bias": occurrence_bias_model(position_embedding_type="relative")}
    inputs = {}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name / "checkpoint")
        inputs[name] = inputs_for(model, batch, repeats=name == "occurrence_bias")
        torch.save(inputs[name], tmp_path / name / "inputs.pt")
    # ... and a checkpoint of the earlier [in, out] layout, converted by the copied code as it loads.
    save_in_earlier_layout(models["relative"], tmp_path / "earlier" / "checkpoint")
    torch.save(inputs["relative"], tmp_path / "earlier" / "inputs.pt")
    models["earlier"], inputs["earlier"] = models["relative"], inputs["relative"]
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    environment.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, *(str(tmp_path / name) for name in models)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    for name, model in models.items():
        result = torch.load(tmp_path / name / "out.pt")
        assert result["position_embedding_type"] == model.config.position_embedding_type
        assert result["module"].startswith("transformers_modules.")
        torch.testing.assert_close(result["logits"], model(**inputs[name]).logits, rtol=1e-5, atol=1e-6, msg=name)
        expected = model.generate(
            inputs[name]["input_ids"], attention_mask=inputs[name]["attention_mask"], max_new_tokens=6, num_beams=2
        )
        assert torch.equal(result["generated"], expected), name
