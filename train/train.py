#!/usr/bin/env python
"""Train TinyTransformer on a synthetic task or on your own pairs of texts with the Seq2SeqTrainer, and leave a folder
ready for the Hub.

In the shape of transformers' `examples/pytorch/translation/run_translation.py`: model, data and
`Seq2SeqTrainingArguments` dataclasses read by `HfArgumentParser` (arguments.py), so every Trainer flag works as usual.

    python train/train.py                                      # the default task, in minutes on a CPU
    python train/train.py --task sort --output_dir outputs/sort
    python train/train.py --task copy --model_name_or_path outputs/tiny-transformer-reverse   # fine-tune
    python train/train.py --train_file data/dates/train.jsonl   # your pairs; validation and test drawn from them
    python train/train.py --recipe my_recipe.yaml               # your own recipe file; flags still override it
    torchrun --nproc_per_node 2 train/train.py --use_cpu       # 2 processes (DDP over gloo)
    accelerate launch --config_file train/accelerate/ddp.yaml --num_processes 8 train/train.py

A run starts from a recipe, a YAML file of flag values: `train/recipes/<task>.yaml` for a built-in task, chosen so
that each task reaches at least 99% test exact match within 10 minutes on a 2-core CPU; `train/recipes/user_data.yaml`
with your own data (`--train_file`, `--dataset_name`, ...), generic values for a small corpus on a CPU. Flags on the
command line override the recipe. The output folder holds the model, its source code, the tokenizer, a clean
generation config, the metrics, a model card (README.md, naming the recipe and the flags that changed it) and two
figures.
"""

import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

# The package before transformers' Trainer: it imports transformers' model code with torchao's import noise dropped
# (hf_tiny_transformer/__init__.py); the Trainer's import, first, would print that noise at the start of every run.
from hf_tiny_transformer import TinyTransformerForConditionalGeneration  # isort: skip
import datasets
import transformers
from huggingface_hub import HfApi
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from hf_tiny_transformer_train.arguments import (
    DataArguments,
    DataSourceArguments,
    ModelArguments,
    checkpoint_config,
    flag_names,
    new_model_config,
    parse_arguments,
)
from hf_tiny_transformer_train.callbacks import StopAtExactMatchCallback
from hf_tiny_transformer_train.checkpoints import last_complete_checkpoint
from hf_tiny_transformer_train.data import (
    build_corpus,
    build_tokenizer,
    curriculum_step_count,
    input_lengths,
    length_curriculum,
    longest_sequence,
    target_length,
    tokenize_corpus,
)
from hf_tiny_transformer_train.evaluation import TeacherForcedEvaluationTrainer, evaluates_teacher_forced
from hf_tiny_transformer_train.metrics import generation_metrics
from hf_tiny_transformer_train.model_card import RunRecord, plot_cross_attention, plot_training_curves, write_model_card
from hf_tiny_transformer_train.openmp import (
    ThreadsFollowLoadCallback,
    restart_with_wait_policy,
    threads_may_follow_load,
)
from hf_tiny_transformer_train.tokenizer_training import check_tokenizer, train_tokenizer
from hf_tiny_transformer_train.trainer import TinyTransformerTrainer
from hf_tiny_transformer_train.typed_inputs import build_typed_inputs
from hf_tiny_transformer_train.user_data import (
    UserData,
    check_lengths,
    load_user_data,
    tokenize_user_data,
    unknown_token_share,
)

logger = logging.getLogger(__name__)


def set_up_logging(training_args: Seq2SeqTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else log_level)
    # The package's other modules' messages (openmp.py's thread changes) at the same level.
    logging.getLogger("hf_tiny_transformer_train").setLevel(logger.level)
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


def exit_with_error(message: str) -> NoReturn:
    """Stop as the argument parser does: one line on stderr, exit status 2."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def prepare_user_data(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> tuple[UserData, PreTrainedTokenizerBase, datasets.DatasetDict]:
    """Read and check the user's data, get the tokenizer (given, the checkpoint's, or trained on the training split)
    and tokenize the data. Raises ValueError, naming the file, column or row, for anything that cannot work; writes
    nothing to the output folder."""
    wanted = {"train": training_args.do_train, "validation": training_args.do_eval, "test": training_args.do_predict}
    sources = {name: getattr(data_args, name) for name in flag_names(DataSourceArguments)}  # train_file, ...
    data = load_user_data(
        **sources,
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
    tokenizer_source = data_args.tokenizer_name or model_args.model_name_or_path
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


def create_hub_repo(training_args: Seq2SeqTrainingArguments) -> str | None:
    """The Trainer would push every checkpoint and its own model card; we push the finished folder once, at the end.
    The repo is created now so that a missing token or network fails before training, not after."""
    if not training_args.push_to_hub:
        return None
    training_args.push_to_hub = False
    if training_args.process_index != 0:
        return None
    repo_name = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
    api = HfApi(token=training_args.hub_token)
    return api.create_repo(repo_name, private=training_args.hub_private_repo, exist_ok=True).repo_id


def load_model(
    model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The checkpoint to fine-tune and its tokenizer (unless one was given), or a new model sized by the flags."""
    if model_args.model_name_or_path is not None:
        hub_options = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, **hub_options)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, **hub_options)
    else:
        if tokenizer is None:
            tokenizer = build_tokenizer()
        model = TinyTransformerForConditionalGeneration(new_model_config(model_args, tokenizer))
    logger.info("Model: %s with %d parameters", model.__class__.__name__, model.num_parameters())
    return model, tokenizer


def add_lora_adapters(model: PreTrainedModel, model_args: ModelArguments) -> PreTrainedModel:
    """`model` with LoRA adapters on the layers --lora_target_modules names, its own weights frozen: the PeftModel the
    Trainer trains and saves as an adapter. The adapters are injected into `model` itself, which then computes with
    them (the figures, the card's examples)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = model_args.lora_target_modules
    lora = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets if targets == "all-linear" else [name.strip() for name in targets.split(",") if name],
    )
    try:
        adapted = get_peft_model(model, lora)
    except ValueError as error:
        exit_with_error(f"--lora_target_modules {targets}: {error}".splitlines()[0])
    trainable, total = adapted.get_nb_trainable_parameters()
    logger.info("LoRA adapters: %d trainable parameters of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return adapted


def longer_test_max_length(task: str, max_length: int, max_positions: int | None) -> int | None:
    """The longest sources of the longer test: twice the training's, or as long as the model's positions allow
    (None where they allow nothing longer than training)."""
    longest = 2 * max_length
    while max_positions is not None and longest_sequence(task, longest) > max_positions:
        longest -= 1
    return longest if longest > max_length else None


def orders_batches(data_args: DataArguments) -> bool:
    """Whether a built-in task's run reads its batches in an order of its own: a length curriculum, or batches
    grouped by length."""
    return bool(data_args.length_curriculum_steps) or data_args.length_grouping_batches > 1


def order_training_batches(
    train_dataset: datasets.Dataset, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> tuple[datasets.Dataset, int]:
    """The training examples in the curriculum's order, batches grouped by length after it where the recipe asks
    (data.group_by_length), and the curriculum's step count; the Trainer then reads them in order."""
    curriculum_steps = curriculum_step_count(data_args.length_curriculum_steps, training_args.max_steps)
    global_batch = (
        training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    order = length_curriculum(
        input_lengths(train_dataset),
        global_batch,
        training_args.max_steps,
        curriculum_steps,
        training_args.seed,
        grouping_batches=data_args.length_grouping_batches,
    )
    training_args.train_sampling_strategy = "sequential"
    return train_dataset.select(order), curriculum_steps


def typed_input_splits(
    data_args: DataArguments, seed: int, longer_max_length: int | None
) -> dict[str, datasets.Dataset]:
    """The typed-input families (typed_inputs.py) at the training's lengths ("test_family_<name>") and at the longer
    test's ("longer_test_family_<name>")."""
    ranges = {"test_family": (data_args.min_length, data_args.max_length)}
    if longer_max_length:
        ranges["longer_test_family"] = (data_args.max_length + 1, longer_max_length)
    splits = {}
    for prefix, (shortest, longest) in ranges.items():
        families = build_typed_inputs(data_args.task, seed, data_args.typed_inputs_size, shortest, longest)
        splits.update({f"{prefix}_{family}": split for family, split in families.items()})
    return splits


def typed_input_metrics(
    trainer: TinyTransformerTrainer, tokenized: datasets.DatasetDict, prefix: str, **generation
) -> dict:
    """Exact match and size of every typed-input family split whose name starts with `prefix`: greedy decoding's,
    scored on a teacher-forced forward where the trainer can (evaluation.py), generated otherwise
    (`TinyTransformerTrainer.predict_exact_match`)."""
    metrics = {}
    for name in (name for name in tokenized if name.startswith(prefix)):
        prediction = trainer.predict_exact_match(tokenized[name], metric_key_prefix=name, **generation)
        metrics[f"{name}_exact_match"] = prediction.metrics[f"{name}_exact_match"]
        metrics[f"{name}_samples"] = len(tokenized[name])
    return metrics


def run_split(
    trainer: TinyTransformerTrainer, split: str, tokenized: datasets.DatasetDict, **generation
) -> dict[str, float]:
    """Evaluate ("eval") or test (any other name) on `tokenized[split]` (`tokenized["validation"]` for "eval"), and on the
    typed-input families of that test; log and save the metrics under `split`."""
    if split == "eval":
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(tokenized["validation"])
    else:
        metrics = trainer.predict(tokenized[split], metric_key_prefix=split, **generation).metrics
        metrics[f"{split}_samples"] = len(tokenized[split])
        metrics.update(typed_input_metrics(trainer, tokenized, f"{split}_family_", **generation))
    trainer.log_metrics(split, metrics)
    trainer.save_metrics(split, metrics)
    return metrics


def clean_for_saving(model: PreTrainedModel, longest_target: int) -> None:
    """Undo what training changed in the configs: the Trainer sets use_cache=False and Seq2SeqTrainer fills the
    generation config with defaults. The saved model generates up to the longest target with no warnings."""
    model.config.use_cache = True
    model.generation_config = GenerationConfig(
        decoder_start_token_id=model.config.decoder_start_token_id,
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        max_new_tokens=longest_target,
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
    """Train, evaluate and test as the recipe and the flags say; return the trainer (for callers that inspect the
    run). A multi-process run ends its process group before returning, as a script's last step does."""
    start_time = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args = parse_arguments(argv)
    set_up_logging(training_args)

    # The user's data are read, checked and tokenized first: a bad file, column, cell, tokenizer or length stops the
    # run here, in seconds, before anything is trained, created on the Hub or written to the output folder.
    user_data = tokenizer = None
    if data_args.uses_own_data:
        try:
            with training_args.main_process_first(desc="reading, checking and tokenizing the data"):
                user_data, tokenizer, tokenized = prepare_user_data(model_args, data_args, training_args)
        except ValueError as error:
            exit_with_error(str(error))
    hub_repo_id = create_hub_repo(training_args)

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and training_args.do_train:
        last_checkpoint = last_complete_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info(
                "Checkpoint detected, resuming training at %s. Use another --output_dir to start from scratch.",
                last_checkpoint,
            )

    set_seed(training_args.seed)
    model, tokenizer = load_model(model_args, tokenizer)

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
                repeated_values_share=data_args.repeated_values_share or 0.0,
            )
            if data_args.typed_inputs_size:
                corpus.update(typed_input_splits(data_args, training_args.seed, longer_max_length))
            tokenized = tokenize_corpus(corpus, tokenizer, load_from_cache_file=not data_args.overwrite_cache)
        longest_target = target_length(data_args.task, data_args.max_length) + 1  # + </s>
    else:
        corpus = user_data.splits
        longest_target = max(max(map(len, split["labels"])) for split in tokenized.values())
    if (
        model_args.model_name_or_path is None
        and model.config.position_embedding_type == "relative"
        and "train" in tokenized
    ):
        # Longer sources than training's get a sharper encoder-decoder position bias (configuration's docstring).
        model.config.relative_attention_reference_length = max(2, max(input_lengths(tokenized["train"])))
    # While training, generation is bounded by max_length only: Seq2SeqTrainer fills generation_config with the
    # default max_length=20, and a max_new_tokens next to it would make every generate() call warn.
    model.generation_config.max_new_tokens = None
    model.generation_config.max_length = longest_target + 1  # + the decoder start token

    train_dataset = tokenized["train"] if training_args.do_train else None
    curriculum_steps, grouping_batches = 0, 1
    if train_dataset is not None and user_data is None and orders_batches(data_args):
        train_dataset, curriculum_steps = order_training_batches(train_dataset, data_args, training_args)
        grouping_batches = data_args.length_grouping_batches
    callbacks = []
    if data_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(data_args.early_stopping_patience))
    if data_args.target_exact_match:
        callbacks.append(StopAtExactMatchCallback(data_args.target_exact_match))
    if threads_may_follow_load(training_args):
        callbacks.append(ThreadsFollowLoadCallback())

    def compute_generation_metrics(prediction):
        return generation_metrics(
            prediction.predictions, prediction.label_ids, tokenizer, on_text=user_data is not None
        )

    trainer_kwargs = dict(
        model=add_lora_adapters(model, model_args) if model_args.use_peft else model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=tokenized["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        callbacks=callbacks,
    )
    if evaluates_teacher_forced(training_args, user_data is not None):
        trainer = TeacherForcedEvaluationTrainer(
            **trainer_kwargs, compute_generation_metrics=compute_generation_metrics
        )
    else:
        compute_metrics = compute_generation_metrics if training_args.predict_with_generate else None
        trainer = TinyTransformerTrainer(**trainer_kwargs, compute_metrics=compute_metrics)

    all_metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        metrics = {**train_result.metrics, "train_samples": len(tokenized["train"])}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        all_metrics.update(metrics)
    if training_args.do_eval:
        all_metrics.update(run_split(trainer, "eval", tokenized))
    if training_args.do_predict:
        all_metrics.update(run_split(trainer, "test", tokenized))
        if longer_max_length:
            longest_answer = target_length(data_args.task, longer_max_length) + 2  # + </s> and the start token
            all_metrics.update(run_split(trainer, "longer_test", tokenized, max_length=longest_answer))

    if training_args.do_train:
        clean_for_saving(model, longest_target)
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
            run = RunRecord(
                argv=argv,
                metrics=all_metrics,
                trainer_state=trainer.state,
                examples=examples,
                attention_example=plot_cross_attention(model, tokenizer, examples, output_dir / "attention.png"),
                user_data=user_data,
                longer_max_length=longer_max_length,
                curriculum_steps=curriculum_steps,
                grouping_batches=grouping_batches,
                hub_repo_id=hub_repo_id,
                wall_time=time.perf_counter() - start_time,
            )
            write_model_card(output_dir / "README.md", model, tokenizer, model_args, data_args, training_args, run)
            logger.info("Wrote the model, tokenizer, model card and figures to %s", output_dir)
            if model_args.merge_adapter:
                merged = trainer.model.merge_and_unload()
                merged.save_pretrained(output_dir / "merged")
                tokenizer.save_pretrained(output_dir / "merged")
                logger.info("Wrote the model with the adapter merged into its weights to %s", output_dir / "merged")
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
    # How idle OpenMP threads wait, chosen by the machine's load as the run starts (openmp.py): steps 1.19-1.24x
    # faster with spinning threads on free CPUs, 1.6x slower next to busy processes.
    restart_with_wait_policy()
    # The imports left hundreds of thousands of objects (torch's, transformers', datasets') that live as long as the
    # process: out of the cyclic collector's sight, its full collections during the run and the last one at exit no
    # longer walk through them. A 100-step run of a tiny model: 9.1 s -> 7.2 s, start to exit (bench/README.md).
    gc.freeze()
    main()
