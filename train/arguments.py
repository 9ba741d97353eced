"""train.py's arguments: the dataclasses `HfArgumentParser` reads, the recipe files that give their values, and the
checks that stop a run whose flags cannot work, in one line, before anything is built.

A run starts from a recipe (`recipes/<task>.yaml` for a built-in task, `recipes/user_data.yaml` for your own data,
or your own file with `--recipe`); the flags on the command line override its values. A flag is one dataclass field.
The dataclass it is in says what it describes where that rules it out elsewhere: the size of a new model
(NewModelArguments) means nothing for a checkpoint, which brings its own; the synthetic corpus's flags
(SyntheticDataArguments) nothing for your own data. `HfArgumentParser` reads the three classes of
transformers' example scripts: ModelArguments, DataArguments (which hold those groups) and TrainingArguments
(Seq2SeqTrainingArguments with the one optimizer setting they lack).
"""

import argparse
import importlib.util
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import transformers
import yaml
from transformers import AutoConfig, HfArgumentParser, PreTrainedTokenizerBase, Seq2SeqTrainingArguments

from hf_tiny_transformer import TinyTransformerConfig
from hf_tiny_transformer.configuration_tiny_transformer import (
    NORM_POSITIONS,
    OCCURRENCE_BIAS_PAIRS,
    POSITION_EMBEDDING_TYPES,
)
from hf_tiny_transformer_train.data import SPLITS, TASKS, build_tokenizer, longest_sequence
from hf_tiny_transformer_train.tokenizer_training import MIN_VOCAB_SIZE, TOKENIZER_TYPES
from hf_tiny_transformer_train.typed_inputs import SEQUENCE_TASKS
from hf_tiny_transformer_train.user_data import check_data_file

RECIPES = Path(__file__).resolve().parent / "recipes"
DEFAULT_TASK = "reverse"
USER_DATA_RECIPE = RECIPES / "user_data.yaml"
# Metrics computed from generations: they exist only with --predict_with_generate.
GENERATION_METRICS = ("exact_match", "token_accuracy", "chrf", "bleu")


@dataclass
class NewModelArguments:
    """The shape of a new model, TinyTransformerConfig's defaults where neither the recipe nor a flag gives a value;
    a checkpoint (--model_name_or_path) brings its own."""

    d_model: int | None = field(default=None, metadata={"help": "Hidden size of a new model."})
    encoder_layers: int | None = field(default=None, metadata={"help": "Encoder layers."})
    decoder_layers: int | None = field(default=None, metadata={"help": "Decoder layers."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Attention heads; must divide d_model."})
    ffn_dim: int | None = field(default=None, metadata={"help": "Feed-forward inner size."})
    dropout: float | None = field(default=None, metadata={"help": "Dropout probability, in [0, 1)."})
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "Longest sequence a new model accepts."}
    )
    position_embedding_type: str | None = field(
        default=None,
        metadata={
            "help": "Positions of a new model: relative ones (a learned bias per distance inside attention) also hold "
            "on sequences longer than any seen in training.",
            "choices": list(POSITION_EMBEDDING_TYPES),
        },
    )
    occurrence_bias: bool | None = field(
        default=None,
        metadata={
            "help": "Encoder-decoder attention of a new model adds a learned bias by how many times the source token "
            "and the decoder's token occurred before, so that it can count repeated values (sort needs it)."
        },
    )
    occurrence_bias_pairs: str | None = field(
        default=None,
        metadata={
            "help": "With --occurrence_bias: the pairs of decoder and source token it compares (same_token_and_first: "
            "equal tokens, the others biased by whether the source token is its value's first occurrence; "
            "same_token: equal tokens, the others sharing one bias; all: every pair, the first version).",
            "choices": list(OCCURRENCE_BIAS_PAIRS),
        },
    )
    norm_position: str | None = field(
        default=None,
        metadata={"help": "LayerNorm placement of a new model.", "choices": list(NORM_POSITIONS)},
    )


@dataclass
class NewTokenizerArguments:
    """A new tokenizer trained on your data's training split; --tokenizer_name or a checkpoint brings its own."""

    tokenizer_type: str | None = field(
        default=None,
        metadata={
            "help": "With your own data: the kind of the new tokenizer trained on the training split: byte-level BPE "
            "(any text, no unknown tokens) or one token per word (word_level).",
            "choices": list(TOKENIZER_TYPES),
        },
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "With your own data: most tokens of the new tokenizer."}
    )


@dataclass
class AdapterArguments:
    """LoRA adapters (PEFT, Hu et al. 2021) trained on a checkpoint's frozen weights instead of every weight."""

    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Fine-tune --model_name_or_path with LoRA adapters (needs the `peft` extra): the output folder "
            "holds the adapter (adapter_config.json, adapter_model.safetensors), which PeftModel.from_pretrained and "
            "AutoPeftModelForSeq2SeqLM load on top of the checkpoint."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "Rank of each LoRA update, at least 1."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling: updates are multiplied by alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input, in [0, 1)."})
    lora_target_modules: str = field(
        default="all-linear",
        metadata={
            "help": "The layers that get adapters: all-linear (every projection, not the output layer), or "
            "comma-separated module names such as qkv_proj,out_proj."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "With --use_peft, also write the model with the adapter merged into its weights to "
            "<output_dir>/merged (a plain checkpoint, loadable without peft)."
        },
    )


@dataclass
class ModelArguments(NewModelArguments, NewTokenizerArguments, AdapterArguments):
    """Which model to train: a new TinyTransformer, or an existing checkpoint to fine-tune; and its precision."""

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
    bf16_where_native: bool = field(
        default=False,
        metadata={
            "help": "Train in bf16 autocast where the hardware multiplies bf16 matrices (a CUDA GPU that supports "
            "bf16, a CPU with AVX-512 BF16 or AMX), in float32 elsewhere. --bf16 or --fp16 decide instead."
        },
    )


@dataclass
class SyntheticDataArguments:
    """The synthetic corpus of a built-in task (see data.py)."""

    task: str | None = field(
        default=None,
        metadata={
            "help": f"What the model learns to do with a sequence of integers 0-99 (default {DEFAULT_TASK}); picks "
            "the recipe train/recipes/<task>.yaml.",
            "choices": list(TASKS),
        },
    )
    train_size: int | None = field(default=None, metadata={"help": "Training examples."})
    validation_size: int | None = field(default=None, metadata={"help": "Validation examples."})
    test_size: int | None = field(default=None, metadata={"help": "Test examples."})
    min_length: int | None = field(
        default=None,
        metadata={"help": "Shortest source: integers in the sequence, or digits per operand for add."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Longest source: integers in the sequence, or digits per operand for add."},
    )
    longer_test_size: int | None = field(
        default=None,
        metadata={
            "help": "Also test on this many held-out sources longer than any in training (max_length + 1 to 2 x "
            "max_length, within the model's positions), to measure how far the model generalises; 0: none."
        },
    )
    repeated_values_share: float | None = field(
        default=None,
        metadata={
            "help": "Copy, reverse and sort: the share of training and validation sequences drawn with repeats (values "
            "from a random set of 1-100, runs of random length; data.draw_values), so that the model finds a token by "
            "its position, not its value, and is right on inputs such as `5 5 5 5`; 0: uniform draws only."
        },
    )
    typed_inputs_size: int | None = field(
        default=None,
        metadata={
            "help": "Copy, reverse and sort: also test on up to this many held-out inputs of each family a person "
            "types (one value repeated, few values, a run inside random numbers, short with repeats, ascending, "
            "descending; typed_inputs.py), at the training's lengths and at the longer test's; 0: none."
        },
    )
    length_curriculum_steps: float | None = field(
        default=None,
        metadata={
            "help": "During this many first steps (below 1: this share of --max_steps), three quarters of each batch "
            "are sources no longer than a cap growing from the shortest length to the longest, the rest of all "
            "lengths; 0: every batch uniformly drawn from all lengths."
        },
    )
    length_grouping_batches: int | None = field(
        default=None,
        metadata={
            "help": "After the curriculum, every this many consecutive batches are pooled, sorted by source length and "
            "cut into batches again, read in a random order, so that each batch pads to about its own length; 1: "
            "none. Needs --max_steps (as the curriculum, it orders that many batches)."
        },
    )


@dataclass
class DataSourceArguments:
    """Where your own pairs of texts come from (see user_data.py): any of these selects them instead of a task.
    Named as in transformers' run_translation.py where it has them."""

    train_file: str | None = field(
        default=None,
        metadata={"help": "Your training pairs: a .jsonl, .json, .csv or .parquet file."},
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

    @property
    def uses_own_data(self) -> bool:
        """Whether the user's files or dataset, rather than a built-in task, are the data."""
        return any(getattr(self, item.name) is not None for item in fields(DataSourceArguments))


@dataclass
class UserDataArguments(DataSourceArguments):
    """How your own pairs are read and tokenized: flags that mean nothing for a built-in task."""

    dataset_config_name: str | None = field(
        default=None,
        metadata={"help": "The configuration of --dataset_name, for datasets that have several."},
    )
    source_column: str | None = field(default=None, metadata={"help": "The column of input texts."})
    target_column: str | None = field(default=None, metadata={"help": "The column of expected output texts."})
    max_source_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncate sources to this many tokens (</s> included); the log counts the truncated examples. "
            "Default: no truncation, and a source longer than the model's positions is an error."
        },
    )
    max_target_length: int | None = field(
        default=None,
        metadata={"help": "Truncate targets to this many tokens (</s> included); as --max_source_length."},
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
            "sources, drawn with --seed, takes the place of each; their examples leave the training data."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "With your own data: a tokenizer (a folder written by save_pretrained, or a Hub id) instead of "
            "training a new one. It needs a pad and an end-of-sequence token."
        },
    )


@dataclass
class DataArguments(SyntheticDataArguments, UserDataArguments):
    """The recipe, the data (a built-in task's synthetic corpus, or your own pairs), and when training stops."""

    recipe: str | None = field(
        default=None,
        metadata={
            "help": "A YAML file of flag values to start from (default: train/recipes/<task>.yaml, or "
            "train/recipes/user_data.yaml with your own data); flags on the command line override them."
        },
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Tokenize again even when the datasets cache holds the result."}
    )
    target_exact_match: float | None = field(
        default=None,
        metadata={
            "help": "Stop training at the first evaluation whose validation exact match reaches this share (the "
            "built-in tasks' recipes: 1.0, every validation example right; 0 turns it off)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop training once --metric_for_best_model has not improved for this many evaluations (the "
            "user-data recipe: 5; 0 turns it off). Needs --load_best_model_at_end."
        },
    )
    # Set by parse_arguments for the model card: the flags whose values differ from the recipe's.
    recipe_overrides: dict = field(default_factory=dict, init=False)


@dataclass
class TrainingArguments(Seq2SeqTrainingArguments):
    """Seq2SeqTrainingArguments, and the learning rate of the relative position biases (train/trainer.py)."""

    position_bias_learning_rate_scale: float = field(
        default=1.0,
        metadata={
            "help": "Learning rate of the relative position-bias and occurrence-bias tables, as a multiple of "
            "--learning_rate (the built-in tasks' recipes: 10). Adam moves each weight by about the learning rate per "
            "step, and a table must reach biases of several units before a head attends to one distance alone. "
            "Relative positions or --occurrence_bias only."
        },
    )


ARGUMENT_TYPES = (ModelArguments, DataArguments, TrainingArguments)


def flag_names(*groups: type) -> list[str]:
    """The flags of the argument groups (dataclasses) `groups`."""
    return [item.name for group in groups for item in fields(group)]


def flags_given(arguments, *groups: type) -> list[str]:
    """`--name` of each flag of `groups` that is set in `arguments` (a dataclass that holds those groups)."""
    return [f"--{name}" for name in flag_names(*groups) if getattr(arguments, name) is not None]


def computes_bf16_natively() -> bool:
    """Whether this machine multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU with AVX-512
    BF16 or AMX. Elsewhere CPU autocast emulates bf16, slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if torch.accelerator.is_available():
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own (private) feature checks
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def command_line_values(parser: HfArgumentParser, argv: list[str]) -> dict:
    """The values of the flags on the command line, converted as the parser converts them, and nothing else (argparse
    leaves out an argument whose default is SUPPRESS when it is not given)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def read_recipe(path: Path, parser: HfArgumentParser) -> dict:
    """The flag values of a recipe file. A value YAML reads as text (`1e-3`) is converted as the same flag on the
    command line would be."""
    if not path.is_file():
        raise ValueError(f"--recipe {path}: no such file")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"--recipe {path}: a recipe is a mapping of flag names to values")
    types = {action.dest: action.type for action in parser._actions}
    unknown = sorted(set(recipe) - set(types))
    if unknown:
        raise ValueError(f"--recipe {path}: {', '.join(unknown)} are not flags of train.py")
    return {
        name: types[name](value) if isinstance(value, str) and types[name] is not None else value
        for name, value in recipe.items()
    }


def recipe_path(flags: dict) -> Path:
    """The recipe a run starts from: the user's file, the user-data recipe, or the task's (the default task's)."""
    if flags.get("recipe") is not None:
        return Path(flags["recipe"])
    if any(flags.get(name) is not None for name in flag_names(DataSourceArguments)):
        return USER_DATA_RECIPE
    return RECIPES / f"{flags.get('task') or DEFAULT_TASK}.yaml"


def values_that_apply(recipe: dict, flags: dict) -> dict:
    """The recipe's values less those that a checkpoint or tokenizer given on the command line brings itself: the same
    values given as flags are errors (check_arguments), since they would be silently ignored."""
    brought = []
    if flags.get("model_name_or_path") is not None:
        brought = flag_names(NewModelArguments, NewTokenizerArguments)
    elif flags.get("tokenizer_name") is not None:
        brought = flag_names(NewTokenizerArguments)
    return {name: value for name, value in recipe.items() if name not in brought}


def choose_for_this_machine(values: dict) -> dict:
    """Fill in what neither the recipe nor the flags set and that depends on the hardware."""
    has_accelerator = torch.accelerator.is_available()
    choices = {
        # Without an accelerator, say "CPU" explicitly: only then do torchrun's processes join one gloo group
        # (otherwise each rank trains alone, silently) and does the Trainer accept --bf16 (CPU autocast).
        "use_cpu": not has_accelerator,
        # Pinned memory only helps copies to a GPU; on a CPU-only machine it just warns.
        "dataloader_pin_memory": torch.cuda.is_available(),
    }
    values = {**choices, **values}
    if "bf16" not in values:
        # --fp16 and a CPU run without --use_cpu (refused by the Trainer with bf16) rule bf16 out.
        values["bf16"] = bool(
            values.get("bf16_where_native")
            and not values.get("fp16")
            and (values["use_cpu"] or has_accelerator)
            and computes_bf16_natively()
        )
    return values


def default_output_dir(values: dict) -> str:
    """outputs/tiny-transformer-<task>, or -<name of the user's data>: "dates" for data/dates/train.jsonl or for a
    dataset data/dates; a file's own name where its folder says nothing ("pairs" for pairs.csv)."""
    if values.get("dataset_name") is not None:
        name = Path(values["dataset_name"]).name
    else:
        source = next((values.get(name) for name in flag_names(DataSourceArguments) if values.get(name)), None)
        if source is None:
            name = values.get("task") or "model"
        else:
            path = Path(source)
            keep_stem = path.stem not in SPLITS or not path.parent.name
            name = path.stem if keep_stem else path.parent.name
    return f"outputs/tiny-transformer-{name}"


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """The recipe's values overridden by the flags in `argv`, checked; a value that cannot work stops the program as
    argparse does (one line, exit status 2)."""
    parser = HfArgumentParser(ARGUMENT_TYPES)
    flags = command_line_values(HfArgumentParser(ARGUMENT_TYPES), argv)
    try:
        path = recipe_path(flags)
        recipe = read_recipe(path, parser)
        values = choose_for_this_machine({**values_that_apply(recipe, flags), **flags})
        values.setdefault("output_dir", default_output_dir(values))
        values["recipe"] = str(path)
        model_args, data_args, training_args = parser.parse_dict(values)
        drop_recipe_values_that_cannot_apply(data_args, training_args, flags)
        data_args.recipe_overrides = {
            name: value for name, value in flags.items() if name != "recipe" and recipe.get(name) != value
        }
        check_arguments(model_args, data_args, training_args)
    except ValueError as error:
        parser.error(str(error))
    return model_args, data_args, training_args


def evaluates_generations(training_args: Seq2SeqTrainingArguments) -> bool:
    strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    return training_args.do_eval and strategy != "no" and training_args.predict_with_generate


def drop_recipe_values_that_cannot_apply(
    data_args: DataArguments, training_args: Seq2SeqTrainingArguments, flags: dict
) -> None:
    """A recipe's stop at the validation target needs evaluations, and its curriculum and length grouping a step count
    and their own batch order: where the user's flags remove those, the recipe's values give way (the same values
    given as flags are errors)."""
    if "target_exact_match" not in flags and not evaluates_generations(training_args):
        data_args.target_exact_match = None
    order_set_elsewhere = training_args.max_steps < 1 or "train_sampling_strategy" in flags
    if "length_curriculum_steps" not in flags and order_set_elsewhere:
        data_args.length_curriculum_steps = 0
    if "length_grouping_batches" not in flags and order_set_elsewhere:
        data_args.length_grouping_batches = 1


def check_arguments(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> None:
    """Raise ValueError, naming the flag and its allowed range, for values that cannot work."""
    check_adapter_arguments(model_args)
    # Trainer flags it accepts but that would fail only after the corpus is built (or silently never act).
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1; got {getattr(training_args, name)}")
    if not training_args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive; got {training_args.learning_rate}")
    check_position_bias_learning_rate(model_args, data_args, training_args)
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
    if model_args.model_name_or_path is not None:
        given = flags_given(model_args, NewModelArguments)
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot be combined with --model_name_or_path: the checkpoint's config sets the size"
            )
    if data_args.uses_own_data:
        check_user_data_arguments(model_args, data_args, training_args)
    else:
        check_synthetic_data_arguments(model_args, data_args, training_args)


def check_synthetic_data_arguments(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> None:
    given = flags_given(data_args, UserDataArguments) + flags_given(model_args, NewTokenizerArguments)
    if given:
        raise ValueError(f"{', '.join(given)} need your own data: pass --train_file or --dataset_name")
    require_values(data_args, flag_names(SyntheticDataArguments))
    for name in ("train_size", "validation_size", "test_size", "min_length"):
        if getattr(data_args, name) < 1:
            raise ValueError(f"--{name} must be at least 1; got {getattr(data_args, name)}")
    if data_args.max_length < data_args.min_length:
        raise ValueError(
            f"--max_length ({data_args.max_length}) must be at least --min_length ({data_args.min_length})"
        )
    max_positions = model_max_positions(model_args)
    longest = longest_sequence(data_args.task, data_args.max_length)
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"--max_length {data_args.max_length} gives {data_args.task} sequences of {longest} tokens, more than the "
            f"model's max_position_embeddings ({max_positions})"
        )
    if data_args.length_curriculum_steps < 0:
        raise ValueError(f"--length_curriculum_steps must be at least 0; got {data_args.length_curriculum_steps}")
    if data_args.length_curriculum_steps and training_args.max_steps < 1:
        raise ValueError("--length_curriculum_steps needs --max_steps (the curriculum orders that many batches)")
    if data_args.length_grouping_batches < 1:
        raise ValueError(
            f"--length_grouping_batches must be at least 1 (1: none); got {data_args.length_grouping_batches}"
        )
    if data_args.length_grouping_batches > 1 and training_args.max_steps < 1:
        raise ValueError("--length_grouping_batches needs --max_steps (the grouping orders that many batches)")
    sampling = training_args.train_sampling_strategy
    for name, off in (("length_curriculum_steps", 0), ("length_grouping_batches", 1)):
        if getattr(data_args, name) != off and sampling != "random":
            raise ValueError(
                f"--{name} fixes the order of the batches; it cannot be combined with --train_sampling_strategy "
                f"{sampling} (pass --{name} {off} to use that sampler)"
            )
    if data_args.longer_test_size < 0:
        raise ValueError(f"--longer_test_size must be at least 0 (0: no longer test); got {data_args.longer_test_size}")
    share = data_args.repeated_values_share
    if share is not None and not 0 <= share <= 1:
        raise ValueError(f"--repeated_values_share must be a share in [0, 1] (0: uniform draws only); got {share}")
    if data_args.typed_inputs_size is not None and data_args.typed_inputs_size < 0:
        raise ValueError(f"--typed_inputs_size must be at least 0 (0: none); got {data_args.typed_inputs_size}")
    if data_args.task not in SEQUENCE_TASKS:
        given = [f"--{name}" for name in ("repeated_values_share", "typed_inputs_size") if getattr(data_args, name)]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to sequences of integers ({', '.join(SEQUENCE_TASKS)}), "
                f"not to --task {data_args.task}"
            )


def check_position_bias_learning_rate(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> None:
    """The scale must be positive; set on the command line to a value other than the recipe's, it must have tables
    to act on (the recipe's own value is inert for a model without them, as it is for LoRA, which trains none)."""
    scale = training_args.position_bias_learning_rate_scale
    if not scale > 0:
        raise ValueError(f"--position_bias_learning_rate_scale must be positive; got {scale}")
    if "position_bias_learning_rate_scale" not in data_args.recipe_overrides:
        return
    if model_args.model_name_or_path is not None:
        config = checkpoint_config(model_args)
        scheme = getattr(config, "position_embedding_type", None)
        occurrences = getattr(config, "occurrence_bias", False)
    else:
        scheme = model_args.position_embedding_type or TinyTransformerConfig().position_embedding_type
        occurrences = bool(model_args.occurrence_bias)
    if scheme != "relative" and not occurrences:
        raise ValueError(
            f"--position_bias_learning_rate_scale acts on relative position biases and occurrence biases; this "
            f"model's position_embedding_type is {scheme!r} and it has no occurrence bias (pass "
            "--position_embedding_type relative, or leave the flag out)"
        )


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
    """The flags of a run on the user's data; the data themselves are checked by train.py's `prepare_user_data`."""
    given = flags_given(data_args, SyntheticDataArguments)
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
    require_values(data_args, ["source_column", "target_column", "validation_split_percentage"])
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "preprocessing_num_workers"):
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

    if model_args.model_name_or_path is not None or data_args.tokenizer_name is not None:
        given = flags_given(model_args, NewTokenizerArguments)
        if given:
            brought_by = "--tokenizer_name" if data_args.tokenizer_name is not None else "--model_name_or_path"
            raise ValueError(f"{', '.join(given)} describe a new tokenizer; {brought_by} brings its own")
    else:
        require_values(model_args, flag_names(NewTokenizerArguments))
        if model_args.vocab_size < MIN_VOCAB_SIZE[model_args.tokenizer_type]:
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


def check_adapter_arguments(model_args: ModelArguments) -> None:
    if model_args.merge_adapter and not model_args.use_peft:
        raise ValueError("--merge_adapter merges a LoRA adapter: it needs --use_peft")
    if not model_args.use_peft:
        return
    if model_args.model_name_or_path is None:
        raise ValueError("--use_peft adapts a trained model: pass --model_name_or_path (a folder or a Hub id)")
    if isinstance(model_args.lora_r, bool) or model_args.lora_r < 1:
        raise ValueError(f"--lora_r must be at least 1; got {model_args.lora_r}")
    if not model_args.lora_alpha > 0:
        raise ValueError(f"--lora_alpha must be positive; got {model_args.lora_alpha}")
    if not 0 <= model_args.lora_dropout < 1:
        raise ValueError(f"--lora_dropout must be a probability in [0, 1); got {model_args.lora_dropout}")
    if not model_args.lora_target_modules.strip(", "):
        raise ValueError("--lora_target_modules must name modules (or all-linear); got an empty value")
    if importlib.util.find_spec("peft") is None:
        raise ValueError("--use_peft needs the peft package: pip install 'hf-tiny-transformer[peft]'")


def require_values(arguments, names: list[str]) -> None:
    """A user's recipe may leave out a value the run needs: name the flags that would give it."""
    missing = [f"--{name}" for name in names if getattr(arguments, name) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: neither the recipe nor the command line gives a value")


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


def new_model_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> TinyTransformerConfig:
    """The config of a new TinyTransformer sized by the flags (TinyTransformerConfig's defaults for those not set),
    with the tokenizer's vocabulary and special tokens."""
    sizes = {name: getattr(model_args, name) for name in flag_names(NewModelArguments)}
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
