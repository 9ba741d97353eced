"""bench/quantization.py end to end with a tiny model it trains itself and one repeat: every row and column of its
table. It checks what does not depend on the machine (which layers are int8, the answers kept, bytes on disk and in
memory, that both torchao routes compute the same model), never the timings; the script's `main` runs in this
process with a user's arguments."""

import pytest

pytest.importorskip("torchao.quantization", reason="needs the `quantization` extra")

ROWS = [
    "float32",
    "int8 dynamic activations + int8 weights, quantize_",
    "int8 dynamic activations + int8 weights, TorchAoConfig",
    "int8 weights only, quantize_",
    "int8 weights only, TorchAoConfig",
]


@pytest.mark.slow
def test_quantization_benchmark_reports_every_mode_both_ways(bench_run):
    report, printed = bench_run("quantization", ["--smoke", "--batch_sizes", "1,3"])
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ROWS
    for column in ("int8 linears", "test exact match", "same as float32", "tokens/s b1", "tokens/s b3", "on disk"):
        assert column in printed
    assert all(name in printed for name in ROWS)

    reference = rows["float32"]
    assert reference["same_as_float32"] == 1 and reference["quantized_linears"] == 0
    assert reference["disk"]["format"] == "safetensors"
    for name, row in rows.items():
        assert 0 <= row["test_exact_match"] <= 1 and 0 <= row["same_as_float32"] <= 1
        assert all(row["generation"][batch]["tokens_per_s"] > 0 for batch in ("1", "3"))
        if name == "float32":
            continue
        # quantize_ takes every nn.Linear; TorchAoConfig leaves the output layer (tied to the embeddings) in float32.
        assert row["quantized_linears"] == row["linears"] - name.endswith("TorchAoConfig")
        assert 0 < row["memory_bytes"] < reference["memory_bytes"]
        assert 0 < row["disk"]["bytes"] < reference["disk"]["bytes"]
        if name.endswith("TorchAoConfig"):
            assert row["disk"]["format"] == "safetensors"  # transformers saves torchao's tensors it quantized itself
        elif row["disk"]["format"] != "safetensors":
            assert "* save_pretrained fails" in printed  # the table says which sizes are torch.save's
    # Where both routes quantize the same layers, they give the same answers on the whole test split.
    assert report["torchao_config_equals_quantize_without_output_layer"] == {
        "int8 dynamic activations + int8 weights": True,
        "int8 weights only": True,
    }
