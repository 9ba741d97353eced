"""Configuration of TinyTransformer, a compact encoder-decoder Transformer.

This file is copied next to the weights by `save_pretrained`, so it imports only transformers and huggingface_hub
(a dependency of transformers).
"""

from huggingface_hub.errors import StrictDataclassError
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned", "relative")
NORM_POSITIONS = ("pre", "post")
# How a checkpoint stores its projection weights: "out_in" as `nn.Linear` ([out_features, in_features], every
# checkpoint saved since the projections became `nn.Linear`s), "in_out" as transformers' `Conv1D` (the earlier layout,
# whose `config.json` has no `projection_layout` field).
PROJECTION_LAYOUTS = ("out_in", "in_out")
# Which pairs of decoder token and source token the occurrence bias compares (occurrences_tiny_transformer.py).
OCCURRENCE_BIAS_PAIRS = ("same_token_and_first", "same_token", "all")
# Sizes: each a positive integer.
SIZE_FIELDS = (
    "vocab_size",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "num_attention_heads",
    "ffn_dim",
    "max_position_embeddings",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
)
# Fields that decide what function the saved weights compute: a saved `config.json` must state each of them, since a
# default silently standing in for a missing one (say `activation_function`) would give wrong outputs, not an error.
ARCHITECTURE_FIELDS = SIZE_FIELDS[:7] + (
    "activation_function",
    "position_embedding_type",
    "norm_position",
    "tie_word_embeddings",
)
# ... and, for relative positions, what decides their buckets.
RELATIVE_POSITION_FIELDS = ("relative_attention_num_buckets", "relative_attention_max_distance")


def check_is_object(config_dict) -> dict:
    """`config_dict`, if what `config.json` held is a JSON object; otherwise `ValueError`."""
    if not isinstance(config_dict, dict):
        raise ValueError(f"Invalid TinyTransformer `config.json`: expected a JSON object, got {config_dict!r:.80}.")
    return config_dict


class TinyTransformerConfig(PretrainedConfig):
    r"""
    Configuration of a [`TinyTransformerModel`] / [`TinyTransformerForConditionalGeneration`].

    Every field is validated when the config is built (and so when `config.json` is loaded): a bad value raises
    `ValueError` naming the field and its allowed range. The defaults give a model of about 0.6M parameters that
    learns the built-in synthetic tasks in minutes on a CPU.

    Args:
        vocab_size (`int`, defaults to 128): number of token ids; ids must lie in `[0, vocab_size)`.
        d_model (`int`, defaults to 128): width of every hidden state (the `d` of the design document).
        encoder_layers (`int`, defaults to 2): number of encoder layers (self-attention + feed-forward).
        decoder_layers (`int`, defaults to 2): number of decoder layers (causal self-attention + encoder-decoder
            attention + feed-forward).
        num_attention_heads (`int`, defaults to 4): heads of every attention; must divide `d_model`.
        ffn_dim (`int`, defaults to 512): inner width of the position-wise feed-forward network.
        max_position_embeddings (`int`, defaults to 256): longest sequence (source or target) the model accepts with
            `"sinusoidal"` or `"learned"` positions (the rows of their table); `"relative"` positions have no limit.
        dropout (`float`, defaults to 0.1): dropout on embeddings and on each sub-layer's output, in [0, 1).
        attention_dropout (`float`, defaults to 0.0): dropout on the attention weights α, in [0, 1).
        activation_function (`str`, defaults to `"gelu"`): feed-forward activation, any key of
            `transformers.activations.ACT2FN` (`"relu"`, `"gelu"`, `"silu"`, ...).
        position_embedding_type (`str`, defaults to `"sinusoidal"`): `"sinusoidal"` (fixed, as in the original
            Transformer; token embeddings are then scaled by √d_model to match them), `"learned"` (a trained
            table of `max_position_embeddings` rows, initialised like the token embeddings, which are not scaled) or
            `"relative"`: no position vectors; every attention adds a learned bias per head that depends on the
            bucketed distance between query and key (T5's scheme, in encoder self-attention, decoder
            self-attention and encoder-decoder attention), so a model can run on sequences longer than any it saw.
            Needs attn_implementation "sdpa" or "eager" (flash attention cannot add a bias).
        relative_attention_num_buckets (`int`, defaults to 8): distance buckets of `"relative"` positions, an even
            number >= 4: distances below a quarter of it (half, in the decoder's one-sided self-attention) get a
            bucket each, longer ones share logarithmically wider buckets. T5 uses 32.
        relative_attention_max_distance (`int`, defaults to 6): distances from this one on share the last
            bucket; greater than half of `relative_attention_num_buckets`. T5 uses 128. The defaults are local:
            trained on sequences of 1-25 integers, copy and reverse held 94-96% exact match on 26-50 with 8 / 6,
            against 36% (copy) with T5's 32 / 128, as distances never seen in training no longer get buckets of
            their own (bench/README.md).
        relative_attention_reference_length (`int`, *optional*): `"relative"` positions only: the most tokens
            (`</s>` included) of a source seen in training. On a longer source of n tokens the encoder-decoder
            position bias is multiplied by (log n / log reference_length)², so that the source token a head points
            at keeps its share of the attention among more keys than training ever spread it over (attention over n
            keys is diluted as n grows; scalable softmax, Nakanishi 2025). Sources no longer than it are unchanged.
            Reverse trained on 1-50 integers, on a run of one value inside 51-100 random ones: 68% exact match
            without, 100% with (bench/README.md, "Typed inputs"). `None` (default): no scaling; train.py sets it.
        occurrence_bias (`bool`, defaults to `False`): encoder-decoder attention adds a learned bias per head that
            depends on how many times the source token and the decoder's token occurred before in their sequences
            (occurrences_tiny_transformer.py), so that the model can count repeated values: sort, trained on 1-50
            integers, on 2-3 distinct values repeated: 57.5-72% exact match without (5,000 steps), 98-100% with
            (1,500 steps; bench/README.md, "Sort with repeats").
            Needs `input_ids` (the counts are of token ids) and attn_implementation "sdpa" or "eager". A
            `config.json` saved before the field existed has none and means `False`.
        occurrence_bias_pairs (`str`, defaults to `"same_token_and_first"`): which pairs of decoder query and source
            key the occurrence difference biases, and how the others are biased. `"same_token_and_first"`: the pairs
            of equal tokens by their difference; a pair of different tokens by whether the source key is its value's
            first occurrence or repeats an earlier copy (two learned biases per head), so that a head looking for the
            next value to write can see each distinct value once, however often the source repeats it (sort trained
            on 1-25, a run of one value inside random numbers at 26-50: 100% exact match, against 88% with one bias
            for every pair of different tokens). `"same_token"`: the pairs of equal tokens by their difference, every
            other pair getting one learned bias per head; `"all"`: every pair by its difference (on 2-3 distinct
            values repeated, 98.0-100% against 100% on every seed of five), the first version, which a
            `config.json` with the occurrence bias but without this field means.
        norm_position (`str`, defaults to `"pre"`): `"pre"` puts LayerNorm before each sub-layer (and one after
            the last layer), `"post"` after each residual addition, as in the original paper.
        tie_word_embeddings (`bool`, defaults to `True`): share one matrix between the encoder's and decoder's
            token embeddings and the output projection.
        projection_layout (`str`, defaults to `"out_in"`): how the checkpoint stores its projection weights:
            `"out_in"`, as `nn.Linear` ([out_features, in_features]), which every model builds and `save_pretrained`
            writes; or `"in_out"` ([in_features, out_features]), the layout of checkpoints saved before the
            projections were `nn.Linear`s. A `config.json` without the field is such a checkpoint, and
            `from_pretrained` transposes its projection weights as it loads them.
        initializer_range (`float`, defaults to 0.02): standard deviation of the normal initialisation, > 0.
        use_cache (`bool`, defaults to `True`): return and reuse key/value states during generation.
        pad_token_id, bos_token_id, eos_token_id, decoder_start_token_id (`int`): special token ids, each in
            `[0, vocab_size)` (or `None`, except `pad_token_id`); defaults 0, 1, 2 and `bos_token_id`.

    Example:

    ```python
    >>> from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration
    >>> config = TinyTransformerConfig(vocab_size=120, d_model=64, num_attention_heads=4)
    >>> model = TinyTransformerForConditionalGeneration(config)
    ```
    """

    model_type = "tiny_transformer"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    # `num_hidden_layers` is what caches read; `get_text_config(decoder=True)` maps it to the decoder's count.
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "encoder_layers"}

    vocab_size: int = 128
    d_model: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2
    num_attention_heads: int = 4
    ffn_dim: int = 512
    max_position_embeddings: int = 256
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_function: str = "gelu"
    position_embedding_type: str = "sinusoidal"
    relative_attention_num_buckets: int = 8
    relative_attention_max_distance: int = 6
    relative_attention_reference_length: int | None = None
    occurrence_bias: bool = False
    occurrence_bias_pairs: str = "same_token_and_first"
    norm_position: str = "pre"
    tie_word_embeddings: bool = True
    projection_layout: str = "out_in"
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = None
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs):
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        super().__post_init__(**kwargs)
        self.validate_tiny_transformer()

    @classmethod
    def _dict_from_json_file(cls, json_file) -> dict:
        # transformers 5.17 writes a key into what `config.json` holds before `from_dict` sees it: a file that holds
        # no JSON object is refused here, as `from_dict` refuses it, instead of failing there with a TypeError.
        return check_is_object(super()._dict_from_json_file(json_file))

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "TinyTransformerConfig":
        """`PreTrainedConfig.from_dict`, through which every saved `config.json` is loaded. Stricter: the file must
        state every field in `ARCHITECTURE_FIELDS`, and a missing or invalid field raises `ValueError` naming it."""
        check_is_object(config_dict)
        required = ARCHITECTURE_FIELDS
        if config_dict.get("position_embedding_type") == "relative":
            required += RELATIVE_POSITION_FIELDS
        missing = [name for name in required if name not in config_dict and name not in kwargs]
        if missing:
            raise ValueError(f"Invalid TinyTransformer `config.json`: missing field(s) {', '.join(missing)}.")
        if config_dict.get("occurrence_bias") and "occurrence_bias_pairs" not in {**config_dict, **kwargs}:
            # Written by every save since the bias was narrowed to pairs of equal tokens: the bias before biased all.
            config_dict = {**config_dict, "occurrence_bias_pairs": "all"}
        if "projection_layout" not in config_dict and "projection_layout" not in kwargs:
            # Written by every save since the projections became `nn.Linear`s: a file without it has the earlier one.
            config_dict = {**config_dict, "projection_layout": "in_out"}
        try:
            return super().from_dict(config_dict, **kwargs)
        except (ValueError, StrictDataclassError) as error:
            # StrictDataclassError: transformers 5.17 type-checks the base class's own fields (`is_encoder_decoder`).
            raise ValueError(f"Invalid TinyTransformer `config.json`: {error}") from error

    @property
    def head_dim(self) -> int:
        """Width of one attention head, `d_model // num_attention_heads` (the `d` in S = QKᵀ/√d)."""
        return self.d_model // self.num_attention_heads

    @property
    def position_limit(self) -> int | None:
        """Longest sequence the positions describe: `max_position_embeddings` for the sinusoidal or learned table,
        None (no limit) for relative positions."""
        return None if self.position_embedding_type == "relative" else self.max_position_embeddings

    def validate_tiny_transformer(self) -> None:
        """Raise `ValueError` naming the first field whose value is out of its allowed range."""
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.d_model % self.num_attention_heads != 0:
            # The design document's multi-head split: each head gets d_model / heads dimensions.
            raise ValueError(
                f"`d_model` ({self.d_model}) must be divisible by `num_attention_heads` ({self.num_attention_heads})."
            )
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
            raise ValueError(
                "`relative_attention_num_buckets` must be an even number of at least 4, got "
                f"{self.relative_attention_num_buckets}."
            )
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(
                f"`relative_attention_max_distance` ({self.relative_attention_max_distance}) must be greater than half "
                f"of `relative_attention_num_buckets` ({self.relative_attention_num_buckets})."
            )
        reference = self.relative_attention_reference_length
        if reference is not None and (isinstance(reference, bool) or not isinstance(reference, int) or reference < 2):
            raise ValueError(
                f"`relative_attention_reference_length` must be None or an integer of at least 2, got {reference!r}."
            )
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1), got {value!r}.")
        if isinstance(self.initializer_range, bool) or not isinstance(self.initializer_range, (int, float)):
            raise ValueError(f"`initializer_range` must be a positive number, got {self.initializer_range!r}.")
        if not self.initializer_range > 0:
            raise ValueError(f"`initializer_range` must be a positive number, got {self.initializer_range!r}.")
        if not isinstance(self.activation_function, str) or self.activation_function not in ACT2FN:
            raise ValueError(
                f"`activation_function` must be one of {sorted(ACT2FN)}, got {self.activation_function!r}."
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"`position_embedding_type` must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}."
            )
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"`norm_position` must be one of {NORM_POSITIONS}, got {self.norm_position!r}.")
        if self.occurrence_bias_pairs not in OCCURRENCE_BIAS_PAIRS:
            raise ValueError(
                f"`occurrence_bias_pairs` must be one of {OCCURRENCE_BIAS_PAIRS}, got {self.occurrence_bias_pairs!r}."
            )
        if self.projection_layout not in PROJECTION_LAYOUTS:
            raise ValueError(
                f"`projection_layout` must be one of {PROJECTION_LAYOUTS}, got {self.projection_layout!r}."
            )
        for name in ("tie_word_embeddings", "use_cache", "is_encoder_decoder", "occurrence_bias"):
            # A JSON string such as "false" would otherwise count as True.
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be true or false, got {getattr(self, name)!r}.")
        if not self.is_encoder_decoder:
            raise ValueError("`is_encoder_decoder` must be true: TinyTransformer is an encoder-decoder model.")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is None and name != "pad_token_id":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"`{name}` must be a token id in [0, vocab_size={self.vocab_size}), got {value!r}.")


__all__ = ["TinyTransformerConfig"]
