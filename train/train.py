#!/usr/bin/env python
"""Train TinyTransformer on a synthetic task or on your own pairs of texts with the Seq2SeqTrainer, and leave a folder
ready for the Hub.

In the shape of transformers' `examples/pytorch/translation/run_translation.py`: model, data and
`Seq2SeqTrainingArguments` dataclasses read by `HfArgumentParser`, so every Trainer flag works as usual.

    python train/train.py                                      # the default task, in minutes on a CPU
    python train/train.py --task sort --output_dir outputs/sort
    python train/train.py --task copy --model_name_or_path outputs/tiny-transformer-reverse   # fine-tune
    python train/train.py --train_file data/dates/train.jsonl   # your pairs; validation and test drawn from them
    torchrun --nproc_per_node 2 train/train.py --use_cpu       # 2 processes (DDP over gloo)
    accelerate launch --config_file train/accelerate/ddp.yaml --num_processes 8 train/train.py

Flags the user does not pass take the task's defaults (`TASK_DEFAULTS`), chosen so that each task reaches at least
99% test exact match within 10 minutes on a 2-core CPU; with your own data (`--train_file`, `--dataset_name`, ...),
generic defaults for a small corpus on a CPU (`USER_DATA_DEFAULTS`). The output folder holds the model, its source
code, the tokenizer, a clean generation config, the metrics, a model card (README.md) and two figures.
"""

import os
import sys

from hf_tiny_transformer_train.openmp import choose_wait_policy

# Before torch is imported (OpenMP reads it once): idle OpenMP threads spin on free CPUs (steps 1.19-1.24x faster)
# and sleep where other processes are busy (spinning threads then made steps 1.6x slower); see openmp.py. A program
# that imports this module after torch (a benchmark, a test) keeps its threads as they are: a policy set now would
# not reach them, only the processes it starts, chosen by the load of the moment it imported us.
if "torch" not in sys.modules:
    choose_wait_policy(os.environ)

import logging  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    GenerationConfig,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration  # noqa: E402
from hf_tiny_transformer.configuration_tiny_transformer import POSITION_EMBEDDING_TYPES  # noqa: E402
from hf_tiny_transformer_train.callbacks import StopAtExactMatchCallback  # noqa: E402
from hf_tiny_transformer_train.checkpoints import last_complete_checkpoint  # noqa: E402
from hf_tiny_transformer_train.data import (  # noqa: E402
    TASKS,
    build_corpus,
    build_tokenizer,
    curriculum_step_count,
    input_lengths,
    length_curriculum,
    source_length,
    target_length,
    tokenize_corpus,
)
from hf_tiny_transformer_train.metrics import generation_metrics  # noqa: E402
from hf_tiny_transformer_train.model_card import (  # noqa: E402
    plot_cross_attention,
    plot_training_curves,
    write_model_card,
)
from hf_tiny_transformer_train.tokenizer_training import (  # noqa: E402
    MIN_VOCAB_SIZE,
    TOKENIZER_TYPES,
    check_tokenizer,
    train_tokenizer,
)
from hf_tiny_transformer_train.user_data import (  # noqa: E402
    UserData,
    check_data_file,
    check_lengths,
    load_user_data,
    tokenize_user_data,
    unknown_token_share,
)

logger = logging.getLogger(__name__)

DEFAULT_TASK = "reverse"
# The flags that shape a new model; a checkpoint given with --model_name_or_path brings its own.
NEW_MODEL_FIELDS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "num_attention_heads",
    "ffn_dim",
    "dropout",
    "max_position_embeddings",
    "position_embedding_type",
    "norm_position",
)


def computes_bf16_natively() -> bool:
    """Whether this machine multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU with AVX-512
    BF16 or AMX. Elsewhere CPU autocast emulates bf16, slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if torch.accelerator.is_available():
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own (private) feature checks
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


# Defaults for flags the user does not pass, for all three dataclasses: COMMON_DEFAULTS, updated by the task's entry
# in TASK_DEFAULTS. Chosen and measured (bench/learning.py; figures in bench/README.md) so that `python train/train.py
# --task X` learns the design document's sequences of 1-50 integers to at least 99% test exact match in minutes on a
# 2-core CPU.
COMMON_DEFAULTS = {
    # data: the design document's lengths, and a test on longer inputs (51-100) for the model card
    "min_length": 1,
    "max_length": 50,
    "train_size": 100_000,
    "validation_size": 500,
    "test_size": 2000,
    "longer_test_size": 200,
    # the first tenth of the steps mostly on short sequences, the cap growing to the longest (reverse: 100% validation
    # exact match after 300 steps, 65 s for the whole command, against 600 steps and 135 s with every batch drawn from
    # all lengths)
    "length_curriculum_steps": 0.1,
    # a new model. Relative positions learn these tasks in a fraction of the steps absolute ones need (reverse of
    # 1-50 integers: 100% validation exact match after 600 steps, against 90% after 1,900 with learned positions),
    # and keep most of it on inputs twice as long as any seen in training.
    "d_model": 128,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_attention_heads": 4,
    "ffn_dim": 512,
    "dropout": 0.0,
    "position_embedding_type": "relative",
    "max_position_embeddings": 128,
    # training: train, evaluate and test in one go, with metrics on greedy generations, and stop once every
    # validation example is right (the steps after that change nothing)
    "do_train": True,
    "do_eval": True,
    "do_predict": True,
    "predict_with_generate": True,
    "max_steps": 3000,
    "target_exact_match": 1.0,
    "learning_rate": 2e-3,
    "warmup_steps": 100,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 250,
    "eval_strategy": "steps",
    "eval_steps": 100,
    "save_steps": 100,
    "save_total_limit": 2,
    "logging_steps": 25,
    "report_to": "none",
    # Pinned memory only helps copies to a GPU; on a CPU-only machine it just warns.
    "dataloader_pin_memory": torch.cuda.is_available(),
    # Distributed and mixed precision (issue 12). Every parameter of TinyTransformer takes part in every step, so DDP's
    # search for unused ones (the Trainer's default) is only an extra walk over the autograd graph at each backward.
    "ddp_find_unused_parameters": False,
    # Without an accelerator, say "CPU" explicitly: only then do torchrun's processes join one gloo group (otherwise
    # each rank trains alone, silently) and does the Trainer accept --bf16 (CPU autocast).
    "use_cpu": not torch.accelerator.is_available(),
}
TASK_DEFAULTS = {
    "copy": {},
    "reverse": {},
    # Sorting needs many examples however they are batched, ordered or weighted (57,000-80,000 before validation exact
    # match reaches 99% with the common model; explored in bench/README.md), so its time goes into computing them:
    # learned positions (relative ones cost 10-20% more per step and give a value task nothing), bf16 where the
    # hardware multiplies it (1.24-1.57x on this project's AMX CPU), and the layers where they pay. One encoder layer
    # and three decoder layers learn it in fewer steps than two and two (seed 42, 1,200 steps: 99.3% test exact match
    # against 98.75%) at about the same cost per step: the input only has to be read, the ordered output is written
    # step by step. Evaluations every 300 steps: a stop at 100% validation exact match rarely fires for sort, so
    # frequent evaluations were mostly cost (~1.7 s each).
    "sort": {
        "position_embedding_type": "learned",
        "bf16": computes_bf16_natively(),
        "encoder_layers": 1,
        "decoder_layers": 3,
        "per_device_train_batch_size": 64,
        "max_steps": 1200,
        "eval_steps": 300,
        "save_steps": 300,
    },
    # 1-10 digits per operand, written with leading zeros to 10 digits and the sum least significant digit first
    # (data.py): a fixed layout, so there is no longer test. Learned (absolute) positions: each answer digit reads the
    # two operand digits 11 positions apart, farther than the relative scheme's exact buckets reach (with relative
    # positions, batches of 256 at 2e-3: 0% validation exact match after 1,200 steps; learned, 128 at 1e-3: 93.8% after
    # 3,000).
    "add": {
        "max_length": 10,
        "longer_test_size": 0,
        "length_curriculum_steps": 0,
        "position_embedding_type": "learned",
        "per_device_train_batch_size": 128,
        "learning_rate": 1e-3,
        "max_steps": 3000,
        "eval_steps": 250,
        "save_steps": 250,
    },
}

# Defaults for a user's own data (--train_file, --dataset_name, ...), for flags the user does not pass: generic, not
# tuned to one corpus. They suit a small corpus (thousands to a few hundred thousand short pairs) on a CPU: the
# built-in tasks' model size, with dropout because real data repeat where the synthetic corpus never does; a step
# budget of about 10 minutes on 2 CPU cores; and a stop once validation exact match has not improved for 5
# evaluations, keeping the best checkpoint. The built-in tasks keep COMMON_DEFAULTS and TASK_DEFAULTS.
USER_DATA_DEFAULTS = {
    # data and a new tokenizer
    "source_column": "source",
    "target_column": "target",
    "validation_split_percentage": 5.0,
    "tokenizer_type": "bpe",
    "vocab_size": 1000,
    # a new model
    "d_model": 128,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_attention_heads": 4,
    "ffn_dim": 512,
    "dropout": 0.1,
    "position_embedding_type": "learned",
    "max_position_embeddings": 256,
    # training: train, evaluate and test in one go, with metrics on greedy generations
    "do_train": True,
    "do_eval": True,
    "do_predict": True,
    "predict_with_generate": True,
    "max_steps": 5000,
    "learning_rate": 1e-3,
    "warmup_steps": 0.05,  # below 1: a share of max_steps
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "eval_strategy": "steps",
    "eval_steps": 250,
    "save_steps": 250,
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "exact_match",
    "early_stopping_patience": 5,
    "logging_steps": 50,
    "report_to": "none",
    "dataloader_pin_memory": torch.cuda.is_available(),
}
# Where a user's data come from: any of these flags selects user data instead of the built-in tasks.
USER_DATA_SOURCES = ("train_file", "validation_file", "test_file", "dataset_name")
# Flags that only mean something for a user's data, and flags that only describe the synthetic corpus.
USER_DATA_FIELDS = (
    "dataset_config_name",
    "source_column",
    "target_column",
    "max_source_length",
    "max_target_length",
    "max_train_samples",
    "max_eval_samples",
    "max_predict_samples",
    "preprocessing_num_workers",
    "validation_split_percentage",
    "tokenizer_name",
    "tokenizer_type",
    "vocab_size",
)
SYNTHETIC_DATA_FIELDS = (
    "task",
    "train_size",
    "validation_size",
    "test_size",
    "longer_test_size",
    "length_curriculum_steps",
    "min_length",
    "max_length",
)
# The flags that describe a new tokenizer; a given tokenizer or checkpoint brings its own.
NEW_TOKENIZER_FIELDS = ("tokenizer_type", "vocab_size")
# Metrics computed from generations: they exist only with --predict_with_generate.
GENERATION_METRICS = ("exact_match", "token_accuracy", "chrf", "bleu")


@dataclass
class ModelArguments:
    """Which model to train: a new TinyTransformer of the given size, or an existing checkpoint to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune this checkpoint (a local folder or a Hub id) and its tokenizer instead of training a "
            "new model. The size flags below then cannot be used: the checkpoint's config decides."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub checkpoint."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Let --model_name_or_path run Python code stored with the checkpoint (only for checkpoints and "
            "repositories you trust). Not needed for TinyTransformer checkpoints: this script uses the installed "
            "hf_tiny_transformer classes for them."
        },
    )
    d_model: int | None = field(default=None, metadata={"help": "Hidden size of a new model."})
    encoder_layers: int | None = field(default=None, metadata={"help": "Encoder layers of a new model."})
    decoder_layers: int | None = field(default=None, metadata={"help": "Decoder layers of a new model."})
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of a new model; must divide d_model."}
    )
    ffn_dim: int | None = field(default=None, metadata={"help": "Feed-forward inner size of a new model."})
    dropout: float | None = field(default=None, metadata={"help": "Dropout probability of a new model, in [0, 1)."})
    max_position_embeddings: int | None = field(
        default=None,
        metadata={"help": "Longest sequence a new model accepts (default: the TinyTransformerConfig default)."},
    )
    position_embedding_type: str | None = field(
        default=None,
        metadata={
            "help": "Positions of a new model: relative ones (a learned bias per distance inside attention) also hold "
            "on sequences longer than any seen in training.",
            "choices": list(POSITION_EMBEDDING_TYPES),
        },
    )
    norm_position: str | None = field(
        default=None, metadata={"help": "LayerNorm placement of a new model.", "choices": ["pre", "post"]}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "With your own data: a tokenizer (a folder written by save_pretrained, or a Hub id) instead of "
            "training a new one. It needs a pad and an end-of-sequence token."
        },
    )
    tokenizer_type: str | None = field(
        default=None,
        metadata={
            "help": "With your own data: the kind of the new tokenizer trained on the training split (default bpe): "
            "byte-level BPE (any text, no unknown tokens) or one token per word (word_level).",
            "choices": list(TOKENIZER_TYPES),
        },
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "With your own data: most tokens of the new tokenizer (default 1000)."}
    )


@dataclass
class DataArguments:
    """The data: the synthetic corpus of a built-in task (see data.py; sizes and lengths default to the task's values
    in TASK_DEFAULTS), or your own pairs of texts in files or a dataset (see user_data.py)."""

    task: str | None = field(
        default=None,
        metadata={
            "help": f"What the model learns to do with a sequence of integers 0-99 (default {DEFAULT_TASK}).",
            "choices": list(TASKS),
        },
    )
    train_size: int | None = field(default=None, metadata={"help": "Number of training examples."})
    validation_size: int | None = field(default=None, metadata={"help": "Number of validation examples."})
    test_size: int | None = field(default=None, metadata={"help": "Number of test examples."})
    min_length: int | None = field(
        default=None, metadata={"help": "Shortest source: integers in the sequence, or digits per operand for add."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Longest source: integers in the sequence, or digits per operand for add."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Tokenize again even when the datasets cache holds the result."}
    )
    # Your own data, in the names of transformers' run_translation.py where it has them.
    train_file: str | None = field(
        default=None, metadata={"help": "Your training pairs: a .jsonl, .json, .csv or .parquet file."}
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Your validation pairs (default: --validation_split_percentage of the training file)."},
    )
    test_file: str | None = field(
        default=None,
        metadata={"help": "Your test pairs (default: --validation_split_percentage of the training file)."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Your pairs as a dataset: a folder written by save_to_disk, or anything datasets.load_dataset "
            "reads (a Hub id, a local folder of files). Its train, validation and test splits are used."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration of --dataset_name, for datasets that have several."}
    )
    source_column: str | None = field(default=None, metadata={"help": "The column of input texts (default source)."})
    target_column: str | None = field(
        default=None, metadata={"help": "The column of expected output texts (default target)."}
    )
    max_source_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncate sources to this many tokens (</s> included); the log counts the truncated examples. "
            "Default: no truncation, and a source longer than the model's positions is an error."
        },
    )
    max_target_length: int | None = field(
        default=None, metadata={"help": "Truncate targets to this many tokens (</s> included); as --max_source_length."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first this many training examples."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first this many validation examples."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use only the first this many test examples."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes that tokenize the data (default: this one)."}
    )
    validation_split_percentage: float | None = field(
        default=None,
        metadata={
            "help": "Where no validation or test data are given, this percentage of the training data's distinct "
            "sources, drawn with --seed, takes the place of each (default 5); their examples leave the training data."
        },
    )
    longer_test_size: int | None = field(
        default=None,
        metadata={
            "help": "Built-in tasks: also test on this many held-out sources longer than any in training (max_length "
            "+ 1 to 2 x max_length, within the model's positions), to measure how far the model generalises; 0: none."
        },
    )
    length_curriculum_steps: float | None = field(
        default=None,
        metadata={
            "help": "Built-in tasks: during this many first steps (below 1: this share of --max_steps), three "
            "quarters of each batch are sources no longer than a cap growing from the shortest length to the "
            "longest, the rest of all lengths (default 0.1); 0: every batch uniformly drawn from all lengths."
        },
    )
    target_exact_match: float | None = field(
        default=None,
        metadata={
            "help": "Stop training at the first evaluation whose validation exact match reaches this share (default "
            "for the built-in tasks: 1.0, every validation example right; 0 turns it off)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop training once --metric_for_best_model has not improved for this many evaluations (default "
            "5 with your own data, off for the built-in tasks; 0 turns it off). Needs --load_best_model_at_end."
        },
    )

    @property
    def uses_own_data(self) -> bool:
        """Whether the user's files or dataset, rather than a built-in task, are the data."""
        return any(getattr(self, name) is not None for name in USER_DATA_SOURCES)


def given_flags(argv: list[str]) -> set[str]:
    """The flags the user passed, written `--name value` or `--name=value`."""
    return {arg.split("=")[0] for arg in argv}


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, Seq2SeqTrainingArguments]:
    """Parse `argv` with the task's defaults for every flag that is not given, and check the values."""
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    # The task chooses the defaults of the other flags, so read it (and whether a checkpoint is given) first. Defaults
    # set on the parser apply exactly to the flags the user did not pass.
    known, _ = parser.parse_known_args([arg for arg in argv if arg not in ("-h", "--help")])
    if any(getattr(known, name) is not None for name in USER_DATA_SOURCES):
        defaults = {**USER_DATA_DEFAULTS, "output_dir": f"outputs/tiny-transformer-{user_data_name(known)}"}
        if known.model_name_or_path is not None or known.tokenizer_name is not None:
            # A given tokenizer or checkpoint brings its own; leave these None to detect flags that would be ignored.
            defaults = {name: value for name, value in defaults.items() if name not in NEW_TOKENIZER_FIELDS}
    else:
        task = known.task or DEFAULT_TASK
        defaults = {
            **COMMON_DEFAULTS,
            **TASK_DEFAULTS[task],
            "task": task,
            "output_dir": f"outputs/tiny-transformer-{task}",
        }
    if known.model_name_or_path is not None:
        # A checkpoint brings its own size; leave these None to detect flags that would be silently ignored.
        defaults = {name: value for name, value in defaults.items() if name not in NEW_MODEL_FIELDS}
    given = given_flags(argv)
    if known.fp16 or ("--use_cpu" in given and not known.use_cpu and not torch.accelerator.is_available()):
        # A default of bf16 gives way to the precision or device the user chose (the Trainer refuses fp16 with bf16,
        # and bf16 on a CPU without use_cpu).
        defaults.pop("bf16", None)
    training_fields = {field.name for field in Seq2SeqTrainingArguments.__dataclass_fields__.values()}
    own_fields = {*ModelArguments.__dataclass_fields__, *DataArguments.__dataclass_fields__}
    # Read the Trainer's fields generically: only set defaults for flags the installed transformers has.
    parser.set_defaults(**{name: value for name, value in defaults.items() if name in training_fields | own_fields})
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        drop_defaults_that_cannot_apply(data_args, training_args, argv)
        check_arguments(model_args, data_args, training_args)
    except ValueError as error:
        parser.error(str(error))
    return model_args, data_args, training_args


def evaluates_generations(training_args: Seq2SeqTrainingArguments) -> bool:
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    return training_args.do_eval and strategy != "no" and training_args.predict_with_generate


def drop_defaults_that_cannot_apply(
    data_args: DataArguments, training_args: Seq2SeqTrainingArguments, argv: list[str]
) -> None:
    """A task's default stop at the validation target needs evaluations, and its curriculum a step count and its own
    batch order: where the user's flags remove those, the defaults are dropped (the same flags given explicitly are
    errors)."""
    given = given_flags(argv)
    if "--target_exact_match" not in given and not evaluates_generations(training_args):
        data_args.target_exact_match = None
    if "--length_curriculum_steps" not in given and (
        training_args.max_steps < 1 or "--train_sampling_strategy" in given
    ):
        data_args.length_curriculum_steps = 0


def check_arguments(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> None:
    """Raise ValueError, naming the flag and its allowed range, for values that cannot work."""
    # Trainer flags it accepts but that would fail only after the corpus is built (or silently never act).
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1; got {getattr(training_args, name)}")
    if not training_args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive; got {training_args.learning_rate}")
    for name, strategy in (("save_steps", training_args.save_strategy), ("eval_steps", training_args.eval_strategy)):
        steps = getattr(training_args, name)
        if getattr(strategy, "value", strategy) == "steps" and steps is not None and not steps > 0:
            raise ValueError(f"--{name} must be positive (a step count, or a fraction of the run below 1); got {steps}")
    check_early_stopping(data_args, training_args)
    if data_args.target_exact_match is not None and not 0 <= data_args.target_exact_match <= 1:
        raise ValueError(f"--target_exact_match must be a share in [0, 1] (0: off); got {data_args.target_exact_match}")
    if data_args.target_exact_match and not evaluates_generations(training_args):
        raise ValueError(
            "--target_exact_match needs evaluations on generations (--do_eval, --eval_strategy steps or epoch, "
            "--predict_with_generate); pass --target_exact_match 0 to train without"
        )
    check_model_size_flags(model_args)
    if data_args.uses_own_data:
        check_user_data_arguments(model_args, data_args, training_args)
        return
    values = {**vars(model_args), **vars(data_args)}
    given = [f"--{name}" for name in USER_DATA_FIELDS if values[name] is not None]
    if given:
        raise ValueError(f"{', '.join(given)} need your own data: pass --train_file or --dataset_name")
    for name in ("train_size", "validation_size", "test_size", "min_length"):
        if getattr(data_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1; got {getattr(data_args, name)}")
    if data_args.max_length < data_args.min_length:
        raise ValueError(
            f"--max_length ({data_args.max_length}) must be at least --min_length ({data_args.min_length})"
        )
    max_positions = model_max_positions(model_args)
    # The longest source gets </s>; the longest decoder input is the start token plus the target.
    longest = 1 + max(
        source_length(data_args.task, data_args.max_length), target_length(data_args.task, data_args.max_length)
    )
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"--max_length {data_args.max_length} gives {data_args.task} sequences of {longest} tokens, more than the "
            f"model's max_position_embeddings ({max_positions})"
        )
    if data_args.length_curriculum_steps < 0:
        raise ValueError(f"--length_curriculum_steps must be at least 0; got {data_args.length_curriculum_steps}")
    if data_args.length_curriculum_steps and training_args.max_steps < 1:
        raise ValueError("--length_curriculum_steps needs --max_steps (the curriculum orders that many batches)")
    sampling = training_args.train_sampling_strategy
    if data_args.length_curriculum_steps and sampling != "random":
        raise ValueError(
            f"--length_curriculum_steps fixes the order of the batches; it cannot be combined with "
            f"--train_sampling_strategy {sampling} (pass --length_curriculum_steps 0 to use that sampler)"
        )
    if data_args.longer_test_size < 0:
        raise ValueError(f"--longer_test_size must be at least 0 (0: no longer test); got {data_args.longer_test_size}")


def check_early_stopping(data_args: DataArguments, training_args: Seq2SeqTrainingArguments) -> None:
    """Early stopping needs evaluations and a metric they produce; without, the Trainer would stop with an assertion
    (or a missing key) only once training has begun."""
    if data_args.early_stopping_patience is None or data_args.early_stopping_patience == 0:
        return
    patience = data_args.early_stopping_patience
    if patience < 0:
        raise ValueError(f"--early_stopping_patience must be at least 0 (0 turns it off); got {patience}")
    if getattr(training_args.eval_strategy, "value", training_args.eval_strategy) == "no" or not training_args.do_eval:
        raise ValueError(
            f"--early_stopping_patience {patience} needs evaluations (--do_eval and --eval_strategy steps or epoch); "
            "pass --early_stopping_patience 0 to train without"
        )
    metric = training_args.metric_for_best_model
    if not training_args.load_best_model_at_end or metric is None:
        raise ValueError(
            f"--early_stopping_patience {patience} needs --load_best_model_at_end true and --metric_for_best_model"
        )
    if metric.removeprefix("eval_") in GENERATION_METRICS and not training_args.predict_with_generate:
        raise ValueError(
            f"--metric_for_best_model {metric} is measured on generations: it needs --predict_with_generate"
        )


def check_user_data_arguments(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> None:
    """The flags of a run on the user's data; the data themselves are checked by `prepare_user_data`."""
    given = [f"--{name}" for name in SYNTHETIC_DATA_FIELDS if getattr(data_args, name) is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} describe the built-in synthetic corpus and cannot be combined with your own data"
        )
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    if data_args.dataset_name is not None:
        given = [f"--{split}_file" for split, path in files.items() if path is not None]
        if given:
            raise ValueError(f"--dataset_name cannot be combined with {', '.join(given)}: pass one or the other")
    else:
        if data_args.dataset_config_name is not None:
            raise ValueError("--dataset_config_name needs --dataset_name")
        for split, path in files.items():
            if path is not None:
                check_data_file(path, f"{split}_file")
        if training_args.do_train and data_args.train_file is None:
            raise ValueError("training needs --train_file (or --dataset_name); pass --do_train false to only evaluate")
    for name in (
        "max_train_samples",
        "max_eval_samples",
        "max_predict_samples",
        "preprocessing_num_workers",
    ):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1; got {value}")
    for name in ("max_source_length", "max_target_length"):
        value = getattr(data_args, name)
        if value is not None and value < 2:
            raise ValueError(f"--{name} must be at least 2 (a token and </s>); got {value}")
    if not 0 < data_args.validation_split_percentage < 50:
        raise ValueError(
            f"--validation_split_percentage must be above 0 and below 50; got {data_args.validation_split_percentage}"
        )

    if model_args.model_name_or_path is not None or model_args.tokenizer_name is not None:
        given = [f"--{name}" for name in NEW_TOKENIZER_FIELDS if getattr(model_args, name) is not None]
        if given:
            brought_by = "--tokenizer_name" if model_args.tokenizer_name is not None else "--model_name_or_path"
            raise ValueError(f"{', '.join(given)} describe a new tokenizer; {brought_by} brings its own")
    elif model_args.vocab_size < MIN_VOCAB_SIZE[model_args.tokenizer_type]:
        raise ValueError(
            f"--vocab_size must be at least {MIN_VOCAB_SIZE[model_args.tokenizer_type]} for a "
            f"{model_args.tokenizer_type} tokenizer; got {model_args.vocab_size}"
        )
    if model_args.model_name_or_path is None and not training_args.do_train:
        raise ValueError("a new model must be trained: pass --do_train true, or --model_name_or_path to evaluate one")

    max_positions = model_max_positions(model_args)
    for name in ("max_source_length", "max_target_length"):
        value = getattr(data_args, name)
        if value is not None and max_positions is not None and value > max_positions:
            raise ValueError(f"--{name} {value} is more than the model's max_position_embeddings ({max_positions})")


def check_model_size_flags(model_args: ModelArguments) -> None:
    """Size flags describe a new model: with a checkpoint they would be silently ignored."""
    if model_args.model_name_or_path is not None:
        given = [f"--{name}" for name in NEW_MODEL_FIELDS if getattr(model_args, name) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot be combined with --model_name_or_path: the checkpoint's config sets the size"
            )


def checkpoint_config(model_args: ModelArguments) -> transformers.PreTrainedConfig:
    return AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
    )


def model_max_positions(model_args: ModelArguments) -> int | None:
    """The longest sequence the model accepts (None: no limit, as with relative positions): the checkpoint's, or a
    new model's (building its config validates every size: positive, heads dividing d_model, dropout in [0, 1), ...)."""
    if model_args.model_name_or_path is not None:
        config = checkpoint_config(model_args)
        return getattr(config, "position_limit", getattr(config, "max_position_embeddings", None))
    # The vocabulary does not bound the positions: the built-in tokenizer stands in for one not yet built.
    return new_model_config(model_args, build_tokenizer()).position_limit


def longer_test_max_length(task: str, max_length: int, max_positions: int | None) -> int | None:
    """The longest sources of the longer test: twice the training's, or as long as the model's positions allow
    (None where they allow nothing longer than training)."""
    longest = 2 * max_length
    while (
        max_positions is not None
        and 1 + max(source_length(task, longest), target_length(task, longest)) > max_positions
    ):
        longest -= 1
    return longest if longest > max_length else None


def user_data_name(arguments) -> str:
    """A short name for the user's data, for the default output folder: "dates" for data/dates/train.jsonl or for a
    dataset data/dates; a file's own name where its folder says nothing ("pairs" for pairs.csv)."""
    if arguments.dataset_name is not None:
        return Path(arguments.dataset_name).name
    path = Path(next(getattr(arguments, name) for name in USER_DATA_SOURCES if getattr(arguments, name) is not None))
    return path.stem if path.stem not in ("train", "validation", "test") or not path.parent.name else path.parent.name


def new_model_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> TinyTransformerConfig:
    """The config of a new TinyTransformer sized by the flags, with the tokenizer's vocabulary and special tokens."""
    sizes = {name: getattr(model_args, name) for name in NEW_MODEL_FIELDS}
    # Generation starts from <s>; a tokenizer without one (T5's) starts from the pad token, as T5 does.
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    return TinyTransformerConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=start,
        **{name: value for name, value in sizes.items() if value is not None},
    )


def prepare_user_data(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> tuple[UserData, PreTrainedTokenizerBase, datasets.DatasetDict]:
    """Read and check the user's data, get the tokenizer (given, the checkpoint's, or trained on the training split)
    and tokenize the data. Raises ValueError, naming the file, column or row, for anything that cannot work; writes
    nothing to the output folder."""
    wanted = {"train": training_args.do_train, "validation": training_args.do_eval, "test": training_args.do_predict}
    data = load_user_data(
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        source_column=data_args.source_column,
        target_column=data_args.target_column,
        needed_splits=[split for split, needed in wanted.items() if needed],
        split_percentage=data_args.validation_split_percentage,
        seed=training_args.seed,
        max_samples={
            "train": data_args.max_train_samples,
            "validation": data_args.max_eval_samples,
            "test": data_args.max_predict_samples,
        },
    )
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    if tokenizer_source is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_source,
                revision=model_args.model_revision,
                trust_remote_code=model_args.trust_remote_code,
            )
        except (OSError, ValueError) as error:
            raise ValueError(f"the tokenizer {tokenizer_source} cannot be loaded ({error})".splitlines()[0]) from None
    else:
        texts = [*data.splits["train"]["source"], *data.splits["train"]["target"]]
        tokenizer = train_tokenizer(texts, model_args.tokenizer_type, model_args.vocab_size)
        logger.info(
            "Trained a %s tokenizer of %d tokens on the training split", model_args.tokenizer_type, len(tokenizer)
        )
    check_tokenizer(tokenizer, tokenizer_source or "trained on the training split")
    if model_args.model_name_or_path is not None:
        config = checkpoint_config(model_args)
        if len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"the tokenizer {tokenizer_source} has {len(tokenizer)} tokens, more than the vocabulary of "
                f"{model_args.model_name_or_path} ({config.vocab_size})"
            )
        max_positions = getattr(config, "position_limit", getattr(config, "max_position_embeddings", None))
    else:
        max_positions = new_model_config(model_args, tokenizer).position_limit
    tokenized = tokenize_user_data(
        data,
        tokenizer,
        max_source_length=data_args.max_source_length,
        max_target_length=data_args.max_target_length,
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
    )
    tokenized = check_lengths(data, tokenized, max_positions, data_args.max_source_length, data_args.max_target_length)
    first_split = next(iter(tokenized))
    share = unknown_token_share(tokenized[first_split], tokenizer.unk_token_id)
    if share > 0.01:
        logger.warning(
            "%.1f%% of the %s tokens are the unknown token %s: the tokenizer does not cover these texts well",
            100 * share,
            first_split,
            tokenizer.unk_token,
        )
    return data, tokenizer, tokenized


def describe_tokenizer(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> str:
    """Where the tokenizer came from, for the model card."""
    if model_args.tokenizer_name is not None:
        return f"`{model_args.tokenizer_name}` ({len(tokenizer):,} tokens)"
    if model_args.model_name_or_path is not None:
        return f"the tokenizer of `{model_args.model_name_or_path}` ({len(tokenizer):,} tokens)"
    if model_args.tokenizer_type is not None:
        kind = "byte-level BPE" if model_args.tokenizer_type == "bpe" else "word-level"
        return f"{kind}, {len(tokenizer):,} tokens, trained on the training split"
    return f"the built-in word-level tokenizer ({len(tokenizer):,} tokens)"


def exit_with_error(message: str) -> NoReturn:
    """Stop as the argument parser does: one line on stderr, exit status 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def push_folder(training_args: Seq2SeqTrainingArguments, repo_id: str) -> None:
    """Upload the finished output folder (model, code, tokenizer, card, figures, metrics), not the checkpoints."""
    api = HfApi(token=training_args.hub_token)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=training_args.output_dir,
        commit_message="Upload TinyTransformer trained with train/train.py",
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**"],
        revision=getattr(training_args, "hub_revision", None),
    )
    logger.info("Pushed %s to https://huggingface.co/%s", training_args.output_dir, repo_id)


def main(argv: list[str] | None = None) -> Seq2SeqTrainer:
    """Train, evaluate and test as the flags say; return the trainer (for callers that inspect the run). A
    multi-process run ends its process group before returning, as a script's last step does."""
    start_time = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args = parse_arguments(argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        "Process rank: %d, world size: %d, device: %s, distributed training: %s",
        training_args.process_index,
        training_args.world_size,
        training_args.device,
        training_args.parallel_mode.value == "distributed",
    )

    # The user's data are read, checked and tokenized first: a bad file, column, cell, tokenizer or length stops the
    # run here, in seconds, before anything is trained, created on the Hub or written to the output folder.
    user_data = tokenizer = None
    if data_args.uses_own_data:
        try:
            with training_args.main_process_first(desc="reading, checking and tokenizing the data"):
                user_data, tokenizer, tokenized = prepare_user_data(model_args, data_args, training_args)
        except ValueError as error:
            exit_with_error(str(error))

    # The Trainer would push every checkpoint and its own model card; we push the finished folder once, at the end.
    # Create the repo now so that a missing token or network fails before training, not after.
    hub_repo_id = None
    if training_args.push_to_hub:
        training_args.push_to_hub = False
        if training_args.process_index == 0:
            repo_name = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
            hub_repo_id = (
                HfApi(token=training_args.hub_token)
                .create_repo(repo_name, private=training_args.hub_private_repo, exist_ok=True)
                .repo_id
            )

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = last_complete_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(
                "Checkpoint detected, resuming training at %s. Use another --output_dir to start from scratch.",
                last_checkpoint,
            )

    set_seed(training_args.seed)

    if model_args.model_name_or_path is not None:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(
                model_args.model_name_or_path,
                revision=model_args.model_revision,
                trust_remote_code=model_args.trust_remote_code,
            )
        model = AutoModelForSeq2SeqLM.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
    else:
        if tokenizer is None:
            tokenizer = build_tokenizer()
        model = TinyTransformerForConditionalGeneration(new_model_config(model_args, tokenizer))
    logger.info("Model: %s with %d parameters", model.__class__.__name__, model.num_parameters())

    longer_max_length = None
    if user_data is None:
        if data_args.longer_test_size:
            longer_max_length = longer_test_max_length(
                data_args.task, data_args.max_length, model.config.position_limit
            )
            if longer_max_length is None:
                logger.warning("No longer test: the model's positions end at the training's longest sequences.")
        with training_args.main_process_first(desc="building and tokenizing the corpus"):
            corpus = build_corpus(
                task=data_args.task,
                seed=training_args.seed,
                train_size=data_args.train_size,
                validation_size=data_args.validation_size,
                test_size=data_args.test_size,
                min_length=data_args.min_length,
                max_length=data_args.max_length,
                longer_test_size=data_args.longer_test_size if longer_max_length else 0,
                longer_max_length=longer_max_length,
            )
            tokenized = tokenize_corpus(corpus, tokenizer, load_from_cache_file=not data_args.overwrite_cache)
        longest_target = target_length(data_args.task, data_args.max_length) + 1  # + </s>
    else:
        corpus = user_data.splits
        longest_target = max(max(map(len, split["labels"])) for split in tokenized.values())
    # While training, generation is bounded by max_length only: Seq2SeqTrainer fills generation_config with the
    # default max_length=20, and a max_new_tokens next to it would make every generate() call warn.
    model.generation_config.max_new_tokens = None
    model.generation_config.max_length = longest_target + 1  # + the decoder start token

    train_dataset = tokenized["train"] if training_args.do_train else None
    curriculum_steps = 0
    if train_dataset is not None and user_data is None and data_args.length_curriculum_steps:
        # The curriculum fixes the order of the batches; the Trainer then reads them in that order.
        curriculum_steps = curriculum_step_count(data_args.length_curriculum_steps, training_args.max_steps)
        order = length_curriculum(
            input_lengths(train_dataset),
            training_args.per_device_train_batch_size
            * training_args.gradient_accumulation_steps
            * training_args.world_size,
            training_args.max_steps,
            curriculum_steps,
            training_args.seed,
        )
        train_dataset = train_dataset.select(order)
        training_args.train_sampling_strategy = "sequential"
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=tokenized["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=(
            (
                lambda prediction: generation_metrics(
                    prediction.predictions, prediction.label_ids, tokenizer, on_text=user_data is not None
                )
            )
            if training_args.predict_with_generate
            else None
        ),
        callbacks=[
            *([EarlyStoppingCallback(data_args.early_stopping_patience)] if data_args.early_stopping_patience else []),
            *([StopAtExactMatchCallback(data_args.target_exact_match)] if data_args.target_exact_match else []),
        ],
    )

    all_metrics = {}
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        metrics = {**train_result.metrics, "train_samples": len(tokenized["train"])}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        all_metrics.update(metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(tokenized["validation"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    if training_args.do_predict:
        metrics = trainer.predict(tokenized["test"], metric_key_prefix="test").metrics
        metrics["test_samples"] = len(tokenized["test"])
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        all_metrics.update(metrics)
        if longer_max_length:
            longest_answer = target_length(data_args.task, longer_max_length) + 2  # + </s> and the start token
            metrics = trainer.predict(
                tokenized["longer_test"], metric_key_prefix="longer_test", max_length=longest_answer
            ).metrics
            metrics["longer_test_samples"] = len(tokenized["longer_test"])
            trainer.log_metrics("longer_test", metrics)
            trainer.save_metrics("longer_test", metrics)
            all_metrics.update(metrics)

    if training_args.do_train:
        # Undo what training changed in the configs: the Trainer sets use_cache=False and Seq2SeqTrainer fills the
        # generation config with defaults. The saved model generates up to the longest target with no warnings.
        model.config.use_cache = True
        model.generation_config = GenerationConfig(
            decoder_start_token_id=model.config.decoder_start_token_id,
            bos_token_id=model.config.bos_token_id,
            eos_token_id=model.config.eos_token_id,
            pad_token_id=model.config.pad_token_id,
            max_new_tokens=longest_target,
        )
        trainer.save_model()
        if trainer.is_world_process_zero():
            output_dir = Path(training_args.output_dir)
            if trainer.is_fsdp_enabled:
                # The trained weights are sharded over the processes, so a forward on this rank alone (the figure,
                # the card's examples) would wait for the others forever; the folder just saved holds them whole.
                model = AutoModelForSeq2SeqLM.from_pretrained(output_dir).to(training_args.device)
            # Examples for the card: held-out ones, from the training data only where nothing was held out.
            examples = next(corpus[split] for split in ("test", "validation", "train") if split in corpus)
            plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png")
            attention_example = plot_cross_attention(model, tokenizer, examples, output_dir / "attention.png")
            write_model_card(
                output_dir / "README.md",
                model=model,
                tokenizer=tokenizer,
                task=data_args.task,
                min_length=data_args.min_length,
                max_length=data_args.max_length,
                longer_max_length=longer_max_length,
                training_args=training_args,
                metrics=all_metrics,
                argv=argv,
                base_model=model_args.model_name_or_path,
                attention_example=attention_example,
                test_examples=examples,
                wall_time=time.perf_counter() - start_time,
                hub_repo_id=hub_repo_id,
                user_data=user_data,
                tokenizer_description=describe_tokenizer(model_args, tokenizer),
                early_stopping_patience=data_args.early_stopping_patience,
                trainer_state=trainer.state,
                target_exact_match=data_args.target_exact_match,
                curriculum_steps=curriculum_steps,
            )
            logger.info("Wrote the model, tokenizer, model card and figures to %s", output_dir)
            if hub_repo_id is not None:
                push_folder(training_args, hub_repo_id)
    # A multi-process run's processes wait for each other (the first writes the card), then end their group: left to
    # interpreter exit, gloo's threads can abort a finished process ("terminate called without an active exception",
    # seen once in CI; pytorch/pytorch#190489), and the launcher then reports a failure after a successful run. With
    # one process both calls do nothing. (transformers 5.24's Trainer.end() is the second; 5.17 lacks it.)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    logger.info("Finished in %.1f s", time.perf_counter() - start_time)
    return trainer


if __name__ == "__main__":
    main()
