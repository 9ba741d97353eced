"""Relative positions of TinyTransformer (`position_embedding_type="relative"`): learned biases added to the attention
scores, S = QKᵀ/√d + B, that depend on the bucketed distance between query and key (T5's scheme, Raffel et al. 2020
§2.1), in encoder and decoder self-attention and, counted from both ends of the source, in encoder-decoder attention.

With no position vectors, nothing in the model depends on where a sequence ends, so it runs on sequences longer than
any it was trained on (how far it holds: bench/README.md). This file is copied next to the weights by
`save_pretrained` (the model file imports it), so it imports only torch and the config.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_tiny_transformer import TinyTransformerConfig
from .input_checks_tiny_transformer import check_bias_backend


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's buckets for key position - query position (Raffel et al. 2020, §2.1): one bucket per distance below
    half of the buckets (of a side, when bidirectional), logarithmically wider ones up to `max_distance`, and one
    for everything farther, so distances never seen in training share a bucket with ones that were."""
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative_position > 0).long() * num_buckets  # keys after the query get their own half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # a causal query sees only keys at or before it
    exact = num_buckets // 2
    logarithmic = (
        exact
        + (
            torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)
        ).long()
    )
    return bucket + torch.where(distance < exact, distance, logarithmic.clamp(max=num_buckets - 1))


class TinyTransformerRelativePositionBias(nn.Module):
    """B[h, i, j] = b_h(bucket(key_j - query_i)): one learned bias per head and distance bucket, added to the
    attention scores, S = QKᵀ/√d + B. Shared by all the layers of a stack, as in T5."""

    def __init__(self, config: TinyTransformerConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.bias = nn.Embedding(self.num_buckets, config.num_attention_heads)

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """[batch or 1, query] and [batch or 1, key] positions -> B as [batch or 1, heads, query, key]."""
        relative_position = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(relative_position, self.bidirectional, self.num_buckets, self.max_distance)
        # one-hot @ table rather than an embedding lookup: the same values, and a backward that is one matrix
        # product instead of a scatter of batch x query x key gradients (a fifth of a training step on a CPU).
        one_hot = F.one_hot(buckets, self.num_buckets).to(self.bias.weight.dtype)
        return (one_hot @ self.bias.weight).permute(0, 3, 1, 2)


def check_backend(config: TinyTransformerConfig) -> None:
    check_bias_backend(config, "position_embedding_type='relative'")


class TinyTransformerEncoderPositionBias(nn.Module):
    """The bias of the encoder's bidirectional self-attention."""

    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        self.config = config
        self.self_attention = TinyTransformerRelativePositionBias(config, bidirectional=True)

    def forward(self, source_length: int, device: torch.device) -> torch.Tensor:
        """B as [1, heads, source, source]: distances between real tokens do not depend on where padding puts them,
        so one bias serves every row."""
        check_backend(self.config)
        positions = torch.arange(source_length, device=device)[None]
        return self.self_attention(positions, positions)


class TinyTransformerDecoderPositionBias(nn.Module):
    """The biases of the decoder's causal self-attention and of encoder-decoder attention.

    Encoder-decoder attention compares output position i with source position j counted from the start of the source
    and from its end (</s> is 0): B = b_start(j - i) + b_end(j' - i). Either count lets a head find "the source token
    at my own distance from the start (or the end)", which copying and reversing need, at any length. Past the
    config's `relative_attention_reference_length`, B grows with log n against the dilution of attention over n keys.
    """

    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        self.config = config
        self.self_attention = TinyTransformerRelativePositionBias(config, bidirectional=False)
        self.from_start = TinyTransformerRelativePositionBias(config, bidirectional=True)
        self.from_end = TinyTransformerRelativePositionBias(config, bidirectional=True)

    def forward(
        self, position_ids: torch.Tensor, key_length: int, source_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, query] output positions, the self-attention's key count (keys at positions 0, 1, ...) and the
        [batch or 1, source] positions of the source tokens -> the self-attention's B as [1, heads, query, key] and
        the encoder-decoder attention's as [batch or 1, heads, query, source]."""
        check_backend(self.config)
        key_positions = torch.arange(key_length, device=position_ids.device)[None]
        last_position = source_positions.max(-1, keepdim=True).values
        from_end = last_position - source_positions
        encoder_attention_bias = self.from_start(position_ids, source_positions) + self.from_end(position_ids, from_end)
        reference = self.config.relative_attention_reference_length
        if reference is not None:
            # × (log n / log reference)² for a source of n > reference tokens, per row: [batch or 1, 1, 1, 1].
            source_tokens = (last_position + 1).to(encoder_attention_bias.dtype)[:, :, None, None]
            scale = (torch.log(source_tokens) / math.log(reference)).clamp(min=1.0) ** 2
            encoder_attention_bias = encoder_attention_bias * scale
        return self.self_attention(position_ids, key_positions), encoder_attention_bias
