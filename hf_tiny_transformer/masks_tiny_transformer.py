"""The attention masks of TinyTransformer, built once per forward and shared by the layers of a stack.

This file is copied next to the weights by `save_pretrained` (the model file imports it), so it imports only torch,
transformers and the config.
"""

import torch
from transformers.cache_utils import EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.utils import is_torchdynamo_compiling

from .configuration_tiny_transformer import TinyTransformerConfig

# Each attention of a stack gets one mask per forward, built once by the functions below and shared by its layers:
# - None: no key is padding. A causal attention (module.is_causal) then masks future keys itself, and every backend
#   runs its unmasked kernel;
# - SDPA and eager: a boolean [batch, 1, 1 or query, key] tensor, True where a key may be attended; with relative
#   positions an additive float [batch or 1, heads, query, key] tensor, the position bias B where a key may be
#   attended and MASKED_SCORE where not;
# - other backends (flash, flex, ...), static caches and 4-D masks given by the caller: the formats transformers'
#   `create_*_mask` builds.
# Where a causal attention gets no mask but still needs one (the eager attention, a relative position bias),
# `causal_keys` builds it; every score a mask removes becomes MASKED_SCORE.
MASKED_SCORE = torch.finfo(torch.float16).min  # representable in every float dtype, so autocast keeps it finite


def padding_mask(
    config: TinyTransformerConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    encoder_hidden_states: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The mask of a non-causal attention whose keys `attention_mask` [batch, key] marks 1 (token) or 0 (padding):
    encoder self-attention, or encoder-decoder attention (keys from `encoder_hidden_states`)."""
    if attention_mask is None or (not is_torchdynamo_compiling() and bool(attention_mask.all())):
        return None
    if config._attn_implementation in ("sdpa", "eager"):
        # A view that broadcasts over heads and queries: no [batch, 1, query, key] tensor is built.
        return attention_mask[:, None, None, :].bool()
    return create_bidirectional_mask(config, inputs_embeds, attention_mask, encoder_hidden_states)


def causal_mask(
    config: TinyTransformerConfig,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: EncoderDecoderCache | None,
) -> torch.Tensor | None:
    """The mask of the decoder's causal self-attention, given its [batch, key] padding mask (or a ready 4-D one)."""
    self_attention_cache = cache.self_attention_cache if cache is not None else None
    static_graph = cache is not None and cache.is_compileable and is_torchdynamo_compiling()
    if attention_mask is None and inputs_embeds.shape[1] == 1 and not static_graph:
        # A cached decoding step: its one query, at the last position, may attend to every key the cache holds: all of
        # a dynamic cache's, a static cache's written slots (`written_slots`). A compiled graph attends to the static
        # cache's whole buffer, whose empty slots the mask below removes.
        return None
    # Positional arguments: the name of the cache argument differs between transformers 5.x releases.
    return create_causal_mask(config, inputs_embeds, attention_mask, self_attention_cache)


def causal_keys(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """[query, key] booleans, True where key j is not after query i, which sits at position key_length -
    query_length + i (a cache holds the earlier keys)."""
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(key_length - query_length)


def add_position_bias(mask: torch.Tensor | None, position_bias: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """The additive mask of S = QKᵀ/√d + B: the position bias B where `mask` lets a query attend to a key."""
    if mask is None and is_causal:
        mask = causal_keys(*position_bias.shape[-2:], position_bias.device)
    if mask is None:
        return position_bias
    allowed = mask if mask.dtype == torch.bool else mask == 0  # eager masks are additive: 0 where allowed
    return position_bias.masked_fill(~allowed, MASKED_SCORE)
