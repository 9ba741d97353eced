"""Speed paths of TinyTransformer: each computes exactly what the plain code would, faster on the paths users run.

Each one stays only while `bench/speed_paths.py` shows that it pays (figures in bench/README.md):
- `TinyTransformerProjection`: y = xW + b with W stored [in, out], as the design document writes XW;
- `apply_dropout`: CPU dropout from 16-bit random draws, keeping a boolean mask for the backward;
- `InPlaceAppendLayer` / `append_in_place`: a self-attention cache that appends each decoding step in place;
- `lean_generation_inputs`: generate()'s per-step inputs for the common case, without the general machinery;
- `sdpa_backward_is_slow`: bf16 training on a CPU takes the eager attention, whose backward is faster there.

This file is copied next to the weights by `save_pretrained` (the model file imports it), so it imports only torch
and transformers.
"""

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer
from transformers.pytorch_utils import Conv1D
from transformers.utils import is_torchdynamo_compiling

# Keyword arguments generate() keeps between decoding steps that the forward does not take (as in transformers'
# general `prepare_inputs_for_generation`).
GENERATION_KWARGS_NOT_FOR_FORWARD = {"labels", "next_sequence_length", "is_first_iteration"}


def sdpa_backward_is_slow(query: torch.Tensor) -> bool:
    """Whether SDPA would run a bf16 backward on a CPU (autocast training, `--bf16`): torch's CPU flash-attention
    kernel takes 5-9x the eager attention's time there (torch 2.13, [64, 4, 51, 32]: 36 ms against 3.8 ms forward
    and backward; in fp32, and in bf16 without gradients, SDPA is the faster)."""
    return query.device.type == "cpu" and query.dtype == torch.bfloat16 and query.requires_grad


class TinyTransformerProjection(Conv1D):
    """y = x W + b with W stored as [in_features, out_features], the way the design document writes Q = X W_q.

    On a CPU this layout multiplies faster than `nn.Linear`'s [out, in] for the few rows of a decoding step (1 to 32
    tokens) and as fast for training's thousands. It is transformers' `Conv1D` (the projection layer of GPT-2, with
    the same weight layout), made to accept inputs of any memory layout.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(nf=out_features, nx=in_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = torch.addmm(self.bias, hidden_states.reshape(-1, self.nx), self.weight)
        return output.view(*hidden_states.shape[:-1], self.nf)


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


class InPlaceAppendLayer(DynamicLayer):
    """A self-attention cache layer that appends each step's keys and values in place.

    transformers' `DynamicLayer` concatenates the new token onto the whole cache at every step, copying all of it.
    This layer writes the new keys and values into a buffer with room to spare (grown 64 positions at a time, so at
    most 63 are unused) and returns views of its filled part, so a step copies only its own token. When anything
    outside replaces `keys`/`values` (cropping, offloading, batch selection), the next update copies them into a new
    buffer; beam reordering reorders the buffer. Used under `torch.no_grad()`/`inference_mode()` only: with autograd
    on, writing into a buffer that earlier steps read would break their backward, so those updates concatenate as
    `DynamicLayer` does.
    """

    growth = 64  # positions added per reallocation

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None
        self.views: tuple[torch.Tensor, torch.Tensor] | None = None  # the (keys, values) this layer last returned

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad):
            return super().update(key_states, value_states, *args, **kwargs)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.keys.shape[2] if self.keys.dim() == 4 else 0  # lazy initialisation leaves an empty 1-D tensor
        filled = length + key_states.shape[2]
        if not self.holds_its_views() or filled > self.key_buffer.shape[2]:
            # First update, a full buffer, or `keys` replaced from outside: a new buffer around what `keys` holds.
            capacity = -(-filled // self.growth) * self.growth
            self.key_buffer = self.reallocate(self.keys, key_states, length, capacity)
            self.value_buffer = self.reallocate(self.values, value_states, length, capacity)
        # `narrow` along the position axis: the cheapest view to make, as this runs for every layer at every step.
        self.key_buffer.narrow(2, length, key_states.shape[2]).copy_(key_states)
        self.value_buffer.narrow(2, length, value_states.shape[2]).copy_(value_states)
        self.keep_views(filled)
        return self.keys, self.values

    def holds_its_views(self) -> bool:
        """Whether `keys` and `values` are still the buffer views this layer returned (nothing replaced them)."""
        return self.views is not None and self.keys is self.views[0] and self.values is self.views[1]

    def keep_views(self, length: int) -> None:
        """`keys` and `values` become the first `length` positions of the buffers."""
        self.keys, self.values = self.key_buffer.narrow(2, 0, length), self.value_buffer.narrow(2, 0, length)
        self.views = (self.keys, self.values)

    @staticmethod
    def reallocate(old: torch.Tensor, new: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
        """A buffer of `capacity` positions shaped like `new`, starting with the first `length` positions of `old`."""
        batch_size, num_heads, _, head_dim = new.shape
        buffer = new.new_empty(batch_size, num_heads, capacity, head_dim)
        if length:
            buffer.narrow(2, 0, length).copy_(old.narrow(2, 0, length))
        return buffer

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.holds_its_views():
            length = self.keys.shape[2]
            self.key_buffer = self.key_buffer.index_select(0, beam_idx.to(self.key_buffer.device))
            self.value_buffer = self.value_buffer.index_select(0, beam_idx.to(self.value_buffer.device))
            self.keep_views(length)
        else:
            super().reorder_cache(beam_idx)


def append_in_place(cache: Cache) -> None:
    """Swap the empty `DynamicLayer`s of a self-attention cache (as generate() and the decoder create them) for
    `InPlaceAppendLayer`s. Layers already holding states, and every other kind of cache, are left as they are."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return
    for index, layer in enumerate(layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            layers[index] = InPlaceAppendLayer()


def lean_generation_inputs(
    input_ids: torch.LongTensor,
    next_sequence_length: int | None,
    attention_mask: torch.Tensor | None,
    kwargs: dict,
) -> dict:
    """The forward inputs of one decoding step of an encoder-decoder model with a dynamic cache (or none), given
    generate()'s `model_kwargs`: the new decoder tokens, the encoder's mask, and the kwargs the forward takes.

    transformers' general `prepare_inputs_for_generation` also handles decoder-only models, input embeddings, static
    caches (for which it builds 4-D masks), device moves and remote code that still expects `cache_position`; none of
    that applies here, so the inputs pass through.
    """
    model_inputs = {key: value for key, value in kwargs.items() if key not in GENERATION_KWARGS_NOT_FOR_FORWARD}
    if next_sequence_length is not None:
        input_ids = input_ids[:, -next_sequence_length:]  # the tokens the cache does not hold yet
    model_inputs["decoder_input_ids"] = input_ids
    model_inputs["attention_mask"] = attention_mask  # the encoder's: cross-attention keeps masking its padding
    return model_inputs
