"""Occurrence bias of TinyTransformer (`occurrence_bias=True`): encoder-decoder attention also compares how many times
the decoder's token and each source token occurred before, in their own sequences.

Why. Sorting `7 3 7 7` means writing 7 exactly as often as the source holds it, and softmax attention cannot count:
its weights α sum to 1, so a head attending to every 7 of the source returns their mean, the same for three 7s as for
thirty, and the count reaches the model only as a share of the keys, less and less precisely as counts grow (sort
trained on 1-50 integers for 5,000 steps: 2-3 distinct values 57.5-72% exact match, a run of one value inside random
numbers 84-91%; bench/README.md, "Sort with repeats"). Counting becomes a lookup once each token's occurrence index is
known: having read its (r+1)-th `7`, the decoder has written r + 1 sevens, and writes another exactly when the source
holds a 7 of index r + 1.

What. The occurrence index of token t of a sequence is o_t = #{u < t : x_u = x_t}, padding not counted (0 for an id's
first occurrence). Encoder-decoder attention adds a learned bias per head to the scores of each pair of decoder query
i and source key j holding the same token, looked up by the difference of their indices, o_j - r_i, clipped to
±OCCURRENCE_MAX_DIFFERENCE; every other pair gets one of two more learned biases per head, by whether o_j = 0:
S = QKᵀ/√d + B_position + B_occurrence. The bias of difference +1 points a head at the next copy to write and nowhere
else, at any count and any length: the same trained table serves 3 copies and 100. It is the relative position bias
of relative_positions_tiny_transformer with occurrence indices in place of positions.

Why only between equal tokens (`occurrence_bias_pairs="same_token"`). A source key of another value has an index that
says nothing about the query's, yet with the difference looked up for every pair (`"all"`, the first version, which
checkpoints saved before the field existed keep) the first copy of the next value to write, of index 0, gets the bias
of -r after a group of r + 1 copies: the same as the copies already written, which a head must avoid. Sort, seeds
42-46, 1,500 steps: 2-3 distinct values 98.0-100% with every pair biased, 100% on every seed with equal tokens only
(bench/README.md, "Sort with repeats").

Why the pairs of different tokens tell a value's first occurrence from its copies (`"same_token_and_first"`, the
default). After writing its last 27, sort's decoder looks among the other tokens for the next value, 28; with one
bias for every such pair, a source that holds a run of twenty 29s and one 28 gives the 29s twenty times the 28's
weight, and past the run lengths seen in training the 29s win: trained on 1-25, 22 of the 24 errors on a run inside
random numbers at 26-50 wrote the run's value one step early (88% exact match). A second bias for keys that repeat an
earlier copy of their value lets a head see each distinct value once, however long its run: 100% at 26-50, 94% at
51-100 (58% before), seed 42.

The indices come from the token ids: the encoder returns the source's with its output (`occurrence_indices`, and the
ids themselves, `input_ids`, which tell the pairs of equal tokens) and the decoder counts its own inputs; a decoding
step with a cache sees only its new tokens, so `generate` passes their indices counted over every decoder token so far
(`decoder_occurrence_indices`). This file is copied next to the weights by `save_pretrained` (the model file imports
it), so it imports only torch, transformers and the config.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import is_torchdynamo_compiling

from .configuration_tiny_transformer import TinyTransformerConfig
from .input_checks_tiny_transformer import check_bias_backend

# Differences beyond ±4 share the end buckets: a head needs the next copy (+1) and the one just written (0) told
# apart from the others, not their distances.
OCCURRENCE_MAX_DIFFERENCE = 4
# The table's rows: one per clipped difference, and with `occurrence_bias_pairs="same_token"` one for the pairs of
# different tokens (the last).
OCCURRENCE_DIFFERENCES = 2 * OCCURRENCE_MAX_DIFFERENCE + 1
# The rows after those for the pairs of different tokens: none where the difference biases every pair, one for them
# all, or two: a key that is its value's first occurrence in the source, and one that repeats an earlier copy.
OCCURRENCE_OTHER_ROWS = {"all": 0, "same_token": 1, "same_token_and_first": 2}


def occurrence_indices(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, last: int | None = None
) -> torch.Tensor:
    """o_t = #{u < t : ids_u = ids_t, u not padding} as [batch, length], or for the `last` positions only (a decoding
    step's new tokens, counted over the whole sequence)."""
    length = input_ids.shape[1]
    queries = input_ids if last is None else input_ids[:, length - last :]
    positions = torch.arange(length, device=input_ids.device)
    earlier = positions[None, :] < positions[length - queries.shape[1] :, None]  # [query, key]: key before query
    same = (queries[:, :, None] == input_ids[:, None, :]) & earlier
    if attention_mask is not None:
        same = same & attention_mask.bool()[:, None, :]
    return same.sum(-1)


def check_occurrence_indices(indices, name: str, batch_size: int, length: int, check_values: bool = True) -> None:
    """`ValueError` naming `name` unless `indices` is an integer tensor of shape [batch_size, length], >= 0."""
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
        got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise ValueError(f"`{name}` must be an integer tensor, got {got}.")
    if tuple(indices.shape) != (batch_size, length):
        raise ValueError(f"`{name}` must have shape [{batch_size}, {length}], got {list(indices.shape)}.")
    if check_values and not is_torchdynamo_compiling() and indices.numel() and int(indices.min()) < 0:
        raise ValueError(f"`{name}` holds counts of earlier tokens, which cannot be negative.")


def count_source_occurrences(
    config: TinyTransformerConfig, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """The source's occurrence indices, which the encoder returns for the decoder's bias (None without one); checked
    before the encoder computes anything."""
    if not config.occurrence_bias:
        return None
    check_bias_backend(config, "occurrence_bias=True")
    if input_ids is None:
        raise ValueError("occurrence_bias=True counts repeated token ids: pass `input_ids`, not `inputs_embeds`.")
    return occurrence_indices(input_ids, attention_mask)


def decoder_occurrence_indices(
    given: torch.Tensor | None,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past_length,
    target_length: int,
) -> torch.Tensor:
    """The occurrence indices of the decoder's new tokens: those given (a step with a cache), or counted over
    `input_ids` when they are the whole sequence."""
    if given is not None:
        batch_size = given.shape[0] if input_ids is None else input_ids.shape[0]
        check_occurrence_indices(given, "decoder_occurrence_indices", batch_size, target_length)
        return given
    if input_ids is None:
        raise ValueError(
            "occurrence_bias=True counts repeated token ids: pass `decoder_input_ids`, not `decoder_inputs_embeds`."
        )
    if past_length:
        raise ValueError(
            "occurrence_bias=True: a decoding step with a cache sees only its new tokens, so pass "
            "`decoder_occurrence_indices`, theirs counted over every decoder token so far "
            "(`occurrence_indices(all_decoder_ids, last=new_tokens)`), as generate does."
        )
    # A 4-D mask is a caller's own attention pattern, not padding: every token counts.
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    return occurrence_indices(input_ids, mask)


def check_decoder_indices_wanted(config: TinyTransformerConfig, indices: torch.Tensor | None) -> None:
    """`decoder_occurrence_indices` passed to a model without the occurrence bias would be ignored: refused."""
    if indices is not None and not config.occurrence_bias:
        raise ValueError("`decoder_occurrence_indices` are for a model with `occurrence_bias=True`; this one has none.")


def encoder_outputs_sources(
    config: TinyTransformerConfig, encoder_outputs, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The source's occurrence indices and token ids the decoder's bias gets: the encoder's, or, for encoder outputs
    without them (a caller's states) given beside the source's ids, counted over those and those ids."""
    indices = getattr(encoder_outputs, "occurrence_indices", None)
    ids = getattr(encoder_outputs, "input_ids", None)
    if config.occurrence_bias and input_ids is not None:
        indices = occurrence_indices(input_ids, attention_mask) if indices is None else indices
        ids = input_ids if ids is None else ids
    return indices, ids


def check_pair_ids(decoder_ids: torch.Tensor | None, source_ids: torch.Tensor | None, source_length: int) -> None:
    """`ValueError` unless the ids that tell the pairs of equal tokens apart are there, of the source's length."""
    if decoder_ids is None:
        raise ValueError(
            "occurrence_bias_pairs other than 'all' compares the decoder's token ids with the source's: pass "
            "`decoder_input_ids`, not `decoder_inputs_embeds`."
        )
    if source_ids is None:
        raise ValueError(
            "occurrence_bias_pairs other than 'all' compares the decoder's token ids with the source's: pass "
            "`input_ids`, or `encoder_outputs` as the encoder returns them (with their `input_ids`)."
        )
    if source_ids.dim() != 2 or source_ids.shape[0] != decoder_ids.shape[0] or source_ids.shape[1] != source_length:
        raise ValueError(
            f"`encoder_outputs.input_ids` must have shape [{decoder_ids.shape[0]}, {source_length}], got "
            f"{list(source_ids.shape)}."
        )


def source_occurrence_indices(
    given: torch.Tensor | None, batch_size: int, source_length: int, check_values: bool = True
) -> torch.Tensor:
    """The source's occurrence indices, as the encoder returned them; `ValueError` if they are missing. Their values
    need checking once per input, as the encoder's mask's do (`check_values`)."""
    if given is None:
        raise ValueError(
            "occurrence_bias=True: the decoder compares occurrence indices with the source's; pass `input_ids`, or "
            "`encoder_outputs` as the encoder returns them (with their `occurrence_indices`)."
        )
    check_occurrence_indices(given, "encoder_outputs.occurrence_indices", batch_size, source_length, check_values)
    return given


class TinyTransformerOccurrenceBias(nn.Module):
    """B[h, i, j] = b_h(clip(o_j - r_i)) for a decoder query i and a source key j of the same token, and for any other
    pair b_h(other, first) where o_j = 0 and b_h(other, repeat) where o_j > 0 (`occurrence_bias_pairs="same_token"`:
    one b_h(other) for them all; `"all"`: b_h(clip(o_j - r_i)) for every pair): one learned bias per head added to the
    encoder-decoder attention scores. Shared by all the decoder's layers."""

    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        self.config = config
        self.other_rows = OCCURRENCE_OTHER_ROWS[config.occurrence_bias_pairs]
        self.bias = nn.Embedding(OCCURRENCE_DIFFERENCES + self.other_rows, config.num_attention_heads)

    def forward(
        self,
        decoder_indices: torch.Tensor,
        source_indices: torch.Tensor,
        decoder_ids: torch.Tensor | None = None,
        source_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[batch, query] and [batch, key] occurrence indices (and, for pairs of the same token only, the tokens'
        ids, of the same shapes) -> B as [batch, heads, query, key]."""
        check_bias_backend(self.config, "occurrence_bias=True")
        difference = source_indices[:, None, :] - decoder_indices[:, :, None]
        buckets = difference.clamp(-OCCURRENCE_MAX_DIFFERENCE, OCCURRENCE_MAX_DIFFERENCE) + OCCURRENCE_MAX_DIFFERENCE
        if self.other_rows:
            check_pair_ids(decoder_ids, source_ids, source_indices.shape[1])
            same_token = source_ids[:, None, :] == decoder_ids[:, :, None]
            other = torch.full_like(buckets, OCCURRENCE_DIFFERENCES)  # the rows after the differences: other tokens
            if self.other_rows == 2:
                other = other + (source_indices[:, None, :] > 0)  # a key that repeats an earlier copy of its value
            buckets = torch.where(same_token, buckets, other)
        # one-hot @ table, as the relative position bias does: a backward of one matrix product instead of a scatter.
        one_hot = F.one_hot(buckets, self.bias.num_embeddings).to(self.bias.weight.dtype)
        return (one_hot @ self.bias.weight).permute(0, 3, 1, 2)


@dataclass
class TinyTransformerEncoderOutput(BaseModelOutput):
    r"""
    occurrence_indices (`torch.LongTensor` of shape `[batch, source_length]`, *optional*):
        With `config.occurrence_bias`: how many earlier source tokens have each token's id, which the decoder's
        occurrence bias compares with its own (occurrences_tiny_transformer.py).
    input_ids (`torch.LongTensor` of shape `[batch, source_length]`, *optional*):
        With `config.occurrence_bias`: the source's token ids, with which the decoder tells the pairs of equal tokens
        (`occurrence_bias_pairs` other than `"all"`).
    """

    occurrence_indices: torch.LongTensor | None = None
    input_ids: torch.LongTensor | None = None


def encoder_output_from_tuple(outputs: tuple) -> TinyTransformerEncoderOutput:
    """Encoder outputs passed as a tuple (the encoder's with `return_dict=False`, its fields that are not None in
    order, or a caller's): the states, hidden states and attentions, then the integer tensors: the occurrence indices
    and the source's ids."""
    is_integer = [isinstance(item, torch.Tensor) and not item.is_floating_point() for item in outputs]
    integers = [item for item, flag in zip(outputs, is_integer) if flag]
    states = [item for item, flag in zip(outputs, is_integer) if not flag]
    return TinyTransformerEncoderOutput(*(states + [None] * 3)[:3], *integers[:2])
