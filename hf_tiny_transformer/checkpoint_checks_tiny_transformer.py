"""Checks of a checkpoint as TinyTransformer loads it: damage gets a `ValueError` naming the file and the tensor, and a
checkpoint of the earlier projection layout is converted.

`PreTrainedModel.from_pretrained` already does the rest of the loading contract that in-tree models share, and these
checks leave it alone:
- weights missing from the file (a base-model checkpoint loaded into the head model, an encoder taken from another
  checkpoint, `state_dict={}`) are initialised by `_init_weights`, logged, and listed under `missing_keys` of
  `output_loading_info=True`; a tied copy is not listed when its partner is present;
- tensors the config's model does not have (more layers, another norm placement, an unrelated tensor) are left out,
  logged, and listed under `unexpected_keys`, as by in-tree models; the warning here adds the `config.json` fields
  that decide whether such a tensor exists;
- pickle files (`pytorch_model.bin`) are read with torch's weights-only unpickler, which cannot run code;
- `ignore_mismatched_sizes=True` re-initialises tensors whose shape changed (a new vocabulary).

What transformers reports only as a log line or an opaque exception, these checks turn into one clear error:
- a truncated or unreadable safetensors file (transformers raises safetensors' `SafetensorError`, without the path);
- a tensor whose shape differs from the one `config.json` implies (transformers raises a `RuntimeError` pointing at
  its log), named with the config fields that decide the shape;
- NaN or infinite weights (a damaged file, or one saved from a diverged run).

Checkpoints saved before the projections were `nn.Linear`s store each projection weight [in_features, out_features]
(transformers' `Conv1D` layout) where `nn.Linear` stores [out_features, in_features]. Shapes cannot tell the two
apart for square matrices (`out_proj`, `q_proj`: [d_model, d_model]), so `config.json` says which layout its weights
have: `projection_layout`, written by every save since, and absent from every earlier file (the configuration then
reads "in_out"). Such a checkpoint's projection weights are transposed as it loads, after checking that the fused
`qkv_proj` (never square: [d_model, 3 d_model]) has the shape that layout gives.

This file is copied next to the weights by `save_pretrained`, so it imports only torch, transformers and safetensors.
"""

import json
import logging as python_logging
import re
from collections.abc import Callable

import torch
from safetensors import SafetensorError, safe_open
from transformers.utils import cached_file, logging

logger = logging.get_logger(__name__)

WEIGHTS_NAME = "model.safetensors"
# The `nn.Linear`s that the earlier layout stored as [in_features, out_features] (every projection but `lm_head`).
PROJECTION_WEIGHT = re.compile(r"\.(qkv_proj|q_proj|kv_proj|out_proj|fc1|fc2)\.weight$")
# Arguments of `from_pretrained` that say where to find the checkpoint's files.
FILE_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def config_fields_for_weight(key: str, problem: str) -> str:
    """The `config.json` fields that decide whether checkpoint tensor `key` exists (problem "unexpected") or what
    shape it has (problem "shape"), to point error messages at the field to check."""
    if "embed_tokens" in key or key.startswith("lm_head"):
        return "`vocab_size`, `d_model`, `tie_word_embeddings`"
    if "embed_positions" in key or "position_bias" in key:
        return "`position_embedding_type`, `max_position_embeddings`, `relative_attention_num_buckets`, `d_model`"
    stack = re.search(r"(encoder|decoder)\.layers\.\d+", key)
    if problem != "shape":
        return f"`{stack.group(1)}_layers`" if stack else "`norm_position`"
    return "`ffn_dim`, `d_model`" if "feed_forward" in key else "`d_model`"


def shown(problems: list[str]) -> str:
    return "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")


def check_checkpoint_matches_config(loading_info: dict, source: str, ignore_mismatched_sizes: bool) -> None:
    """Raise `ValueError` if the checkpoint has tensors of other shapes than the config's model (in-tree models raise
    too, unless `ignore_mismatched_sizes`); warn, naming the config fields to check, about tensors that model does not
    have (in-tree models warn too). A bare model loaded from a head checkpoint has no use for `lm_head`."""
    problems = []
    if not ignore_mismatched_sizes:
        for key, checkpoint_shape, model_shape in sorted(loading_info["mismatched_keys"]):
            hint = f"check {config_fields_for_weight(key, 'shape')}"
            if PROJECTION_WEIGHT.search(key) and tuple(checkpoint_shape) == tuple(model_shape)[::-1]:
                hint += "; the [in, out] projection layout of a `config.json` without `projection_layout`?"
            problems.append(
                f"{key} has shape {tuple(checkpoint_shape)} in the checkpoint but the config gives "
                f"{tuple(model_shape)} ({hint})"
            )
    if problems:
        raise ValueError(f"{source}: `{WEIGHTS_NAME}` does not match `config.json`: {shown(problems)}.")
    # One entry per whole layer ("model.encoder.layers.1.*") rather than one per tensor.
    unexpected = {re.sub(r"(layers\.\d+)\..*", r"\1.*", key) for key in loading_info["unexpected_keys"]}
    notes = [
        f"{key} (check {config_fields_for_weight(key, 'unexpected')})"
        for key in sorted(unexpected)
        if not key.startswith("lm_head.")
    ]
    if notes:
        logger.warning(f"{source}: `{WEIGHTS_NAME}` holds tensors the config's model does not have: {shown(notes)}.")


def convert_projection_layout(model: torch.nn.Module, loading_info: dict, source: str, file_kwargs: dict) -> None:
    """Load the projection weights of a checkpoint saved with the earlier [in, out] layout, transposed.

    `from_pretrained` has loaded the rest: the square projections untransposed, the others not at all (their shapes
    did not match). Each is read again from the file and copied in as [out, in]; they leave `mismatched_keys`."""
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError(
            f"{source}: the checkpoint stores its projections in the earlier [in, out] layout (its `config.json` has "
            "no `projection_layout`), which cannot be converted while quantizing; load it without "
            "`quantization_config` and `save_pretrained` it once, which writes the `nn.Linear` [out, in] layout."
        )
    path = cached_file(source, WEIGHTS_NAME, **file_kwargs)
    prefix = model.base_model_prefix + "."
    converted = set()
    with safe_open(path, framework="pt") as checkpoint, torch.no_grad():
        stored = set(checkpoint.keys())
        for name, parameter in model.named_parameters():
            if not PROJECTION_WEIGHT.search(name):
                continue
            candidates = (name, prefix + name, name.removeprefix(prefix))
            key = next((candidate for candidate in candidates if candidate in stored), None)
            if key is None:
                continue  # missing from the file: initialised, and reported in `missing_keys`
            tensor = checkpoint.get_tensor(key)
            if tuple(tensor.shape) != tuple(parameter.shape)[::-1]:
                raise ValueError(
                    f"{source}: `config.json` has no `projection_layout`, so `{WEIGHTS_NAME}` should store its "
                    f"projections in the earlier [in, out] layout, but {key} has shape {tuple(tensor.shape)} where "
                    f'that layout gives {tuple(parameter.shape)[::-1]}; add `"projection_layout": "out_in"` to '
                    "`config.json` if the file was saved as `nn.Linear` weights."
                )
            parameter.copy_(tensor.T)
            converted.add(name)
    loading_info["mismatched_keys"] = [entry for entry in loading_info["mismatched_keys"] if entry[0] not in converted]
    model.config.projection_layout = "out_in"
    logger.info(f"{source}: converted {len(converted)} projection weights from the [in, out] layout to [out, in].")


def check_weights_are_finite(model: torch.nn.Module, source: str) -> None:
    for name, tensor in model.state_dict().items():
        if type(tensor) is not torch.Tensor:
            continue  # a quantized weight (torchao's tensor subclasses), quantized from weights checked as loaded
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(tensor.isfinite().all()):
            raise ValueError(
                f"{source}: tensor {name} in `{WEIGHTS_NAME}` holds NaN or infinite values; the file is damaged or "
                "was saved from a diverged run."
            )


def only_errors(record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.ERROR


def stores_earlier_layout(source: str, config, file_kwargs: dict) -> bool:
    """Whether the checkpoint's projections are in the earlier [in, out] layout, read from the `config` passed to
    `from_pretrained` or else from the checkpoint's `config.json` (without `projection_layout`: the earlier layout).
    A `config.json` that cannot be read is left to `from_pretrained`, which reports it."""
    if config is not None and not isinstance(config, str):
        return getattr(config, "projection_layout", "out_in") == "in_out"
    try:
        path = cached_file(config or source, "config.json", _raise_exceptions_for_missing_entries=False, **file_kwargs)
        with open(path, encoding="utf-8") as file:
            return "projection_layout" not in json.load(file)
    except (OSError, TypeError, ValueError):
        return False


def load_checked(load: Callable, pretrained_model_name_or_path, *model_args, **kwargs):
    """`load(pretrained_model_name_or_path, ...)` (a `from_pretrained`), then the checks above.

    The loading info is always requested, to see mismatched and unexpected tensors, and mismatched shapes are
    always let through to be reported here by name, unless the caller asked for `ignore_mismatched_sizes`.
    """
    output_loading_info = kwargs.pop("output_loading_info", False)
    ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
    source = str(pretrained_model_name_or_path)
    file_kwargs = {name: kwargs[name] for name in FILE_ARGUMENTS if name in kwargs}
    earlier_layout = stores_earlier_layout(source, kwargs.get("config"), file_kwargs)
    # transformers' loading report would list the earlier layout's projections as re-initialised for their shapes;
    # they are converted below instead, and what else the report would say is logged there.
    report_logger = python_logging.getLogger("transformers.modeling_utils")
    if earlier_layout:
        report_logger.addFilter(only_errors)
    try:
        model, loading_info = load(
            pretrained_model_name_or_path,
            *model_args,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    except SafetensorError as error:
        raise ValueError(
            f"{source}: `{WEIGHTS_NAME}` is damaged or truncated ({error}); save or download it again."
        ) from error
    finally:
        report_logger.removeFilter(only_errors)
    if model.config.projection_layout == "in_out":
        convert_projection_layout(model, loading_info, source, file_kwargs)
        if loading_info["missing_keys"]:
            logger.warning(
                f"{source}: tensors missing from `{WEIGHTS_NAME}`, initialised: {sorted(loading_info['missing_keys'])}"
            )
    check_checkpoint_matches_config(loading_info, source, ignore_mismatched_sizes)
    check_weights_are_finite(model, source)
    return (model, loading_info) if output_loading_info else model
