#!/usr/bin/env python
"""Train TinyTransformer on a synthetic task with the Seq2SeqTrainer, and leave a folder ready for the Hub.

In the shape of transformers' `examples/pytorch/translation/run_translation.py`: model, data and
`Seq2SeqTrainingArguments` dataclasses read by `HfArgumentParser`, so every Trainer flag works as usual.

    python train/train.py                                      # the default task, in minutes on a CPU
    python train/train.py --task sort --output_dir outputs/sort
    python train/train.py --task copy --model_name_or_path outputs/tiny-transformer-reverse   # fine-tune
    torchrun --nproc_per_node 2 train/train.py --use_cpu       # 2 processes (DDP over gloo)
    accelerate launch --config_file train/accelerate/ddp.yaml --num_processes 8 train/train.py

Flags the user does not pass take the task's defaults (`TASK_DEFAULTS`), chosen so that each task reaches at least
99% test exact match within 10 minutes on a 2-core CPU. The output folder holds the model, its source code, the
tokenizer, a clean generation config, the metrics, a model card (README.md) and two figures.
"""

import os

# Before torch is imported (OpenMP reads it once): idle OpenMP threads sleep instead of spinning. With the default
# spinning, a 2-core machine where another process is busy ran each training step 15x slower (2.7 s against 0.19 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    GenerationConfig,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration  # noqa: E402
from hf_tiny_transformer_train.checkpoints import last_complete_checkpoint  # noqa: E402
from hf_tiny_transformer_train.data import (  # noqa: E402
    TASKS,
    build_corpus,
    build_tokenizer,
    source_length,
    target_length,
    tokenize_corpus,
)
from hf_tiny_transformer_train.metrics import sequence_metrics  # noqa: E402
from hf_tiny_transformer_train.model_card import (  # noqa: E402
    plot_cross_attention,
    plot_training_curves,
    write_model_card,
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

# Defaults for flags the user does not pass, for all three dataclasses: COMMON_DEFAULTS, updated by the task's entry
# in TASK_DEFAULTS. Chosen and measured (see model_card.md) so that `python train/train.py --task X` reaches at least
# 99% test exact match within 10 minutes on a 2-core CPU.
COMMON_DEFAULTS = {
    # data
    "min_length": 1,
    "max_length": 20,
    "train_size": 100_000,
    "validation_size": 500,
    "test_size": 2000,
    # a new model: learned positions make the position-to-position attention these tasks need much sooner than
    # sinusoidal ones (measured: copy of 1-10 integers, loss 0.19 against 3.5 after 500 steps)
    "d_model": 128,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_attention_heads": 4,
    "ffn_dim": 512,
    "dropout": 0.0,
    "position_embedding_type": "learned",
    "max_position_embeddings": 64,
    # training: train, evaluate and test in one go, with metrics on greedy generations
    "do_train": True,
    "do_eval": True,
    "do_predict": True,
    "predict_with_generate": True,
    "max_steps": 1500,
    "learning_rate": 1e-3,
    "warmup_steps": 100,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 250,
    "eval_strategy": "steps",
    "eval_steps": 250,
    "save_steps": 250,
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
    "sort": {"max_steps": 2500},
    # Sums are written most significant digit first, so the first output digit already depends on every carry: with
    # 1-3 digits per operand, big batches and a higher rate learn it in time (with 5 digits, 4% after 1000 steps).
    "add": {
        "max_length": 3,
        "per_device_train_batch_size": 256,
        "learning_rate": 2e-3,
        "max_steps": 1800,
        "eval_steps": 300,
        "save_steps": 300,
    },
}


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
        default=None, metadata={"help": "Positions of a new model.", "choices": ["sinusoidal", "learned"]}
    )
    norm_position: str | None = field(
        default=None, metadata={"help": "LayerNorm placement of a new model.", "choices": ["pre", "post"]}
    )


@dataclass
class DataArguments:
    """The synthetic corpus (see data.py). Sizes and lengths default to the task's values in TASK_DEFAULTS."""

    task: str = field(
        default=DEFAULT_TASK,
        metadata={"help": "What the model learns to do with a sequence of integers 0-99.", "choices": list(TASKS)},
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


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, Seq2SeqTrainingArguments]:
    """Parse `argv` with the task's defaults for every flag that is not given, and check the values."""
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    # The task chooses the defaults of the other flags, so read it (and whether a checkpoint is given) first. Defaults
    # set on the parser apply exactly to the flags the user did not pass.
    known, _ = parser.parse_known_args([arg for arg in argv if arg not in ("-h", "--help")])
    defaults = {**COMMON_DEFAULTS, **TASK_DEFAULTS[known.task], "output_dir": f"outputs/tiny-transformer-{known.task}"}
    if known.model_name_or_path is not None:
        # A checkpoint brings its own size; leave these None to detect flags that would be silently ignored.
        defaults = {name: value for name, value in defaults.items() if name not in NEW_MODEL_FIELDS}
    training_fields = {field.name for field in Seq2SeqTrainingArguments.__dataclass_fields__.values()}
    own_fields = {*ModelArguments.__dataclass_fields__, *DataArguments.__dataclass_fields__}
    # Read the Trainer's fields generically: only set defaults for flags the installed transformers has.
    parser.set_defaults(**{name: value for name, value in defaults.items() if name in training_fields | own_fields})
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        check_arguments(model_args, data_args, training_args)
    except ValueError as error:
        parser.error(str(error))
    return model_args, data_args, training_args


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
    for name in ("train_size", "validation_size", "test_size", "min_length"):
        if getattr(data_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1; got {getattr(data_args, name)}")
    if data_args.max_length < data_args.min_length:
        raise ValueError(
            f"--max_length ({data_args.max_length}) must be at least --min_length ({data_args.min_length})"
        )
    if model_args.model_name_or_path is not None:
        given = [f"--{name}" for name in NEW_MODEL_FIELDS if getattr(model_args, name) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot be combined with --model_name_or_path: the checkpoint's config sets the size"
            )
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
        )
        max_positions = getattr(config, "max_position_embeddings", None)
    else:
        # The config validates every size (positive, heads dividing d_model, dropout in [0, 1), ...).
        max_positions = new_model_config(model_args, build_tokenizer()).max_position_embeddings
    # The longest source gets </s>; the longest decoder input is the start token plus the target.
    longest = 1 + max(
        source_length(data_args.task, data_args.max_length), target_length(data_args.task, data_args.max_length)
    )
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"--max_length {data_args.max_length} gives {data_args.task} sequences of {longest} tokens, more than the "
            f"model's max_position_embeddings ({max_positions})"
        )


def new_model_config(
    model_args: ModelArguments, tokenizer: transformers.PreTrainedTokenizerBase
) -> TinyTransformerConfig:
    """The config of a new TinyTransformer sized by the flags, with the tokenizer's vocabulary and special tokens."""
    sizes = {name: getattr(model_args, name) for name in NEW_MODEL_FIELDS}
    return TinyTransformerConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        **{name: value for name, value in sizes.items() if value is not None},
    )


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
    """Train, evaluate and test as the flags say; return the trainer (for callers that inspect the run)."""
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
        tokenizer = build_tokenizer()
        model = TinyTransformerForConditionalGeneration(new_model_config(model_args, tokenizer))
    logger.info("Model: %s with %d parameters", model.__class__.__name__, model.num_parameters())

    # While training, generation is bounded by max_length only: Seq2SeqTrainer fills generation_config with the
    # default max_length=20, and a max_new_tokens next to it would make every generate() call warn.
    longest_target = target_length(data_args.task, data_args.max_length) + 1  # + </s>
    model.generation_config.max_new_tokens = None
    model.generation_config.max_length = longest_target + 1  # + the decoder start token

    with training_args.main_process_first(desc="building and tokenizing the corpus"):
        corpus = build_corpus(
            task=data_args.task,
            seed=training_args.seed,
            train_size=data_args.train_size,
            validation_size=data_args.validation_size,
            test_size=data_args.test_size,
            min_length=data_args.min_length,
            max_length=data_args.max_length,
        )
        tokenized = tokenize_corpus(corpus, tokenizer, load_from_cache_file=not data_args.overwrite_cache)

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"] if training_args.do_train else None,
        eval_dataset=tokenized["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=(
            (
                lambda prediction: sequence_metrics(
                    prediction.predictions, prediction.label_ids, tokenizer.pad_token_id, tokenizer.eos_token_id
                )
            )
            if training_args.predict_with_generate
            else None
        ),
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
            plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png")
            attention_example = plot_cross_attention(model, tokenizer, corpus["test"], output_dir / "attention.png")
            write_model_card(
                output_dir / "README.md",
                model=model,
                tokenizer=tokenizer,
                task=data_args.task,
                min_length=data_args.min_length,
                max_length=data_args.max_length,
                training_args=training_args,
                metrics=all_metrics,
                argv=argv,
                base_model=model_args.model_name_or_path,
                attention_example=attention_example,
                test_examples=corpus["test"],
                wall_time=time.perf_counter() - start_time,
                hub_repo_id=hub_repo_id,
            )
            logger.info("Wrote the model, tokenizer, model card and figures to %s", output_dir)
            if hub_repo_id is not None:
                push_folder(training_args, hub_repo_id)
    logger.info("Finished in %.1f s", time.perf_counter() - start_time)
    return trainer


if __name__ == "__main__":
    main()
