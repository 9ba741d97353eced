"""Absolute positions of TinyTransformer: position vectors added to the token embeddings, learned
(`position_embedding_type="learned"`, an `nn.Embedding`) or fixed sinusoids (`"sinusoidal"`, Vaswani et al. §3.5),
and the source token positions they index (which the relative scheme's encoder-decoder bias counts too).

Both end at `max_position_embeddings`, and a sequence longer than any seen in training reaches positions never trained
(learned) or never seen together with the task (sinusoidal): they fail there (bench/README.md, "Length
generalisation"). This file is copied next to the weights by `save_pretrained` (the model file imports it), so it
imports only torch and the config.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_tiny_transformer import TinyTransformerConfig


def token_positions(attention_mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
    """Position of each source token, [batch or 1, length]: counted over real tokens only, so that left padding does
    not shift them (padding gets position 0)."""
    if attention_mask is None:
        return torch.arange(length, device=device)[None]
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sinusoidal_position_table(num_positions: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)) (Vaswani et al. §3.5)."""
    positions = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(num_positions, d_model)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies[: d_model // 2])
    return table


class TinyTransformerSinusoidalPositions(nn.Module):
    """Fixed sinusoidal position vectors; a non-persistent buffer, rebuilt by `_init_weights` after loading."""

    def __init__(self, num_positions: int, d_model: int):
        super().__init__()
        self.register_buffer("weight", sinusoidal_position_table(num_positions, d_model), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(position_ids, self.weight)


def absolute_position_embedding(config: TinyTransformerConfig) -> nn.Module | None:
    """The position vectors added to the token embeddings, or None where positions act inside attention."""
    if config.position_embedding_type == "learned":
        return nn.Embedding(config.max_position_embeddings, config.d_model)
    if config.position_embedding_type == "sinusoidal":
        return TinyTransformerSinusoidalPositions(config.max_position_embeddings, config.d_model)
    return None
