"""Speed paths of TinyTransformer: each computes exactly what the plain code would, faster on the paths users run.

Each one stays only while `bench/speed_paths.py` shows that it pays (figures in bench/README.md):
- `apply_dropout`: CPU dropout from 16-bit random draws, keeping a boolean mask for the backward;
- `lean_generation_inputs`: generate()'s per-step inputs for the common case, without the general machinery;
- `written_slots`: an eager decoding step with a static cache attends to the written slots of its buffers only;
- `PreallocatedDynamicLayer`: generate()'s own dynamic cache writes each step's keys and values in place;
- `sdpa_backward_is_slow`: bf16 training on a CPU takes the eager attention, whose backward is faster there.

This file is copied next to the weights by `save_pretrained` (the model file imports it), so it imports only torch
and transformers.
"""

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import CacheLayerMixin, DynamicCache, DynamicLayer, EncoderDecoderCache, StaticLayer
from transformers.utils import is_torchdynamo_compiling

from .occurrences_tiny_transformer import occurrence_indices

# Keyword arguments generate() keeps between decoding steps that the forward does not take (as in transformers'
# general `prepare_inputs_for_generation`).
GENERATION_KWARGS_NOT_FOR_FORWARD = {"labels", "next_sequence_length", "is_first_iteration"}


def sdpa_backward_is_slow(query: torch.Tensor) -> bool:
    """Whether SDPA would run a bf16 backward on a CPU (autocast training, `--bf16`): torch's CPU flash-attention
    kernel takes 5-9x the eager attention's time there (torch 2.13, [64, 4, 51, 32]: 36 ms against 3.8 ms forward
    and backward; in fp32, and in bf16 without gradients, SDPA is the faster)."""
    return query.requires_grad and query.dtype == torch.bfloat16 and query.device.type == "cpu"


class MaskedScale(torch.autograd.Function):
    """y = x · keep / (1 - p) for a boolean `keep`, which is all the backward keeps (1 byte per element, where
    torch's CPU dropout keeps a float mask of 4): the same gradient, a quarter of the memory."""

    @staticmethod
    def forward(ctx, hidden_states: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, hidden_states, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad_output, 0.0).mul_(ctx.scale), None, None


def apply_dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability `p` and scale the others by 1 / (1 - p).

    On CPU, torch's dropout draws one Bernoulli sample per element and keeps a float mask for the backward. Here one
    64-bit random integer holds the 16-bit uniform draws of four elements, and an element is kept when its draw is at
    least round(p · 2¹⁶): p is rounded to a multiple of 2⁻¹⁶ (at most 7.7e-6 off); the backward keeps a boolean mask
    (`MaskedScale`). Other devices and compiled graphs have fused dropout kernels of their own and use `F.dropout`.
    """
    if not training or p == 0.0:
        return hidden_states
    if hidden_states.device.type != "cpu" or is_torchdynamo_compiling():
        return F.dropout(hidden_states, p=p, training=True)
    count = hidden_states.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=hidden_states.device).random_(-(2**63), 2**63 - 1)
    draws = words.view(torch.int16)[:count].view(hidden_states.shape)  # uniform over [-2¹⁵, 2¹⁵)
    keep = draws >= round(p * 2**16) - 2**15
    return MaskedScale.apply(hidden_states, keep, 1.0 / (1.0 - p))


def lean_generation_inputs(
    input_ids: torch.LongTensor,
    next_sequence_length: int | None,
    attention_mask: torch.Tensor | None,
    kwargs: dict,
    count_occurrences: bool = False,
) -> dict:
    """The forward inputs of one decoding step of an encoder-decoder model with a cache of any kind (or none), given
    generate()'s `model_kwargs`: the new decoder tokens, the encoder's mask, and the kwargs the forward takes.

    transformers' general `prepare_inputs_for_generation` also handles decoder-only models, input embeddings, device
    moves and remote code that still expects `cache_position`, none of which applies here, and builds a 4-D mask over
    a static cache's whole buffer at every step, which the decoder builds itself where it needs one (compiled graphs)
    and otherwise does without (`written_slots`). So the inputs pass through.
    """
    model_inputs = {key: value for key, value in kwargs.items() if key not in GENERATION_KWARGS_NOT_FOR_FORWARD}
    if count_occurrences:
        # With the occurrence bias: the new tokens' occurrence indices, counted over every decoder token so far (the
        # cache holds no ids to count).
        new_length = input_ids.shape[1] if next_sequence_length is None else next_sequence_length
        model_inputs["decoder_occurrence_indices"] = occurrence_indices(input_ids, last=new_length)
    if next_sequence_length is not None:
        input_ids = input_ids[:, -next_sequence_length:]  # the tokens the cache does not hold yet
    # A copy with the strides of its own shape, as transformers' version makes: the slice's strides grow with the
    # sequence, and a compiled forward guards on strides, so it would compile again at every step until it gives up.
    model_inputs["decoder_input_ids"] = input_ids.clone(memory_format=torch.contiguous_format)
    model_inputs["attention_mask"] = attention_mask  # the encoder's: cross-attention keeps masking its padding
    return model_inputs


def written_slots(
    layer: CacheLayerMixin, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values a decoding step attends to, given what a self-attention cache layer's `update` returned.

    A static layer returns its whole buffers, [batch, heads, max_cache_len, head_dim], slots not written yet included
    (zeros); a compiled graph keeps those fixed shapes and masks the empty slots. An eager step needs neither: when
    the decoder built no mask for it (one query, no padding: `causal_mask`), or a relative position bias over the
    written keys only, it attends to views of the written slots, so that the attention reads a growing prefix of the
    buffers instead of all of them behind a mask built at every step. Dynamic layers hold only what was written and
    pass through, as do masks over the whole buffer and masks that are not tensors (flex's `BlockMask`).
    """
    if not isinstance(layer, StaticLayer) or layer.is_sliding or is_torchdynamo_compiling():
        return key, value
    if attention_mask is None:
        length = int(layer.get_seq_length())
    elif isinstance(attention_mask, torch.Tensor):
        length = attention_mask.shape[-1]  # the bias's keys, or the whole buffer (then nothing is cut)
    else:
        return key, value
    return key[:, :, :length], value[:, :, :length]


# Each PreallocatedDynamicLayer's buffers, and the views of them it last set as its keys and values. Kept beside the
# layer rather than on it: transformers' exporters flatten every attribute of a cache layer, and a layer must hold
# what a DynamicLayer holds and nothing else (buffers hold unwritten positions). Weak keys: the entry goes with the
# layer; a copy of the layer has no entry and starts new buffers.
LAYER_BUFFERS: "weakref.WeakKeyDictionary[PreallocatedDynamicLayer, LayerBuffers]" = weakref.WeakKeyDictionary()


@dataclass
class LayerBuffers:
    keys: torch.Tensor  # [batch, heads, capacity, head_dim]
    values: torch.Tensor
    key_view: torch.Tensor | None = None  # the layer's `keys` as update() last set them: the written positions
    value_view: torch.Tensor | None = None


# Below this many elements per buffer, concatenating is the cheaper update: its copy of the cache costs less than the
# in-place write's extra views (d_model 128, 130 positions: equal at batch 4, torch.cat 2.2x faster at batch 1, 14x
# slower at batch 32; bench/README.md).
IN_PLACE_MIN_ELEMENTS = 2**16


class PreallocatedDynamicLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys` and `values` are views of the first positions of buffers allocated for a whole
    `generate` call (`capacity` positions, twice what is needed when a cache outgrows them), so that a decoding step
    writes its own position instead of copying the whole cache into a new tensor (DynamicLayer's `torch.cat`: 19% of
    a greedy step's time at batch 32, bench/README.md).

    It holds and returns what a DynamicLayer does, and nothing else: `keys` and `values` are [batch, heads, written,
    head_dim] (views; unwritten positions are never part of them; the buffers are kept in LAYER_BUFFERS). Whatever
    replaces them (`reorder_cache`, `batch_select_indices`, `batch_repeat_interleave`, `reset`, an assignment) leaves
    tensors that are not the views it set, and the next update copies them back into its buffers where they fit (new
    buffers otherwise); `crop` leaves a prefix of the buffers, written over by the next steps. Unlike DynamicLayer's,
    the tensors an earlier step returned may then change; nothing in transformers keeps them. generate() uses it for
    greedy decoding and sampling (`preallocate_generation_cache`); beam search, which reorders the whole cache at
    every step, keeps DynamicLayer. With gradients (writing into a buffer would change tensors the backward kept) and
    in compiled or exported graphs it updates as DynamicLayer does.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.in_place = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            batch, heads, _, head_dim = key_states.shape
            self.in_place = batch * heads * head_dim * self.capacity >= IN_PLACE_MIN_ELEMENTS
        grad = torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad)
        if not self.in_place or grad or is_torchdynamo_compiling():
            return super().update(key_states, value_states, *args, **kwargs)
        written = self.get_seq_length()
        needed = written + key_states.shape[-2]
        buffers = LAYER_BUFFERS.get(self)
        if (
            buffers is None
            or buffers.key_view is not self.keys
            or buffers.value_view is not self.values
            or buffers.keys.shape[2] < needed
            or (buffers.keys.is_inference() and not torch.is_inference_mode_enabled())
        ):
            buffers = self.refill(buffers, key_states, value_states, written, needed)
        buffers.keys.narrow(2, written, needed - written).copy_(key_states)
        buffers.values.narrow(2, written, needed - written).copy_(value_states)
        self.keys = buffers.key_view = buffers.keys.narrow(2, 0, needed)
        self.values = buffers.value_view = buffers.values.narrow(2, 0, needed)
        return self.keys, self.values

    def refill(
        self,
        buffers: LayerBuffers | None,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        written: int,
        needed: int,
    ) -> LayerBuffers:
        """Buffers holding what `keys` and `values` hold now, with room for `needed` positions of states like these:
        the layer's own again when they fit (after beam search's reorder, say: one copy per step, as DynamicLayer's
        concatenation makes, instead of new buffers at every step), else new ones of `capacity` positions."""
        if buffers is None or not all(
            fits(buffer, held, states, needed)
            for buffer, held, states in (
                (buffers.keys, self.keys, key_states),
                (buffers.values, self.values, value_states),
            )
        ):
            if needed > self.capacity:
                self.capacity = 2 * needed
            shape = key_states.shape[:2] + (self.capacity,) + key_states.shape[3:]
            buffers = LayerBuffers(key_states.new_empty(shape), value_states.new_empty(shape))
        for buffer, held in ((buffers.keys, self.keys), (buffers.values, self.values)):
            if written and held.data_ptr() != buffer.data_ptr():  # a prefix of the buffer itself (crop) stays
                buffer.narrow(2, 0, written).copy_(held)
        LAYER_BUFFERS[self] = buffers
        return buffers


def fits(buffer: torch.Tensor, held: torch.Tensor, states: torch.Tensor, needed: int) -> bool:
    """Whether `buffer` can take `held` and then states like `states`, up to `needed` positions: same batch, heads,
    head width, dtype and device, room enough, writable in the present inference mode, and `held` either a prefix
    view of it (its first positions, with its strides) or a tensor that shares no memory with it."""
    if buffer.shape[2] < needed or buffer.shape[:2] + buffer.shape[3:] != states.shape[:2] + states.shape[3:]:
        return False
    if buffer.dtype != states.dtype or buffer.device != states.device:
        return False
    if buffer.is_inference() and not torch.is_inference_mode_enabled():
        return False  # in-place writes to an inference tensor are refused outside inference mode
    if held.numel() == 0 or held.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr():
        return True
    return held.data_ptr() == buffer.data_ptr() and held.stride() == buffer.stride()


def preallocate_generation_cache(cache: object, capacity: int) -> None:
    """Give the self-attention cache that generate() made for a call (a plain `DynamicCache`, nothing written yet)
    `PreallocatedDynamicLayer`s of `capacity` positions; caches of other kinds, and offloaded ones, stay as they
    are."""
    if not isinstance(cache, EncoderDecoderCache):
        return
    self_attention_cache = cache.self_attention_cache
    if type(self_attention_cache) is not DynamicCache or getattr(self_attention_cache, "offloading", False):
        return
    self_attention_cache.layers = [
        PreallocatedDynamicLayer(capacity) if type(layer) is DynamicLayer and not layer.is_initialized else layer
        for layer in self_attention_cache.layers
    ]
