"""Flags of the short train.py runs that the tests start (imported as `tests.train_flags`, from the repository root
that pytest's `pythonpath` puts first, as the benchmarks are)."""


def new_model_flags(d_model: int, layers: int, num_attention_heads: int, ffn_dim: int) -> list[str]:
    """train.py's flags for the size of a new model with `layers` encoder and `layers` decoder layers; train.py checks
    the values."""
    return [
        "--d_model", str(d_model), "--encoder_layers", str(layers), "--decoder_layers", str(layers),
        "--num_attention_heads", str(num_attention_heads), "--ffn_dim", str(ffn_dim),
    ]  # fmt: skip


def corpus_flags(
    task: str, min_length: int, max_length: int, train_size: int, validation_size: int, test_size: int
) -> list[str]:
    """train.py's flags for a built-in task's corpus: sources of `min_length` to `max_length` integers, and the sizes
    of its train, validation and test splits; train.py checks the values."""
    return [
        "--task", task, "--min_length", str(min_length), "--max_length", str(max_length),
        "--train_size", str(train_size), "--validation_size", str(validation_size), "--test_size", str(test_size),
    ]  # fmt: skip
