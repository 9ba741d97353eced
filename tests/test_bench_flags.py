"""Every benchmark script refuses a flag it cannot work with before any work: argparse's exit (code 2) with a message
that names the flag, not a traceback after minutes of training. Each script's `main` runs in this process with a
user's arguments (the `bench` fixture); none of these reaches the point where a model is built or trained."""

import importlib.util

import pytest

NEEDS_ONNX = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the `onnx` extra")

BAD_FLAGS = [
    ("compare_with_bart", ["--sections", "training,speed"], "unknown sections ['speed']"),
    (
        "learning",
        ["ablation", "--tasks", "copy"],
        "the ablation covers reverse (the default task) and sort, not 'copy'",
    ),
    # reverse has 10 variants after its recipe
    ("learning", ["ablation", "--variants", "0"], "--variants: '0' is not a place of reverse's variants, 1-10"),
    ("learning", ["ablation", "--variants", "11"], "--variants: '11' is not a place of reverse's variants, 1-10"),
    ("learning", ["ablation", "--variants", "two"], "--variants: 'two' is not a place of reverse's variants, 1-10"),
    pytest.param(
        "onnx_runtime", ["--task", "sort"], "--task needs --model (a model trained on that task)", marks=NEEDS_ONNX
    ),
    pytest.param(
        "onnx_runtime",
        ["--model", "somewhere", "--position_embedding_type", "learned"],
        "--position_embedding_type is for the random model; --model brings its own",
        marks=NEEDS_ONNX,
    ),
    pytest.param(
        "onnx_runtime",
        ["--onnx", "somewhere"],
        "--onnx needs --model (the model it was exported from)",
        marks=NEEDS_ONNX,
    ),
    pytest.param(
        "onnx_runtime",
        ["--model", "somewhere", "--onnx", "nowhere"],
        "--onnx nowhere: not an export of export_onnx",
        marks=NEEDS_ONNX,
    ),
    pytest.param("onnx_runtime", ["--repeats", "0"], "--threads and --repeats must be >= 1", marks=NEEDS_ONNX),
    ("openmp_wait", ["--rows", "sort,transpose"], "--rows: unknown transpose"),
    ("peft_vs_full", ["--seeds", "1,1"], "--seeds takes distinct whole numbers"),
    ("peft_vs_full", ["--seeds", "a"], "--seeds takes comma-separated whole numbers"),
    ("peft_vs_full", ["--lora_learning_rates", "0"], "--lora_learning_rates takes positive numbers"),
    ("peft_vs_full", ["--steps", "0"], "--steps must be at least 1"),
    ("peft_vs_full", ["--lora_r", "0"], "--lora_r must be at least 1"),
    ("peft_vs_full", ["--base", "nowhere"], "--base nowhere: not a model folder"),
    ("peft_vs_full", ["--max_length", "0"], "--max_length must be at least 1"),
    ("quantization", ["--batch_sizes", "0"], "--batch_sizes takes whole numbers >= 1"),
    ("quantization", ["--batch_sizes", "1,x"], "--batch_sizes takes comma-separated whole numbers"),
    ("quantization", ["--new_tokens", "0"], "--new_tokens must be at least 1"),
    ("quantization", ["--min_length", "5", "--max_length", "4"], "--max_length (4) must be at least --min_length (5)"),
    ("quantization", ["--model", "nowhere"], "--model nowhere: not a model folder"),
]


@pytest.mark.parametrize("script, flags, message", BAD_FLAGS)
def test_benchmark_scripts_refuse_bad_flags_before_any_work(bench, capsys, script, flags, message):
    with pytest.raises(SystemExit) as stopped:
        bench(script).main(flags)
    assert stopped.value.code == 2 and message in capsys.readouterr().err
