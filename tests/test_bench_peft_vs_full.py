"""bench/peft_vs_full.py end to end with a tiny base and a few steps: every row and column of its
table, with the counts it reads from the saved files checked against their definition. It times nothing that is
checked (figures on a test machine mean nothing); the script's `main` runs in this process with a user's arguments,
and train.py in processes of its own, as the script runs it."""

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
from hf_tiny_transformer_train.data import build_tokenizer

pytest.importorskip("peft", reason="needs the `peft` extra")


@pytest.mark.slow
def test_peft_against_full_fine_tuning_reports_each_method_and_counts_lora_parameters_by_their_definition(
    bench_run, tmp_path
):
    # A base of the built-in vocabulary, untrained: the table's rows and counts do not depend on what it learnt, and a
    # given base spares the run a training process (the short model the script trains without --base is the helper
    # bench/quantization.py's test runs, bench.common.given_or_short_model).
    base = tmp_path / "base"
    tokenizer = build_tokenizer()
    config = TinyTransformerConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=2,
                                   num_attention_heads=2, ffn_dim=48, position_embedding_type="relative",
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    TinyTransformerForConditionalGeneration(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    report, printed = bench_run("peft_vs_full", ["--smoke", "--base", str(base), "--steps", "3", "--seeds", "3",
                                                 "--lora_learning_rates", "1e-2", "--lora_r", "3",
                                                 "--learning_rate", "2e-3"])  # fmt: skip
    summaries = {summary["method"]: summary for summary in report["summaries"]}
    assert list(summaries) == ["before", "lora-lr0.01", "full"]
    for label in ("base model, not fine-tuned", "LoRA r=3, lr 0.01", "full fine-tuning, lr 0.002"):
        assert label in printed
    for column in ("trainable parameters", "test exact match (1 seeds)", "train / full", "weights on disk"):
        assert column in printed

    for summary in summaries.values():
        assert 0 <= summary["test_exact_match_min"] <= summary["test_exact_match"] <= summary["test_exact_match_max"]
        assert summary["test_exact_match_max"] <= 1
        assert summary["wall_s"] > 0 and summary["weights_bytes"] > 0
    lora, full = summaries["lora-lr0.01"], summaries["full"]
    assert summaries["before"]["trainable_parameters"] == 0 and summaries["before"]["train_s"] is None
    assert lora["train_s"] > 0 and full["train_s"] > 0
    # Full fine-tuning trains (and saves) every parameter of the base; LoRA of rank r on every projection trains
    # r x (inputs + outputs) values per projection, and saves only those.
    model = AutoModelForSeq2SeqLM.from_pretrained(base)
    assert report["base"] == {"folder": str(base), "parameters": model.num_parameters()}
    assert full["trainable_parameters"] == report["base"]["parameters"] and full["trainable_share"] == 1
    projections = [module for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name != "lm_head"]  # fmt: skip
    assert lora["trainable_parameters"] == sum(3 * (p.in_features + p.out_features) for p in projections)
    assert report["runs"][0]["weights_bytes"] == full["weights_bytes"]  # the base's model file, as big as full's
    assert 0 < lora["weights_bytes"] < full["weights_bytes"]
    assert [run["seed"] for run in report["runs"]] == [3, 3, 3]
