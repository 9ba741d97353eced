"""Checks of TinyTransformer's forward inputs: a bad id, mask or length raises `ValueError` naming the argument,
before it can become an opaque `IndexError` inside an embedding or a silently wrong result.

Checks that read tensor values are skipped under torch.compile / torch.export, which cannot branch on them. This file
is copied next to the weights by `save_pretrained`, so it imports only torch and transformers.
"""

import torch
from transformers.utils import is_torchdynamo_compiling


def check_bias_backend(config, feature: str) -> None:
    """Raise `ValueError` unless `config`'s attention implementation can add `feature`'s bias to the attention scores
    (eager and SDPA take it in the mask; flash and flex attention cannot)."""
    if config._attn_implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"{feature} adds a bias to the attention scores, which attn_implementation "
            f"{config._attn_implementation!r} cannot apply; use 'sdpa' or 'eager'."
        )


def check_token_ids(ids: torch.Tensor, name: str, vocab_size: int, allow_ignore_index: bool = False) -> None:
    """Raise `ValueError` unless `ids` is a [batch, length] integer tensor of ids in [0, vocab_size)."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of token ids, got {type(ids).__name__}.")
    if ids.dtype not in (torch.int64, torch.int32):
        # The embedding lookup accepts only these two; anything else would fail deep inside torch.
        raise ValueError(f"`{name}` must hold integer token ids (torch.long or torch.int32), got dtype {ids.dtype}.")
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape [batch, length], got shape {tuple(ids.shape)}.")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"`{name}` must hold at least one token per row and one row, got shape {tuple(ids.shape)}.")
    if is_torchdynamo_compiling():
        return
    # One reduction (and one host read) in the common case, where every id is in range: generate() checks one new
    # token per step, so this runs once per generated token.
    lowest, highest = (bound.item() for bound in torch.aminmax(ids))
    if lowest >= 0 and highest < vocab_size:
        return
    valid = (ids >= 0) & (ids < vocab_size)
    if allow_ignore_index:
        valid |= ids == -100
    if not bool(valid.all()):
        bad = ids[~valid][0].item()
        allowed = f"[0, {vocab_size})" + (" or -100" if allow_ignore_index else "")
        raise ValueError(f"`{name}` contains id {bad}, outside the vocabulary {allowed}.")


def check_embeddings(embeds: torch.Tensor, name: str, d_model: int) -> None:
    """Raise `ValueError` unless `embeds` is a floating [batch, length, d_model] tensor."""
    if not isinstance(embeds, torch.Tensor) or not embeds.dtype.is_floating_point:
        raise ValueError(f"`{name}` must be a floating-point tensor of shape [batch, length, {d_model}].")
    if embeds.dim() != 3 or embeds.shape[-1] != d_model or embeds.shape[0] == 0 or embeds.shape[1] == 0:
        raise ValueError(f"`{name}` must have shape [batch, length, {d_model}], got {tuple(embeds.shape)}.")


def check_attention_mask(
    mask: torch.Tensor | None,
    name: str,
    batch_size: int,
    length: int,
    allow_4d: bool = False,
    check_values: bool = True,
) -> None:
    """Raise `ValueError` unless `mask` is None or a [batch, length] tensor (1 = attend, 0 = padding).

    `allow_4d` also accepts a ready-made [batch, 1, query, key] mask; only the decoder's self-attention can use one
    (the encoder derives positions from its 2-D mask). `check_values=False` checks the shape only, for a mask whose
    values were checked before (the encoder mask at a later decoding step), as reading them costs a host sync.
    """
    if mask is None:
        return
    if allow_4d and isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[0] == batch_size:
        # As generate() builds for static caches: used as given.
        return
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(mask.shape) != (batch_size, length):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"`{name}` must have shape [batch, length] = {(batch_size, length)}, got {shape}.")
    if not check_values or is_torchdynamo_compiling() or mask.dtype == torch.bool:
        return
    if not mask.is_floating_point():
        # Integer masks are binary exactly when they lie in [0, 1]: one reduction instead of four operations.
        lowest, highest = (bound.item() for bound in torch.aminmax(mask))
        if lowest >= 0 and highest <= 1:
            return
    # Positions are counted with a cumulative sum of the mask: any value other than 0/1 shifts them silently.
    is_binary = (mask == 0) | (mask == 1)
    if not bool(is_binary.all()):
        bad = mask[~is_binary][0].item()
        raise ValueError(f"`{name}` must hold only 1 (token) and 0 (padding), got {bad}.")


def check_ids_or_embeddings(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    vocab_size: int,
    d_model: int,
    ids_name: str,
    embeds_name: str,
) -> None:
    """Raise `ValueError` unless exactly one of `input_ids` and `inputs_embeds` is given, and it is valid."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"Pass exactly one of `{ids_name}` and `{embeds_name}`.")
    if input_ids is not None:
        check_token_ids(input_ids, ids_name, vocab_size)
    else:
        check_embeddings(inputs_embeds, embeds_name, d_model)


def check_encoder_states(encoder_hidden_states: torch.Tensor | None, batch_size: int, d_model: int) -> None:
    """Raise `ValueError` unless the decoder's `encoder_hidden_states` fit a decoder input of `batch_size` rows."""
    if encoder_hidden_states is None:
        raise ValueError("The decoder needs `encoder_hidden_states` (the encoder's output H).")
    check_embeddings(encoder_hidden_states, "encoder_hidden_states", d_model)
    if encoder_hidden_states.shape[0] != batch_size:
        raise ValueError(
            f"The encoder states hold {encoder_hidden_states.shape[0]} sequences but the decoder input holds "
            f"{batch_size}; pass `input_ids`/`encoder_outputs` and `decoder_input_ids` with the same batch size."
        )


def check_length(length: int, max_positions: int | None, name: str) -> None:
    """Raise `ValueError` if a sequence reaches past a position table of `max_positions` rows (None: no table)."""
    if max_positions is not None and length > max_positions:
        raise ValueError(
            f"`{name}` reaches position {length}, beyond `max_position_embeddings` ({max_positions}); shorten the "
            "input, build a model with a longer position table, or use position_embedding_type='relative', which "
            "has no length limit."
        )


def check_labels_shape(labels: torch.Tensor, expected: tuple[int, int]) -> None:
    if tuple(labels.shape) != expected:
        raise ValueError(f"`labels` must have shape [batch, target_length] = {expected}, got {tuple(labels.shape)}.")
