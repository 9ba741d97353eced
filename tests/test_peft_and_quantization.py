"""The tools people apply to transformers models find every projection, as in-tree models: PEFT's LoRA on
`target_modules="all-linear"` and torchao's int8 quantization (weight-only, and dynamic activations with weights), both
through `quantize_` and through `from_pretrained(..., quantization_config=TorchAoConfig(...))`."""

import logging
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, TorchAoConfig

from hf_tiny_transformer import TinyTransformerForConditionalGeneration, torchao_import_noise_dropped

peft = pytest.importorskip("peft", reason="needs the `peft` extra")
quantization = pytest.importorskip("torchao.quantization", reason="needs the `quantization` extra")
TorchAOBaseTensor = pytest.importorskip("torchao.utils").TorchAOBaseTensor

# position_embedding_type is a fixture of conftest.py: every test here runs once per position scheme.
PROJECTIONS = {"qkv_proj", "q_proj", "kv_proj", "out_proj", "fc1", "fc2"}
# 2 encoder layers x (qkv_proj, out_proj, fc1, fc2) + 2 decoder layers x (qkv_proj, out_proj, q_proj, kv_proj,
# out_proj, fc1, fc2)
PROJECTION_COUNT = 22
QUANTIZATION_CONFIGS = {
    "int8-weight-only": quantization.Int8WeightOnlyConfig,
    "int8-dynamic-activation-int8-weight": quantization.Int8DynamicActivationInt8WeightConfig,
}


def lora(model, **settings):
    config = peft.LoraConfig(target_modules="all-linear", r=4, lora_alpha=8, task_type="SEQ_2_SEQ_LM", **settings)
    return peft.get_peft_model(model, config)


def forward_inputs(batch) -> dict:
    input_ids, attention_mask = batch(40, [7, 4])
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5])


# -------------------------------------------------------------------------------------------------------------- PEFT
def test_lora_on_all_linear_attaches_to_every_projection_without_a_warning(make_model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lora(make_model())
    # PEFT itself calls transformers' deprecated `is_gradient_checkpointing` (a FutureWarning of transformers'); any
    # other warning (such as "fan_in_fan_out ... Conv1D" for [in, out] projections) is about the model.
    about_the_model = [
        str(warning.message) for warning in caught if "is_gradient_checkpointing" not in str(warning.message)
    ]
    assert about_the_model == []
    adapted = [name for name, module in model.named_modules() if isinstance(module, peft.tuners.lora.Linear)]
    assert len(adapted) == PROJECTION_COUNT
    assert {name.rsplit(".", 1)[-1] for name in adapted} == PROJECTIONS  # every projection but the tied lm_head


def test_lora_adapter_saved_and_reloaded_gives_the_same_outputs(make_model, batch, tmp_path):
    base = make_model()
    base.save_pretrained(tmp_path / "base")
    inputs = forward_inputs(batch)
    with torch.no_grad():
        base_logits = base(**inputs).logits
    # Random B matrices (LoRA starts from B = 0 otherwise): the adapter changes the outputs.
    adapted = lora(base, init_lora_weights=False).eval()
    with torch.no_grad():
        adapted_logits = adapted(**inputs).logits
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-3)
    adapted.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    fresh_base = TinyTransformerForConditionalGeneration.from_pretrained(tmp_path / "base")
    reloaded = peft.PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, adapted_logits)


def test_merged_lora_outputs_agree_with_the_unmerged_adapter(make_model, batch):
    adapted = lora(make_model(), init_lora_weights=False).eval()
    inputs = forward_inputs(batch)
    with torch.no_grad():
        unmerged = adapted(**inputs).logits
        merged_model = adapted.merge_and_unload()
        merged = merged_model(**inputs).logits
    assert type(merged_model) is TinyTransformerForConditionalGeneration
    assert all(
        type(module) is torch.nn.Linear for module in merged_model.modules() if isinstance(module, torch.nn.Linear)
    )
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------ quantization
def quantized_linears(model) -> list[str]:
    """The `nn.Linear`s whose weight is one of torchao's quantized tensors."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and isinstance(module.weight, TorchAOBaseTensor)
    ]


def assert_close_to_float32(logits: torch.Tensor, reference: torch.Tensor) -> None:
    """int8 rounds each weight (and, dynamically, each activation) to 1/127 of its row's largest: on these random
    models the logits move by 1-4% of their mean size (7% at most, measured over the three position schemes and both
    modes), and the most likely token stays where the lead of the float32 one over the second is larger than twice
    that bound. Where the lead is smaller, int8 may flip it, and how often depends on the CPU's int8 kernels (2 of 10
    positions with leads of 0.006 and 0.055 on an AMD EPYC, none on an Intel Xeon). Greedy decoding of a random model
    is not compared: one flipped token changes the rest of its sequence."""
    bound = 0.1 * reference.abs().mean()
    assert (logits - reference).abs().mean() < bound
    top_two = reference.topk(2, dim=-1).values
    clear_lead = top_two[..., 0] - top_two[..., 1] > 2 * bound
    assert clear_lead.sum() >= 3, "too few positions with a clear most likely token to compare"
    assert torch.equal(logits.argmax(-1)[clear_lead], reference.argmax(-1)[clear_lead])


@pytest.fixture
def model_and_reference(make_model, batch):
    """A tiny model, teacher-forcing inputs and its float32 logits on them."""
    model = make_model(initializer_range=0.2, seed=3)
    inputs = forward_inputs(batch)
    with torch.no_grad():
        return model, inputs, model(**inputs).logits


@pytest.mark.parametrize("mode", sorted(QUANTIZATION_CONFIGS))
def test_quantize_turns_every_projection_into_int8_close_to_float32(model_and_reference, mode):
    model, inputs, reference = model_and_reference
    quantization.quantize_(model, QUANTIZATION_CONFIGS[mode]())
    quantized = quantized_linears(model)
    assert {name.rsplit(".", 1)[-1] for name in quantized} == PROJECTIONS | {"lm_head"}
    assert len(quantized) == PROJECTION_COUNT + 1
    with torch.no_grad():
        assert_close_to_float32(model(**inputs).logits, reference)
    generated = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=6)
    assert generated.shape[0] == 2 and 1 < generated.shape[1] <= 7


@pytest.mark.parametrize("mode", sorted(QUANTIZATION_CONFIGS))
def test_from_pretrained_with_a_torchao_config_loads_int8_projections(model_and_reference, tmp_path, mode):
    model, inputs, reference = model_and_reference
    model.save_pretrained(tmp_path)
    config = TorchAoConfig(QUANTIZATION_CONFIGS[mode]())
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, quantization_config=config).eval()
    # transformers leaves the output projection, tied to the embeddings, in float32.
    assert {name.rsplit(".", 1)[-1] for name in quantized_linears(loaded)} == PROJECTIONS
    assert len(quantized_linears(loaded)) == PROJECTION_COUNT
    with torch.no_grad():
        assert_close_to_float32(loaded(**inputs).logits, reference)
    generated = loaded.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=6)
    assert generated.shape[0] == 2 and 1 < generated.shape[1] <= 7


@pytest.mark.parametrize("mode", sorted(QUANTIZATION_CONFIGS))
def test_a_model_loaded_with_a_torchao_config_saves_as_safetensors_and_loads_back_quantized(
    model_and_reference, tmp_path, mode
):
    model, inputs, _ = model_and_reference
    model.save_pretrained(tmp_path / "float32")
    config = TorchAoConfig(QUANTIZATION_CONFIGS[mode]())
    quantized = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "float32", quantization_config=config).eval()
    quantized.save_pretrained(tmp_path / "int8")
    assert (tmp_path / "int8" / "model.safetensors").is_file()
    # The saved config records the quantization: a plain from_pretrained loads the int8 model back.
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "int8").eval()
    assert quantized_linears(reloaded) == quantized_linears(quantized)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, quantized(**inputs).logits)


# ----------------------------------------------------------------------------------------- torchao's import noise
def test_importing_the_package_prints_none_of_torchaos_import_noise(environment, tmp_path):
    # A fresh process: torchao logs these lines once, as transformers' model code first imports it.
    completed = subprocess.run(
        [sys.executable, "-c", "import hf_tiny_transformer"],
        env=environment(tmp_path), capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    noise = [line for line in completed.stderr.splitlines() if "_C_" in line or "Enum subclass" in line]
    assert noise == []


def test_only_torchaos_import_noise_is_dropped_and_only_while_the_package_imports():
    torchao_logger = logging.getLogger("torchao")
    filters_before = list(torchao_logger.filters)
    records = []

    class Recorder(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    recorder = Recorder()
    torchao_logger.addHandler(recorder)
    try:
        with torchao_import_noise_dropped():
            torchao_logger.warning("Failed to load /site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no")
            torchao_logger.warning("Skipping import of cpp extensions due to incompatible torch version")
        torchao_logger.warning("Failed to load /site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no")
    finally:
        torchao_logger.removeHandler(recorder)
    assert records == [
        "Skipping import of cpp extensions due to incompatible torch version",
        "Failed to load /site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: no",
    ]
    assert torchao_logger.filters == filters_before
