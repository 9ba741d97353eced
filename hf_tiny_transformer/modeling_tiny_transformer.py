"""TinyTransformer: a compact encoder-decoder Transformer for transformers 5.x.

The attention is that of "Attention Is All You Need" (Vaswani et al. 2017, arXiv:1706.03762), written as the
equations of docs/design.md in the repository:

    Q = X W_q,  K = X W_k,  V = X W_v                         (§1 step 1, one fused projection)
    S = Q Kᵀ / √d                                              (§1 step 2, d = head width)
    α = softmax(S) row by row,  O = α V                        (§1 steps 2-3)
    heads split before S and recombined after O                (§2, multi-head attention)
    K = H W_k, V = H W_v from encoder states H, Q = S W_q      (§3, encoder-decoder attention)
    Y = S + O'                                                 (§3 step 4, residual around it)

Every projection is an `nn.Linear`, which stores the equations' matrix transposed ([out, in], as transformers'
in-tree models do) and computes X (W_qᵀ)ᵀ = X W_q; checkpoints saved with the earlier [in, out] layout are converted
as they load (checkpoint_checks_tiny_transformer.py).

The encoder uses bidirectional self-attention with padding masks, the decoder causal self-attention followed by
encoder-decoder attention. Attention runs through transformers' attention interface (eager, SDPA, flex, flash);
eager is the equations above written out and returns α for interpretability.

In reading order: token embeddings, attention, the residual sub-layer and the feed-forward network, the two
layers, the pre-trained base, the stack that the encoder and the decoder share, the encoder, the decoder and the two
public models. Sibling modules hold the attention masks, the absolute positions' vectors, the relative positions'
biases, the occurrence bias, the speed paths, the input checks and the checkpoint checks; `save_pretrained` copies them all next to the
weights, so that `trust_remote_code=True` loads without this package.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .absolute_positions_tiny_transformer import (
    TinyTransformerSinusoidalPositions,
    absolute_position_embedding,
    sinusoidal_position_table,
    token_positions,
)
from .checkpoint_checks_tiny_transformer import load_checked
from .configuration_tiny_transformer import TinyTransformerConfig
from .fast_paths_tiny_transformer import (
    apply_dropout,
    lean_generation_inputs,
    preallocate_generation_cache,
    sdpa_backward_is_slow,
    written_slots,
)
from .input_checks_tiny_transformer import (
    check_attention_mask,
    check_encoder_states,
    check_ids_or_embeddings,
    check_labels_shape,
    check_length,
    check_token_ids,
)
from .masks_tiny_transformer import MASKED_SCORE, add_position_bias, causal_keys, causal_mask, padding_mask
from .occurrences_tiny_transformer import (
    TinyTransformerEncoderOutput,
    TinyTransformerOccurrenceBias,
    check_decoder_indices_wanted,
    count_source_occurrences,
    decoder_occurrence_indices,
    encoder_output_from_tuple,
    encoder_outputs_sources,
    source_occurrence_indices,
)
from .relative_positions_tiny_transformer import TinyTransformerDecoderPositionBias, TinyTransformerEncoderPositionBias

# transformers renamed the key/value cache argument and output field from `past_key_values` to `cache` during 5.x
# (5.17 has the old name, 5.24 the new one). The forwards take `cache`; `past_key_values` is renamed to it, with the
# FutureWarning of the in-tree models where it is deprecated and silently where it is still the current name.
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
accepts_old_cache_name = deprecate_kwarg(
    "past_key_values", version="5.40.0" if CACHE_FIELD == "cache" else "5.0.0", new_name="cache"
)

# Everything `from_pretrained(..., trust_remote_code=True)` needs to find the classes in a saved checkpoint.
AUTO_MAP = {
    "AutoConfig": "configuration_tiny_transformer.TinyTransformerConfig",
    "AutoModel": "modeling_tiny_transformer.TinyTransformerModel",
    "AutoModelForSeq2SeqLM": "modeling_tiny_transformer.TinyTransformerForConditionalGeneration",
}


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads `[start, y_1, ..., y_{n-1}]` to predict `[y_1, ..., y_n]`."""
    decoder_input_ids = labels.new_empty(labels.shape)
    decoder_input_ids[:, 0] = decoder_start_token_id
    decoder_input_ids[:, 1:] = labels[:, :-1]
    # -100 marks label positions the loss ignores; the decoder must still read a real token there.
    return decoder_input_ids.masked_fill_(decoder_input_ids == -100, pad_token_id)


# ---------------------------------------------------------------------------------------------------- token embeddings
class TinyTransformerScaledEmbedding(nn.Embedding):
    """Token embedding on the scale of the position vectors added to it: × √d_model for unit-amplitude sinusoidal
    ones (Vaswani et al. §3.4), × 1 for learned ones (initialised like the tokens) and relative ones. Inside the
    module, so that `get_input_embeddings()(ids)` gives valid `inputs_embeds`."""

    def __init__(self, config: TinyTransformerConfig):
        super().__init__(config.vocab_size, config.d_model)
        self.embed_scale = math.sqrt(config.d_model) if config.position_embedding_type == "sinusoidal" else 1.0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings = super().forward(input_ids)
        return embeddings * self.embed_scale if self.embed_scale != 1.0 else embeddings


# ----------------------------------------------------------------------------------------------------------- attention
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The design document's attention, written out. query/key/value: [batch, heads, length, head_dim]; the mask in
    any form of masks_tiny_transformer.py. Returns the output as [batch, query, heads, head_dim] and α as
    [batch, heads, query, key]."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # S = QKᵀ/√d
    query_length, key_length = scores.shape[-2:]
    if attention_mask is None and module.is_causal and query_length > 1:
        attention_mask = causal_keys(query_length, key_length, scores.device)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, MASKED_SCORE)
        else:
            scores = scores + attention_mask[..., :key_length]  # + B, with relative positions
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # α = row softmax(S)
    weights = apply_dropout(weights, dropout, module.training)
    output = torch.matmul(weights, value)  # O = αV
    return output.transpose(1, 2).contiguous(), weights


class TinyTransformerAttention(nn.Module):
    """Multi-head attention: self-attention (encoder, causal decoder) or encoder-decoder attention.

    Self-attention projects Q, K and V with one fused matrix [W_q W_k W_v]; encoder-decoder attention projects Q
    from the decoder states and K, V with one fused matrix [W_k W_v] from the encoder states, once per generation
    (they are kept in the cross-attention cache).
    """

    def __init__(self, config: TinyTransformerConfig, layer_idx: int, is_causal: bool, is_cross_attention: bool):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        # Read by transformers' SDPA and flash kernels when no mask is passed: without it they assume causal.
        self.is_causal = is_causal
        self.is_cross_attention = is_cross_attention
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        if is_cross_attention:
            self.q_proj = nn.Linear(config.d_model, config.d_model)
            self.kv_proj = nn.Linear(config.d_model, 2 * config.d_model)
        else:
            self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, query_length, _ = hidden_states.shape
        if self.is_cross_attention:
            # Q = S W_q: [batch, query, d] -> [batch, heads, query, head_dim]
            query = self.q_proj(hidden_states).view(batch_size, query_length, self.num_heads, self.head_dim)
            query = query.transpose(1, 2)
            if cache is not None and cache.is_updated.get(self.layer_idx):
                # K and V depend only on the encoder states: computed at the first step, reused afterwards.
                cached = cache.cross_attention_cache.layers[self.layer_idx]
                key, value = cached.keys, cached.values
            else:
                # [K V] = H [W_k W_v]: [batch, source, 2d] -> 2 x [batch, heads, source, head_dim]
                key_value = self.kv_proj(encoder_hidden_states)
                key_value = key_value.view(batch_size, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
                key, value = key_value.unbind(0)
                if cache is not None:
                    key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            # [Q K V] = X [W_q W_k W_v]: [batch, length, 3d] -> 3 x [batch, heads, length, head_dim]
            query_key_value = self.qkv_proj(hidden_states)
            query_key_value = query_key_value.view(batch_size, query_length, 3, self.num_heads, self.head_dim)
            query, key, value = query_key_value.permute(2, 0, 3, 1, 4).unbind(0)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
                key, value = written_slots(cache.layers[self.layer_idx], key, value, attention_mask)

        implementation = self.config._attn_implementation
        slow_sdpa = implementation == "sdpa" and sdpa_backward_is_slow(query)
        if kwargs.get("output_attentions") or implementation == "eager" or slow_sdpa:
            # Only the eager path materialises α (and it trains faster than SDPA in bf16 on a CPU); it understands the
            # eager and the SDPA mask formats, not the masks built for flash (2-D) or flex (BlockMask).
            if implementation not in ("eager", "sdpa"):
                raise ValueError(
                    f"`output_attentions=True` needs attn_implementation 'eager' or 'sdpa', got {implementation!r}."
                )
            attention_function: Callable = eager_attention_forward
        else:
            attention_function = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            if isinstance(attention_mask, torch.Tensor) and attention_mask.is_floating_point():
                # SDPA takes a float mask (a position bias, built in float32) only in the query's dtype (autocast).
                attention_mask = attention_mask.to(query.dtype)
        dropout = self.attention_dropout if self.training else 0.0
        output, weights = attention_function(
            self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling
        )
        # Recombine the heads: [batch, query, heads, head_dim] -> [batch, query, d], then W_o.
        output = self.out_proj(output.reshape(batch_size, query_length, -1))
        return output, weights


# ------------------------------------------------------------------------------------------------------------ layers
class TinyTransformerResidual(nn.Module):
    """The LayerNorm, dropout and residual connection around one sub-layer f:

    pre-norm:   x + dropout(f(LayerNorm(x)))
    post-norm:  LayerNorm(x + dropout(f(x)))        (Vaswani et al. §5.4; the design document's Y = S + O')
    """

    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        self.normalize_before = config.norm_position == "pre"
        self.dropout = config.dropout
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden_states: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        output = sublayer(self.layer_norm(hidden_states) if self.normalize_before else hidden_states)
        hidden_states = hidden_states + apply_dropout(output, self.dropout, self.training)
        return hidden_states if self.normalize_before else self.layer_norm(hidden_states)


class TinyTransformerFeedForward(nn.Module):
    """Position-wise feed-forward network: W_2 · act(W_1 x)."""

    def __init__(self, config: TinyTransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.activation = ACT2FN[config.activation_function]
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class TinyTransformerEncoderLayer(GradientCheckpointingLayer):
    """Bidirectional self-attention, then feed-forward, each inside a residual sub-layer."""

    def __init__(self, config: TinyTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TinyTransformerAttention(config, layer_idx, is_causal=False, is_cross_attention=False)
        self.self_attn_residual = TinyTransformerResidual(config)
        self.feed_forward = TinyTransformerFeedForward(config)
        self.feed_forward_residual = TinyTransformerResidual(config)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        hidden_states = self.self_attn_residual(
            hidden_states, lambda normed: self.self_attn(normed, attention_mask, **kwargs)[0]
        )
        return self.feed_forward_residual(hidden_states, self.feed_forward)


class TinyTransformerDecoderLayer(GradientCheckpointingLayer):
    """Causal self-attention, encoder-decoder attention (Y = S + O'), then feed-forward, each inside a residual
    sub-layer."""

    def __init__(self, config: TinyTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TinyTransformerAttention(config, layer_idx, is_causal=True, is_cross_attention=False)
        self.self_attn_residual = TinyTransformerResidual(config)
        self.encoder_attn = TinyTransformerAttention(config, layer_idx, is_causal=False, is_cross_attention=True)
        self.encoder_attn_residual = TinyTransformerResidual(config)
        self.feed_forward = TinyTransformerFeedForward(config)
        self.feed_forward_residual = TinyTransformerResidual(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        cache: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        self_attention_cache = cache.self_attention_cache if cache is not None else None
        hidden_states = self.self_attn_residual(
            hidden_states,
            lambda normed: self.self_attn(normed, attention_mask, cache=self_attention_cache, **kwargs)[0],
        )
        # Encoder-decoder attention: Q from the decoder states S, K and V from the encoder states H; Y = S + O'.
        hidden_states = self.encoder_attn_residual(
            hidden_states,
            lambda normed: self.encoder_attn(
                normed, encoder_attention_mask, encoder_hidden_states, cache=cache, **kwargs
            )[0],
        )
        return self.feed_forward_residual(hidden_states, self.feed_forward)


# ------------------------------------------------------------------------------------------------- pre-trained base
class TinyTransformerPreTrainedModel(PreTrainedModel):
    """Weight initialisation, capability flags, checked loading and Hub-ready saving of the TinyTransformer models."""

    config_class = TinyTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TinyTransformerEncoderLayer", "TinyTransformerDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear and Embedding: normal(0, initializer_range); LayerNorm: ones, zeros
        if isinstance(module, TinyTransformerSinusoidalPositions):
            # Non-persistent, so not in the checkpoint: from_pretrained leaves it uninitialised unless rebuilt here.
            init.copy_(module.weight, sinusoidal_position_table(*module.weight.shape))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, which raises `ValueError` naming file and tensor for a damaged weight
        file, tensors that do not fit `config.json` and NaN/Inf weights (see checkpoint_checks_tiny_transformer.py).
        Missing weights are initialised and reported as by every transformers model."""
        return load_checked(super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)

    def tie_weights(self, **kwargs) -> None:
        super().tie_weights(**kwargs)
        base = self.base_model  # the encoder-decoder, or a stack (which has nothing to share)
        if (
            isinstance(base, TinyTransformerModel)
            and base.decoder.embed_tokens.weight is base.get_input_embeddings().weight
        ):
            # Tied, both stacks use one embedding module, not two modules holding one parameter: FSDP2 shards a
            # parameter with the modules of its group, and Accelerate gives the input embedding (and the tied output
            # projection) a group of their own. The decoder's module, left in the root group, held a second copy:
            # torch 2.11 trained the two copies apart (the saved embeddings differed and loaded untied), torch 2.13
            # refuses the model at its first forward. Done after transformers' own tying, which loading relies on.
            base.set_input_embeddings(base.get_input_embeddings())

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Each class registers one Auto class; list all three so the checkpoint loads through any of them.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        self.config.projection_layout = "out_in"  # the weights are `nn.Linear`s, whatever config built the model
        return super().save_pretrained(save_directory, *args, **kwargs)


# -------------------------------------------------------------------------------------------------- encoder, decoder
class TinyTransformerStack(TinyTransformerPreTrainedModel):
    """What the encoder and the decoder are both made of (one class serves both in T5, `T5Stack`): token embeddings,
    absolute position vectors or a relative position bias, `num_layers` layers of `layer_class`, and a final LayerNorm
    when pre-norm. The forwards, which differ, are the encoder's and the decoder's own."""

    def __init__(
        self,
        config: TinyTransformerConfig,
        layer_class: type[GradientCheckpointingLayer],
        num_layers: int,
        position_bias_class: type[nn.Module],
        occurrence_bias_class: type[nn.Module] | None = None,
    ):
        super().__init__(config)
        self.embed_tokens = TinyTransformerScaledEmbedding(config)
        self.embed_positions = absolute_position_embedding(config)
        relative = config.position_embedding_type == "relative"
        self.position_bias = position_bias_class(config) if relative else None
        use_occurrences = config.occurrence_bias and occurrence_bias_class is not None
        self.occurrence_bias = occurrence_bias_class(config) if use_occurrences else None
        self.dropout = config.dropout
        self.layers = nn.ModuleList(layer_class(config, i) for i in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(config.d_model) if config.norm_position == "pre" else None
        self.post_init()


class TinyTransformerEncoder(TinyTransformerStack):
    """Token embeddings (+ position vectors), then `encoder_layers` encoder layers (and a final LayerNorm when
    pre-norm)."""

    _can_record_outputs = {"hidden_states": TinyTransformerEncoderLayer, "attentions": TinyTransformerAttention}

    def __init__(self, config: TinyTransformerConfig):
        super().__init__(config, TinyTransformerEncoderLayer, config.encoder_layers, TinyTransformerEncoderPositionBias)

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TinyTransformerEncoderOutput:
        config = self.config
        kwargs.pop("cache", None)  # generate() in transformers 5.17 hands a user's decoder cache to the encoder too
        check_ids_or_embeddings(
            input_ids, inputs_embeds, config.vocab_size, config.d_model, "input_ids", "inputs_embeds"
        )
        if input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch_size, source_length = inputs_embeds.shape[:2]
        check_attention_mask(attention_mask, "attention_mask", batch_size, source_length)
        check_length(source_length, config.position_limit, "input_ids")
        indices = count_source_occurrences(config, input_ids, attention_mask)  # None without the occurrence bias

        position_ids = token_positions(attention_mask, source_length, inputs_embeds.device)
        hidden_states = inputs_embeds
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(position_ids)
        hidden_states = apply_dropout(hidden_states, self.dropout, self.training)
        self_attention_mask = padding_mask(config, inputs_embeds, attention_mask)
        if self.position_bias is not None:
            position_bias = self.position_bias(source_length, inputs_embeds.device)
            self_attention_mask = add_position_bias(self_attention_mask, position_bias, is_causal=False)

        for layer in self.layers:
            hidden_states = layer(hidden_states, self_attention_mask, **kwargs)
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        ids = input_ids if indices is not None else None  # the decoder's occurrence bias tells equal tokens by them
        return TinyTransformerEncoderOutput(last_hidden_state=hidden_states, occurrence_indices=indices, input_ids=ids)


class TinyTransformerDecoder(TinyTransformerStack):
    """Token embeddings (+ position vectors), then `decoder_layers` decoder layers attending to the encoder states
    (and a final LayerNorm when pre-norm)."""

    _can_record_outputs = {
        "hidden_states": TinyTransformerDecoderLayer,
        "attentions": OutputRecorder(TinyTransformerAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(TinyTransformerAttention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: TinyTransformerConfig):
        super().__init__(
            config,
            TinyTransformerDecoderLayer,
            config.decoder_layers,
            TinyTransformerDecoderPositionBias,
            TinyTransformerOccurrenceBias,
        )

    @merge_with_config_defaults
    @capture_outputs
    @accepts_old_cache_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        occurrence_indices: torch.LongTensor | None = None,
        encoder_occurrence_indices: torch.LongTensor | None = None,
        encoder_input_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        config = self.config
        check_ids_or_embeddings(
            input_ids, inputs_embeds, config.vocab_size, config.d_model, "decoder_input_ids", "decoder_inputs_embeds"
        )
        if input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch_size, target_length = inputs_embeds.shape[:2]
        check_encoder_states(encoder_hidden_states, batch_size, config.d_model)
        source_length = encoder_hidden_states.shape[1]

        if not use_cache:
            cache = None
        elif cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        elif not isinstance(cache, EncoderDecoderCache):
            raise ValueError(f"The decoder cache must be an EncoderDecoderCache, got {type(cache).__name__}.")
        past_length = cache.get_seq_length() if cache is not None else 0
        # Once the cache holds the encoder-decoder K and V, the encoder side was checked at the generation's first step.
        encoder_side_checked = cache is not None and bool(cache.is_updated.get(0))
        check_attention_mask(
            encoder_attention_mask, "attention_mask", batch_size, source_length, check_values=not encoder_side_checked
        )
        if not is_torchdynamo_compiling():
            total_length = int(past_length) + target_length
            check_length(total_length, config.position_limit, "decoder_input_ids")
            check_attention_mask(attention_mask, "decoder_attention_mask", batch_size, total_length, allow_4d=True)

        position_ids = torch.arange(target_length, device=inputs_embeds.device)[None] + past_length
        hidden_states = inputs_embeds
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(position_ids)
        hidden_states = apply_dropout(hidden_states, self.dropout, self.training)
        self_attention_mask = causal_mask(config, inputs_embeds, attention_mask, cache)
        cross_attention_mask = padding_mask(config, inputs_embeds, encoder_attention_mask, encoder_hidden_states)
        cross_bias = None
        if self.position_bias is not None:
            # The keys: every cached position and the new ones (a mask over a static cache covers its empty slots too).
            key_length = past_length + target_length if self_attention_mask is None else self_attention_mask.shape[-1]
            source_positions = token_positions(encoder_attention_mask, source_length, inputs_embeds.device)
            self_bias, cross_bias = self.position_bias(position_ids, key_length, source_positions)
            self_attention_mask = add_position_bias(self_attention_mask, self_bias, is_causal=True)
        if self.occurrence_bias is not None:
            occurrence_bias = self.occurrence_bias(
                decoder_occurrence_indices(occurrence_indices, input_ids, attention_mask, past_length, target_length),
                source_occurrence_indices(
                    encoder_occurrence_indices, batch_size, source_length, check_values=not encoder_side_checked
                ),
                input_ids,
                encoder_input_ids,
            )
            cross_bias = occurrence_bias if cross_bias is None else cross_bias + occurrence_bias
        if cross_bias is not None:
            cross_attention_mask = add_position_bias(cross_attention_mask, cross_bias, is_causal=False)

        for layer in self.layers:
            # encoder_hidden_states positional, so that gradient checkpointing propagates its gradient.
            hidden_states = layer(
                hidden_states, self_attention_mask, encoder_hidden_states, cross_attention_mask, cache=cache, **kwargs
            )
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, **{CACHE_FIELD: cache})


# ----------------------------------------------------------------------------------------------------- public models
class TinyTransformerModel(TinyTransformerPreTrainedModel):
    """The bare encoder-decoder: returns the decoder's last hidden states (no language-model head)."""

    _tied_weights_keys = {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}

    def __init__(self, config: TinyTransformerConfig):
        super().__init__(config)
        config.validate_tiny_transformer()  # fields may have been edited after the config was built
        self.encoder = TinyTransformerEncoder(config)
        self.decoder = TinyTransformerDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    @can_return_tuple
    @accepts_old_cache_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        decoder_occurrence_indices: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        r"""
        decoder_occurrence_indices (`torch.LongTensor` of shape `[batch, target_length]`, *optional*):
            With `config.occurrence_bias`, for a decoding step with a cache: how many earlier decoder tokens have each
            new token's id, counted over every decoder token so far (`generate` passes them). Without a cache the
            decoder counts them itself.
        """
        check_decoder_indices_wanted(self.config, decoder_occurrence_indices)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = encoder_output_from_tuple(encoder_outputs)
        source_indices, source_ids = encoder_outputs_sources(self.config, encoder_outputs, input_ids, attention_mask)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "Pass `decoder_input_ids` (or `labels` to TinyTransformerForConditionalGeneration, which shifts them)."
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            occurrence_indices=decoder_occurrence_indices,
            encoder_occurrence_indices=source_indices,
            encoder_input_ids=source_ids,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{CACHE_FIELD: getattr(decoder_outputs, CACHE_FIELD)},
        )


class TinyTransformerForConditionalGeneration(TinyTransformerPreTrainedModel, GenerationMixin):
    """The encoder-decoder with a language-model head: `labels` give a loss, `generate` decodes."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: TinyTransformerConfig):
        super().__init__(config)
        self.model = TinyTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Used by `DataCollatorForSeq2Seq(model=...)` to build `decoder_input_ids` in the data loader."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: EncoderDecoderCache | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,  # the cache's name in transformers < 5.24
        **kwargs,
    ) -> dict:
        """The inputs of one decoding step: transformers' general version for input embeddings, and otherwise (token
        ids) the lean one of fast_paths_tiny_transformer.py."""
        cache = cache if cache is not None else past_key_values
        kwargs[CACHE_FIELD] = cache
        if kwargs.get("decoder_inputs_embeds") is not None:
            return super().prepare_inputs_for_generation(
                input_ids, next_sequence_length=next_sequence_length, attention_mask=attention_mask, **kwargs
            )
        return lean_generation_inputs(
            input_ids, next_sequence_length, attention_mask, kwargs, count_occurrences=self.config.occurrence_bias
        )

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ) -> None:
        """generate()'s cache, as transformers makes it; when that is its default dynamic cache (the caller passed
        none) and no beam search reorders it at every step, its self-attention layers write each step in place
        (`PreallocatedDynamicLayer`)."""
        callers_cache = model_kwargs.get(CACHE_FIELD)
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )
        if callers_cache is None and generation_config.num_beams == 1:
            preallocate_generation_cache(model_kwargs.get(CACHE_FIELD), max_cache_length)

    @can_return_tuple
    @accepts_old_cache_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        decoder_occurrence_indices: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `[batch, target_length]`, *optional*):
            Target ids in `[0, vocab_size)`, or -100 for positions the loss ignores. When given and no
            `decoder_input_ids` are, the decoder reads the labels shifted right behind `decoder_start_token_id`.
        decoder_occurrence_indices (`torch.LongTensor` of shape `[batch, target_length]`, *optional*):
            See `TinyTransformerModel.forward`.
        num_items_in_batch (keyword, *optional*):
            Passed by the Trainer: the number of non-ignored label tokens in the whole accumulated batch. The loss is
            then the token sum divided by it, so gradient accumulation matches one large batch exactly.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            check_token_ids(labels, "labels", self.config.vocab_size, allow_ignore_index=True)
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            decoder_occurrence_indices=decoder_occurrence_indices,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)

        loss = None
        if labels is not None:
            check_labels_shape(labels, tuple(logits.shape[:2]))
            # Cross-entropy from logits over the non-ignored tokens: a mean, or, when the Trainer counts the tokens
            # of the whole accumulated batch, a sum over that count (so accumulation matches one large batch).
            token_losses = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().long(), reduction="none")
            count = (labels != -100).sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
            loss = token_losses.sum() / torch.as_tensor(count, device=logits.device)

        # Every field of the base model's output but its last hidden states, which the head turned into logits.
        fields = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        return Seq2SeqLMOutput(loss=loss, logits=logits, **fields)


__all__ = [
    "TinyTransformerPreTrainedModel",
    "TinyTransformerModel",
    "TinyTransformerForConditionalGeneration",
]
