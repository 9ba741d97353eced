"""ONNX export and greedy decoding on ONNX Runtime (hf_tiny_transformer/onnx_tiny_transformer.py): the tokens of
`generate` on padded batches for every position scheme, the cache the graphs hand over, and clear errors."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STEP_SCORES

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
from hf_tiny_transformer.configuration_tiny_transformer import POSITION_EMBEDDING_TYPES
from hf_tiny_transformer.modeling_tiny_transformer import CACHE_FIELD

onnxruntime = pytest.importorskip("onnxruntime", reason="needs the `onnx` extra")
pytest.importorskip("onnxscript", reason="needs the `onnx` extra")
onnx_module = pytest.importorskip("hf_tiny_transformer.onnx_tiny_transformer")
OnnxGreedyGenerator, export_onnx = onnx_module.OnnxGreedyGenerator, onnx_module.export_onnx

VOCAB = 40
MAX_NEW_TOKENS = 12
# Source rows of several lengths, padded to the longest: every row's encoder-decoder attention must mask its padding.
LENGTHS = [7, 3, 9, 1, 5]


def decisive_model(position_embedding_type: str, **overrides) -> TinyTransformerForConditionalGeneration:
    """A tiny random model whose large init scale makes greedy outputs vary from token to token, and each step's best
    logit win by far more than float rounding (checked in the test that compares tokens). One encoder layer: the
    export's time grows with the graph, and two decoder layers already check each layer's cache in its place."""
    config = TinyTransformerConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=2, num_attention_heads=4, ffn_dim=64,
        position_embedding_type=position_embedding_type, initializer_range=0.5, **overrides,
    )  # fmt: skip
    torch.manual_seed(3)
    model = TinyTransformerForConditionalGeneration(config).eval()
    if config.occurrence_bias:  # a table large enough that a wrong occurrence index changes the tokens
        with torch.no_grad():
            model.model.decoder.occurrence_bias.bias.weight.normal_(0, 100)
    return model


def padded_batch(side: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids >= 3 in rows of LENGTHS, padded with 0 on `side`, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(LENGTHS)
    input_ids = torch.zeros(len(LENGTHS), longest, dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        columns = slice(0, length) if side == "right" else slice(longest - length, longest)
        input_ids[row, columns] = torch.randint(3, VOCAB, (length,), generator=generator)
    return input_ids, (input_ids != 0).long()


def eos_that_ends_some_rows(model: TinyTransformerForConditionalGeneration) -> int:
    """A token that greedy decoding of the right-padded batch emits after a few steps in some rows and never in
    others: as eos, it ends some rows early while others run to MAX_NEW_TOKENS."""
    input_ids, attention_mask = padded_batch("right")
    model.generation_config.eos_token_id = None  # generate() reads a None argument as "the model's own"
    tokens = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=MAX_NEW_TOKENS)[:, 3:]
    candidates = [int(token) for token in tokens.unique() if not (tokens == token).any(dim=1).all()]
    return max(candidates, key=lambda token: int((tokens == token).any(dim=1).sum()))


# Each position scheme, and relative positions with the occurrence bias (sort's recipe), whose graphs carry the
# occurrence indices too.
EXPORTED_MODELS = {scheme: {"position_embedding_type": scheme} for scheme in POSITION_EMBEDDING_TYPES}
EXPORTED_MODELS["relative, occurrence bias"] = {"position_embedding_type": "relative", "occurrence_bias": True}


# Exported by the command line in a new process, as a user would (the others through `export_onnx` in this process, the
# Python API, which saves each a process's imports).
EXPORTED_BY_THE_COMMAND_LINE = "relative, occurrence bias"


@pytest.fixture(scope="module")
def exports(tmp_path_factory, environment):
    """`exports(name)`: (model, folder) of EXPORTED_MODELS[name], a decisive model with its eos chosen by
    `eos_that_ends_some_rows`, saved and exported from the saved folder; made once per module (the benchmark's test
    decodes with one of the exports the other tests check, rather than paying an export of its own)."""
    made = {}

    def export(name: str) -> tuple[TinyTransformerForConditionalGeneration, Path]:
        if name not in made:
            made[name] = saved_and_exported(name, tmp_path_factory, environment)
        return made[name]

    return export


def saved_and_exported(
    name: str, tmp_path_factory, environment
) -> tuple[TinyTransformerForConditionalGeneration, Path]:
    """One of `exports`, exported by the command line or by `export_onnx` (see EXPORTED_BY_THE_COMMAND_LINE)."""
    model = decisive_model(**EXPORTED_MODELS[name])
    model.generation_config.eos_token_id = eos_that_ends_some_rows(model)
    folder = tmp_path_factory.mktemp(f"onnx-{name.replace(', ', '-').replace(' ', '_')}")
    model.save_pretrained(folder / "model")
    expected = [folder / "onnx" / file for file in ("first_step.onnx", "next_step.onnx")]
    if name == EXPORTED_BY_THE_COMMAND_LINE:
        command = [sys.executable, "-m", "hf_tiny_transformer.onnx_tiny_transformer", folder / "model", folder / "onnx"]
        completed = subprocess.run(command, env=environment(folder), capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.split() == [str(path) for path in expected]
    else:
        loaded = TinyTransformerForConditionalGeneration.from_pretrained(folder / "model")
        assert export_onnx(loaded, folder / "onnx") == expected
    return model, folder / "onnx"


@pytest.fixture(scope="module", params=list(EXPORTED_MODELS))
def exported(request, exports):
    """(model, folder): each of EXPORTED_MODELS, made by `exports`."""
    return exports(request.param)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_onnx_runtime_greedy_tokens_equal_generate_on_a_padded_batch(exported, side):
    model, folder = exported
    input_ids, attention_mask = padded_batch(side)
    reference = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=MAX_NEW_TOKENS, **STEP_SCORES)
    # Tokens are compared exactly although ONNX Runtime's kernels round differently: every step's best logit wins by
    # far more than float rounding.
    best_two = torch.stack(reference.scores).topk(2, dim=-1).values
    assert (best_two[..., 0] - best_two[..., 1]).min() > 1e-3
    expected = reference.sequences.numpy()
    eos = model.generation_config.eos_token_id
    ended_early = (expected[:, 1:-1] == eos).any(axis=1)
    assert ended_early.any() and not ended_early.all(), "the batch should hold rows that end early and rows that do not"

    generator = OnnxGreedyGenerator(folder, intra_op_num_threads=1)
    tokens = generator.generate(input_ids, attention_mask, max_new_tokens=MAX_NEW_TOKENS)
    np.testing.assert_array_equal(tokens, expected)
    # One row at a time (batch 1, no padding) gives each row's tokens up to its eos.
    for row, length in enumerate(LENGTHS):
        columns = slice(0, length) if side == "right" else slice(max(LENGTHS) - length, None)
        alone = generator.generate(input_ids[row : row + 1, columns].numpy(), max_new_tokens=MAX_NEW_TOKENS)
        np.testing.assert_array_equal(alone[0], expected[row, : alone.shape[1]])


@pytest.mark.slow
def test_onnx_runtime_uses_the_generation_configs_max_new_tokens(exported):
    model, folder = exported
    input_ids, attention_mask = padded_batch("right", seed=1)
    expected = model.generate(input_ids, attention_mask=attention_mask)  # the saved generation config's settings
    tokens = OnnxGreedyGenerator(folder, intra_op_num_threads=1).generate(input_ids.tolist(), attention_mask.tolist())
    np.testing.assert_array_equal(tokens, expected.numpy())


@pytest.mark.slow
def test_exported_steps_hand_over_the_models_cache_and_logits(exported):
    """The first step's logits and cache (self-attention K, V of the start token; encoder-decoder K, V of every
    source position) and a next step's (the self-attention cache one position longer) are the model's, to float
    rounding: 1e-4 on values of order 1-10 allows for ONNX Runtime's other summation order."""
    model, folder = exported
    generator = OnnxGreedyGenerator(folder, intra_op_num_threads=1)
    input_ids, attention_mask = padded_batch("right")
    batch_size, source_length = input_ids.shape
    config = model.config
    heads, head_dim, layers = config.num_attention_heads, config.head_dim, config.decoder_layers
    start = torch.full((batch_size, 1), config.decoder_start_token_id)
    with torch.no_grad():
        first = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=start, use_cache=True)
    outputs = generator.first_step.run(
        None,
        {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(), "decoder_input_ids": start.numpy()},
    )
    names = [output.name for output in generator.first_step.get_outputs()]
    assert names[0] == "logits" and len(names) == 1 + 4 * layers + config.occurrence_bias
    np.testing.assert_allclose(outputs[0], first.logits[:, -1].numpy(), atol=1e-4, rtol=1e-4)
    cache = getattr(first, CACHE_FIELD)
    for layer in range(layers):
        for side, source, length in (
            ("decoder", cache.self_attention_cache, 1),
            ("encoder", cache.cross_attention_cache, source_length),
        ):
            for part, expected in (("key", source.layers[layer].keys), ("value", source.layers[layer].values)):
                got = outputs[names.index(f"present.{layer}.{side}.{part}")]
                assert got.shape == (batch_size, heads, length, head_dim)
                np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)

    next_token = first.logits[:, -1].argmax(-1, keepdim=True)
    # With the occurrence bias: the new token's occurrence index (1 where it repeats the start token), which the
    # model is given as generate gives it, and the graph as the generator does.
    occurrences = {"decoder_occurrence_indices": (next_token == start).long()} if config.occurrence_bias else {}
    with torch.no_grad():
        second = model(
            input_ids=input_ids,  # the source's occurrence indices come from its ids
            encoder_outputs=(first.encoder_last_hidden_state,),
            attention_mask=attention_mask,
            decoder_input_ids=next_token,
            use_cache=True,
            **occurrences,
            **{CACHE_FIELD: cache},
        )
    feed = {"decoder_input_ids": next_token.numpy(), "attention_mask": attention_mask.numpy()}
    feed |= {name.replace("present", "past_key_values"): value for name, value in zip(names[1:], outputs[1:])}
    feed |= {name: value.numpy() for name, value in occurrences.items()}
    if config.occurrence_bias and config.occurrence_bias_pairs != "all":
        feed["input_ids"] = input_ids.numpy()  # the bias compares the new token with the source's
    step_outputs = generator.next_step.run(None, feed)
    step_names = [output.name for output in generator.next_step.get_outputs()]
    np.testing.assert_allclose(step_outputs[0], second.logits[:, -1].numpy(), atol=1e-4, rtol=1e-4)
    second_cache = getattr(second, CACHE_FIELD).self_attention_cache
    for layer in range(layers):
        for part, expected in (("key", second_cache.layers[layer].keys), ("value", second_cache.layers[layer].values)):
            got = step_outputs[step_names.index(f"present.{layer}.decoder.{part}")]
            assert got.shape == (batch_size, heads, 2, head_dim)
            np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_generator_refuses_bad_inputs_with_a_clear_error(exported):
    model, folder = exported
    generator = OnnxGreedyGenerator(folder, intra_op_num_threads=1)
    input_ids, attention_mask = padded_batch("right")
    bad_calls = {
        "outside the vocabulary": dict(input_ids=input_ids.clamp(max=VOCAB - 1) + 1),
        "shape of `input_ids`": dict(input_ids=input_ids, attention_mask=attention_mask[:, :-1]),
        "only 1 (token) and 0": dict(input_ids=input_ids, attention_mask=attention_mask * 2),
        "must hold integers": dict(input_ids=input_ids.float()),
        "shape [batch, length]": dict(input_ids=input_ids[0]),
        "max_new_tokens must be an integer": dict(input_ids=input_ids, max_new_tokens=0),
    }
    if model.config.position_limit is not None:
        too_long = torch.full((1, model.config.position_limit + 1), 5)
        bad_calls["beyond `max_position_embeddings`"] = dict(input_ids=too_long)
    for message, arguments in bad_calls.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            generator.generate(**arguments)
    with pytest.raises(ValueError, match="intra_op_num_threads"):
        OnnxGreedyGenerator(folder, intra_op_num_threads=0)


def test_export_refuses_what_it_cannot_export(tmp_path):
    model = decisive_model("relative")
    with pytest.raises(ValueError, match="takes a TinyTransformerForConditionalGeneration"):
        export_onnx(model.model, tmp_path)
    with pytest.raises(ValueError, match="float32"):
        export_onnx(decisive_model("relative").to(torch.bfloat16), tmp_path)
    beam_model = decisive_model("relative")
    beam_model.generation_config.num_beams = 3
    with pytest.raises(ValueError, match="num_beams=3"):
        export_onnx(beam_model, tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        export_onnx(model, a_file)


def test_generator_refuses_a_folder_without_an_export(tmp_path):
    decisive_model("relative").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="first_step.onnx, next_step.onnx"):
        OnnxGreedyGenerator(tmp_path)


@pytest.mark.slow
def test_benchmark_reports_both_batch_sizes(bench, capsys, tmp_path, exports):
    """`python -m bench.onnx_runtime --smoke` runs and reports each row (it times nothing that matters here), on a
    model and its export by the command line (`--model`, `--onnx`): the export itself is the other tests' concern."""
    _, folder = exports(EXPORTED_BY_THE_COMMAND_LINE)
    output = tmp_path / "report.json"
    flags = ["--smoke", "--model", str(folder.parent / "model"), "--onnx", str(folder), "--repeats", "1"]
    report = bench("onnx_runtime").main([*flags, "--output", str(output)])
    printed = capsys.readouterr().out
    assert [row["batch_size"] for row in report["rows"]] == [1, 32]
    for row in report["rows"]:
        assert row["generate"]["tokens_per_s"] > 0 and row["onnxruntime"]["tokens_per_s"] > 0
        assert f"batch {row['batch_size']}, 6 + 4 tokens" in printed
    assert output.is_file()
