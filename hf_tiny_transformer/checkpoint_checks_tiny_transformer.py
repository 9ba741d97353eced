"""Checks of a checkpoint as TinyTransformer loads it: damage gets a `ValueError` naming the file and the tensor.

`PreTrainedModel.from_pretrained` already does the rest of the loading contract that in-tree models share, and these
checks leave it alone:
- weights missing from the file (a base-model checkpoint loaded into the head model, an encoder taken from another
  checkpoint, `state_dict={}`) are initialised by `_init_weights`, logged, and listed under `missing_keys` of
  `output_loading_info=True`; a tied copy is not listed when its partner is present;
- pickle files (`pytorch_model.bin`) are read with torch's weights-only unpickler, which cannot run code;
- `ignore_mismatched_sizes=True` re-initialises tensors whose shape changed (a new vocabulary).

What transformers reports only as a log line or an opaque exception, these checks turn into one clear error:
- a truncated or unreadable safetensors file (transformers raises safetensors' `SafetensorError`, without the path);
- a tensor whose shape differs from the one `config.json` implies (transformers raises a `RuntimeError` pointing at
  its log), named with the config fields that decide the shape;
- tensors that the config's model does not have (more layers, another norm placement): the config contradicts the
  weights, and loading would silently drop them;
- NaN or infinite weights (a damaged file, or one saved from a diverged run).

This file is copied next to the weights by `save_pretrained`, so it imports only torch, transformers and safetensors.
"""

import re
from collections.abc import Callable

import torch
from safetensors import SafetensorError

WEIGHTS_NAME = "model.safetensors"


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


def check_checkpoint_matches_config(loading_info: dict, source: str, ignore_mismatched_sizes: bool) -> None:
    """Raise `ValueError` if the checkpoint has tensors of other shapes than the config's model, or tensors that
    model does not have. A bare model loaded from a head checkpoint has no use for `lm_head`: that is expected."""
    problems = []
    if not ignore_mismatched_sizes:
        for key, checkpoint_shape, model_shape in sorted(loading_info["mismatched_keys"]):
            problems.append(
                f"{key} has shape {tuple(checkpoint_shape)} in the checkpoint but the config gives "
                f"{tuple(model_shape)} (check {config_fields_for_weight(key, 'shape')})"
            )
    # One entry per whole layer ("model.encoder.layers.1.*") rather than one per tensor.
    unexpected = {re.sub(r"(layers\.\d+)\..*", r"\1.*", key) for key in loading_info["unexpected_keys"]}
    for key in sorted(unexpected):
        if not key.startswith("lm_head."):
            problems.append(f"{key} is not in the config's model (check {config_fields_for_weight(key, 'unexpected')})")
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise ValueError(f"{source}: `{WEIGHTS_NAME}` does not match `config.json`: {shown}.")


def check_weights_are_finite(model: torch.nn.Module, source: str) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(tensor.isfinite().all()):
            raise ValueError(
                f"{source}: tensor {name} in `{WEIGHTS_NAME}` holds NaN or infinite values; the file is damaged or "
                "was saved from a diverged run."
            )


def load_checked(load: Callable, pretrained_model_name_or_path, *model_args, **kwargs):
    """`load(pretrained_model_name_or_path, ...)` (a `from_pretrained`), then the checks above.

    The loading info is always requested, to see mismatched and unexpected tensors, and mismatched shapes are
    always let through to be reported here by name, unless the caller asked for `ignore_mismatched_sizes`.
    """
    output_loading_info = kwargs.pop("output_loading_info", False)
    ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
    source = str(pretrained_model_name_or_path)
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
    check_checkpoint_matches_config(loading_info, source, ignore_mismatched_sizes)
    check_weights_are_finite(model, source)
    return (model, loading_info) if output_loading_info else model
