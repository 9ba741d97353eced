"""TinyTransformer on ONNX Runtime: export to ONNX, and greedy decoding there that gives `generate`'s tokens.

    python -m hf_tiny_transformer.onnx_tiny_transformer <model folder or Hub id> <output folder>

`export_onnx(model, folder)` traces the model's own forward (torch.export, through torch's dynamo ONNX exporter) into
two graphs, so that every position scheme, mask and cache behaves as in `generate`:
- `first_step.onnx`: the encoder and the decoder's first step.
    inputs   input_ids, attention_mask [batch, source] (int64), decoder_input_ids [batch, 1] (the start token)
    outputs  logits [batch, vocab] of the next token, and the cache: for each decoder layer i
             present.{i}.decoder.key / .value [batch, heads, 1, head_dim] (self-attention), and
             present.{i}.encoder.key / .value [batch, heads, source, head_dim] (encoder-decoder attention's K and V,
             computed once per input from the encoder states, which the graph does not return);
- `next_step.onnx`: one decoding step with the cache.
    inputs   decoder_input_ids [batch, 1], attention_mask [batch, source], and for each layer i
             past_key_values.{i}.decoder.key / .value [batch, heads, past, head_dim] and
             past_key_values.{i}.encoder.key / .value [batch, heads, source, head_dim]
    outputs  logits [batch, vocab], and present.{i}.decoder.key / .value [batch, heads, past + 1, head_dim].
A model with the occurrence bias (`config.occurrence_bias`, sort's recipe) also needs the tokens' occurrence indices
(how many equal tokens came before each): `first_step.onnx` returns the source's, source_occurrence_indices [batch,
source], and `next_step.onnx` takes them back with the new token's, decoder_occurrence_indices [batch, 1] (int64),
after the cache inputs, and, where the bias compares equal tokens (`occurrence_bias_pairs` other than `"all"`), the
source's ids, input_ids [batch, source]; the generator below counts the new token's over the tokens generated so far.
The folder also gets the model's `config.json` and `generation_config.json` (special ids, `max_new_tokens`).

`OnnxGreedyGenerator(folder).generate(input_ids, attention_mask)` then decodes on ONNX Runtime as
`model.generate(input_ids, attention_mask=attention_mask)` does with greedy search: the same tokens (the logits agree to
float rounding, which decides a token only where two logits tie to it), the same `max_new_tokens`, and rows that
reached `eos_token_id` padded with `pad_token_id` until every row has. No torch runs while it decodes: a step is one
call of ONNX Runtime, which is where it gains on `generate` at small batches (bench/onnx_runtime.py).

This module needs the `onnx` extra (onnx, onnxruntime, onnxscript) and is not imported by the package itself.
"""

import argparse
import gc
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from .configuration_tiny_transformer import TinyTransformerConfig
from .modeling_tiny_transformer import CACHE_FIELD, TinyTransformerForConditionalGeneration
from .occurrences_tiny_transformer import TinyTransformerEncoderOutput

try:
    import onnxruntime
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hf_tiny_transformer.onnx_tiny_transformer needs ONNX Runtime: pip install 'hf-tiny-transformer[onnx]'"
    ) from error

FIRST_STEP_FILE = "first_step.onnx"
NEXT_STEP_FILE = "next_step.onnx"
# The graphs trace the eager attention (the design document's equations written out, the same function as SDPA):
# traced SDPA becomes more ONNX operators (its scale applied to Q and K apart, guards against fully masked rows), and
# a decoding step ran 0.39 ms against 0.24 ms on ONNX Runtime (default size, 64 source tokens, one thread). Opset 23's
# fused Attention operator is not used: ONNX Runtime 1.32 refuses its broadcast [batch, 1, 1, source] padding mask.
TRACED_ATTENTION = "eager"
# What `generate` decodes where neither max_new_tokens nor max_length is set (transformers 5.24,
# GenerationMixin._prepare_generated_length).
DEFAULT_NEW_TOKENS = 20
# Generation settings under which `generate` does more than greedy search with max_new_tokens and eos: the generator
# refuses a generation config that sets any of them away from its default, rather than decode differently.
NOT_GREEDY_SETTINGS = (
    "do_sample",
    "num_beams",
    "num_return_sequences",
    "min_length",
    "min_new_tokens",
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "suppress_tokens",
    "begin_suppress_tokens",
    "exponential_decay_length_penalty",
    "penalty_alpha",
    "guidance_scale",
    "stop_strings",
    "max_time",
)


# The occurrence bias's inputs of next_step.onnx (the first also an output of first_step.onnx; the last only where
# the bias compares equal tokens only).
OCCURRENCE_NAMES = ("source_occurrence_indices", "decoder_occurrence_indices", "input_ids")
OCCURRENCE_SOURCE_NAME = OCCURRENCE_NAMES[:1]


def occurrence_inputs(config) -> int:
    """How many of OCCURRENCE_NAMES next_step.onnx takes: none without the occurrence bias, the two indices, and the
    source's ids where the bias compares equal tokens (`occurrence_bias_pairs` other than `"all"`)."""
    if not config.occurrence_bias:
        return 0
    return 2 + (config.occurrence_bias_pairs != "all")


def cache_names(prefix: str, layers: int, side: str) -> list[str]:
    """`{prefix}.{i}.{side}.key` and `.value` for each decoder layer i: the graphs' cache tensors, in order."""
    return [f"{prefix}.{layer}.{side}.{part}" for layer in range(layers) for part in ("key", "value")]


def layer_tensors(cache: DynamicCache) -> list[torch.Tensor]:
    """The keys and values of each layer of `cache`, in the order of `cache_names`."""
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


def layer_pairs(tensors: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer from tensors in the order of `cache_names`."""
    return list(zip(tensors[0::2], tensors[1::2]))


class FirstStep(nn.Module):
    """The encoder and the decoder's first step, as `generate`'s first forward computes them."""

    def __init__(self, model: TinyTransformerForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # The encoder first, as generate runs it; its output also holds the source's occurrence indices, if any.
        encoder_outputs = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        output = self.model(
            encoder_outputs=encoder_outputs,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=True,
        )
        cache = getattr(output, CACHE_FIELD)
        indices = encoder_outputs.occurrence_indices
        return (
            output.logits[:, -1],
            *layer_tensors(cache.self_attention_cache),
            *layer_tensors(cache.cross_attention_cache),
            *(() if indices is None else (indices,)),
        )


class NextStep(nn.Module):
    """One cached decoding step, as `generate`'s later forwards compute it: the caches come in as tensors and are
    handed to the model as the `EncoderDecoderCache` generate keeps between steps."""

    def __init__(self, model: TinyTransformerForConditionalGeneration):
        super().__init__()
        self.model = model
        self.layers = model.config.decoder_layers

    def forward(
        self, decoder_input_ids: torch.Tensor, attention_mask: torch.Tensor, *cache_tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        self_attention = cache_tensors[: 2 * self.layers]
        cross_attention = cache_tensors[2 * self.layers : 4 * self.layers]
        # With the occurrence bias: the source's occurrence indices and the new token's, after the caches (and the
        # source's ids, where the bias compares equal tokens only).
        source_indices, decoder_indices, source_ids = (*cache_tensors[4 * self.layers :], None, None, None)[:3]
        cache = EncoderDecoderCache(
            DynamicCache(layer_pairs(self_attention)), DynamicCache(layer_pairs(cross_attention))
        )
        # The cross-attention reads K and V from the cache; the encoder states are only looked at for their shape.
        batch_size, source_length = attention_mask.shape
        encoder_states = cross_attention[0].new_zeros(()).expand(batch_size, source_length, self.model.config.d_model)
        output = self.model(
            encoder_outputs=TinyTransformerEncoderOutput(
                encoder_states, occurrence_indices=source_indices, input_ids=source_ids
            ),
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=True,
            decoder_occurrence_indices=decoder_indices,
            **{CACHE_FIELD: cache},
        )
        return output.logits[:, -1], *layer_tensors(getattr(output, CACHE_FIELD).self_attention_cache)


def check_exportable(model: nn.Module) -> None:
    """Raise `ValueError` unless `model` is a float32 TinyTransformerForConditionalGeneration with a decoder start
    token."""
    if not isinstance(model, TinyTransformerForConditionalGeneration):
        raise ValueError(
            "export_onnx takes a TinyTransformerForConditionalGeneration, got "
            f"{type(model).__name__} (merge a PEFT adapter into the model first: `merge_and_unload()`)."
        )
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"export_onnx exports float32 weights, got {dtype}; export `model.float()`.")
    if model.config.decoder_start_token_id is None:
        raise ValueError(
            "export_onnx needs `config.decoder_start_token_id` (or `bos_token_id`), the decoder's first input."
        )


def check_greedy(generation_config: GenerationConfig) -> None:
    """Raise `ValueError` if `generation_config` asks `generate` for more than greedy search (see NOT_GREEDY_SETTINGS)."""
    defaults = GenerationConfig()
    changed = [
        f"{name}={getattr(generation_config, name)!r}"
        for name in NOT_GREEDY_SETTINGS
        if getattr(generation_config, name, None) != getattr(defaults, name, None)
    ]
    if changed:
        raise ValueError(
            f"The generation config sets {', '.join(changed)}: the ONNX Runtime generator decodes greedily, with "
            "max_new_tokens and eos_token_id only. Reset them in the model's generation_config before exporting."
        )


def export_onnx(
    model: TinyTransformerForConditionalGeneration, output_dir: str | Path, opset_version: int | None = None
) -> list[Path]:
    """Write `first_step.onnx`, `next_step.onnx`, `config.json` and `generation_config.json` of `model` to
    `output_dir` (see the module's docstring) and return the two graphs' paths.

    Every position scheme exports, with or without the occurrence bias. Batch size, source length and cached length
    are dynamic. The trace runs the model in eval mode with the eager attention (TRACED_ATTENTION); its mode and
    attention implementation are restored afterwards. `opset_version` defaults to torch's exporter's own.
    """
    check_exportable(model)
    check_greedy(model.generation_config)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not a folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    layers, device = config.decoder_layers, model.device
    # Example inputs for the trace: two rows, the second padded, of five source tokens and three cached ones.
    # Sizes of 0 and 1 are avoided: torch.export would take them for constants.
    input_ids = torch.full((2, 5), config.pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 3:] = 0
    decoder_input_ids = torch.full((2, 1), config.decoder_start_token_id, dtype=torch.long, device=device)
    batch, source, past = (torch.export.Dim(name) for name in ("batch", "source", "past"))
    first_path, next_path = output_dir / FIRST_STEP_FILE, output_dir / NEXT_STEP_FILE
    was_training, implementation = model.training, model.config._attn_implementation
    model.set_attn_implementation(TRACED_ATTENTION)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The exporter warns that each dynamic dimension's name "will not be used, since it shares the same shape
            # constraints with another axis", naming the dimension itself; the graphs do carry the names.
            warnings.filterwarnings("ignore", message="# The axis name")
            first_step = FirstStep(model).eval()
            first_outputs = first_step(input_ids, attention_mask, decoder_input_ids)
            torch.onnx.export(
                first_step,
                (input_ids, attention_mask, decoder_input_ids),
                first_path,
                input_names=["input_ids", "attention_mask", "decoder_input_ids"],
                output_names=[
                    "logits",
                    *cache_names("present", layers, "decoder"),
                    *cache_names("present", layers, "encoder"),
                    *OCCURRENCE_SOURCE_NAME[: config.occurrence_bias],
                ],
                dynamic_shapes=({0: batch, 1: source}, {0: batch, 1: source}, {0: batch}),
                opset_version=opset_version,
                external_data=False,
                verbose=False,
            )
            self_attention = [tensor.repeat(1, 1, 3, 1) for tensor in first_outputs[1 : 1 + 2 * layers]]
            cross_attention = list(first_outputs[1 + 2 * layers : 1 + 4 * layers])
            # The source's occurrence indices, a new token's (two copies before it), and the source's ids.
            occurrences = [*first_outputs[1 + 4 * layers :], torch.full_like(decoder_input_ids, 2), input_ids]
            occurrences = occurrences[: occurrence_inputs(config)]
            torch.onnx.export(
                NextStep(model).eval(),
                (decoder_input_ids, attention_mask, *self_attention, *cross_attention, *occurrences),
                next_path,
                input_names=[
                    "decoder_input_ids",
                    "attention_mask",
                    *cache_names("past_key_values", layers, "decoder"),
                    *cache_names("past_key_values", layers, "encoder"),
                    *OCCURRENCE_NAMES[: occurrence_inputs(config)],
                ],
                output_names=["logits", *cache_names("present", layers, "decoder")],
                dynamic_shapes=(
                    {0: batch},
                    {0: batch, 1: source},
                    tuple(
                        [{0: batch, 2: past}] * (2 * layers)
                        + [{0: batch, 2: source}] * (2 * layers)
                        + [{0: batch, 1: source}, {0: batch}, {0: batch, 1: source}][: occurrence_inputs(config)]
                    ),
                ),
                opset_version=opset_version,
                external_data=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
        model.set_attn_implementation(implementation)
    config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    return [first_path, next_path]


def as_int64(array, name: str) -> np.ndarray:
    """`array` (numpy, a CPU torch tensor or nested lists) as a [batch, length] int64 numpy array."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"`{name}` must have shape [batch, length] with at least one of each, got {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise ValueError(f"`{name}` must hold integers, got dtype {array.dtype}.")
    return np.ascontiguousarray(array, dtype=np.int64)


class OnnxGreedyGenerator:
    """Greedy decoding of a model exported by `export_onnx`, on ONNX Runtime.

    Args:
        folder: the export's folder (its two graphs, `config.json` and `generation_config.json`).
        intra_op_num_threads: ONNX Runtime's threads per graph call; `None` (default) takes ONNX Runtime's own
            choice (one per physical core). For one sequence of a small model, 1 is the fastest.
        providers: ONNX Runtime execution providers, in order of preference (default: the CPU).
    """

    def __init__(
        self,
        folder: str | Path,
        intra_op_num_threads: int | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ):
        folder = Path(folder)
        missing = [name for name in (FIRST_STEP_FILE, NEXT_STEP_FILE) if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"{str(folder)!r} is not an export of export_onnx: it lacks {', '.join(missing)}.")
        if intra_op_num_threads is not None and intra_op_num_threads < 1:
            raise ValueError(f"intra_op_num_threads must be None or >= 1, got {intra_op_num_threads}.")
        self.config = TinyTransformerConfig.from_pretrained(folder)
        self.generation_config = GenerationConfig.from_pretrained(folder)
        check_greedy(self.generation_config)
        options = onnxruntime.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = intra_op_num_threads
        self.first_step = onnxruntime.InferenceSession(folder / FIRST_STEP_FILE, options, providers=list(providers))
        self.next_step = onnxruntime.InferenceSession(folder / NEXT_STEP_FILE, options, providers=list(providers))
        layers = self.config.decoder_layers
        self.self_attention_inputs = cache_names("past_key_values", layers, "decoder")
        self.cross_attention_inputs = cache_names("past_key_values", layers, "encoder")

    def max_new_tokens(self, max_new_tokens: int | None) -> int:
        """As `generate` resolves it: the argument, else the generation config's `max_new_tokens`, else its
        `max_length` less the one start token, else transformers' default of DEFAULT_NEW_TOKENS new tokens (which
        `generate` caps at `max_position_embeddings` tokens in all)."""
        generation = self.generation_config
        if max_new_tokens is None:
            max_new_tokens = generation.max_new_tokens
        if max_new_tokens is None and generation.max_length is not None:
            max_new_tokens = generation.max_length - 1
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS + 1, self.config.max_position_embeddings) - 1
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
        return max_new_tokens

    def check_inputs(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        """The checks the model's forward makes, before ONNX Runtime could fail on them with an index error."""
        vocab_size = self.config.vocab_size
        if input_ids.min() < 0 or input_ids.max() >= vocab_size:
            bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)][0]
            raise ValueError(f"`input_ids` contains id {bad}, outside the vocabulary [0, {vocab_size}).")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids`, {input_ids.shape}, got {attention_mask.shape}."
            )
        if not np.isin(attention_mask, (0, 1)).all():
            raise ValueError("`attention_mask` must hold only 1 (token) and 0 (padding).")
        self.check_length(input_ids.shape[1], "input_ids")

    def check_length(self, length: int, name: str) -> None:
        """As the model's forward: an absolute position model refuses sequences longer than its position table."""
        limit = self.config.position_limit
        if limit is not None and length > limit:
            raise ValueError(
                f"`{name}` reaches position {length}, beyond `max_position_embeddings` ({limit}); shorten the input, "
                "or use a model with position_embedding_type='relative', which has no length limit."
            )

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int | None = None) -> np.ndarray:
        """The tokens of greedy `model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=...)`.

        Args:
            input_ids: [batch, source] token ids (numpy, a torch tensor or lists), padded where rows differ in length.
            attention_mask: [batch, source], 1 for tokens and 0 for padding; `None`: every position is a token (as
                in `generate`, which does not infer it from pad ids for an encoder-decoder model).
            max_new_tokens: tokens to generate at most; `None`: the generation config's, as in `generate`.

        Returns:
            int64 [batch, 1 + generated]: the start token, then each row's tokens, `pad_token_id` after its
            `eos_token_id`; decoding stops when every row has reached eos or after `max_new_tokens`.
        """
        input_ids = as_int64(input_ids, "input_ids")
        attention_mask = (
            np.ones_like(input_ids) if attention_mask is None else as_int64(attention_mask, "attention_mask")
        )
        max_new_tokens = self.max_new_tokens(max_new_tokens)
        self.check_inputs(input_ids, attention_mask)
        generation = self.generation_config
        eos = generation.eos_token_id
        eos = np.array([] if eos is None else [eos] if isinstance(eos, int) else list(eos), dtype=np.int64)
        pad = generation.pad_token_id if generation.pad_token_id is not None else (eos[0] if len(eos) else 0)
        start = generation.decoder_start_token_id
        start = self.config.decoder_start_token_id if start is None else start

        batch_size = input_ids.shape[0]
        tokens = np.full((batch_size, 1 + max_new_tokens), pad, dtype=np.int64)
        tokens[:, 0] = start
        outputs = self.first_step.run(
            None, {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": tokens[:, :1]}
        )
        layers = self.config.decoder_layers
        logits, self_attention = outputs[0], outputs[1 : 1 + 2 * layers]
        # The encoder-decoder attention's K and V: computed by the first step, the same at every later one (and so
        # are the source's occurrence indices, with the occurrence bias).
        cross_attention = outputs[1 + 2 * layers : 1 + 4 * layers]
        feed = {"attention_mask": attention_mask, **dict(zip(self.cross_attention_inputs, cross_attention))}
        if self.config.occurrence_bias:
            feed[OCCURRENCE_NAMES[0]] = outputs[1 + 4 * layers]
        if occurrence_inputs(self.config) == 3:
            feed[OCCURRENCE_NAMES[2]] = input_ids
        unfinished = np.ones(batch_size, dtype=bool)
        for step in range(1, 1 + max_new_tokens):
            next_tokens = np.where(unfinished, logits.argmax(-1), pad)
            tokens[:, step] = next_tokens
            unfinished &= ~np.isin(next_tokens, eos)
            if not unfinished.any() or step == max_new_tokens:
                break
            self.check_length(step + 1, "decoder_input_ids")  # where generate's forward would refuse it too
            feed["decoder_input_ids"] = tokens[:, step : step + 1]
            if self.config.occurrence_bias:  # how many of the tokens before the new one equal it
                earlier = tokens[:, :step] == tokens[:, step : step + 1]
                feed[OCCURRENCE_NAMES[1]] = earlier.sum(axis=1, keepdims=True).astype(np.int64)
            feed.update(zip(self.self_attention_inputs, self_attention))
            logits, *self_attention = self.next_step.run(None, feed)
        return tokens[:, : step + 1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Export a TinyTransformer checkpoint to ONNX (first_step.onnx, next_step.onnx) for "
        "hf_tiny_transformer.onnx_tiny_transformer.OnnxGreedyGenerator."
    )
    parser.add_argument("model", help="a folder written by save_pretrained / train.py, or a Hub id")
    parser.add_argument("output_dir", help="the folder to write the graphs and configs to")
    parser.add_argument("--opset_version", type=int, default=None, help="ONNX opset (default: torch's exporter's)")
    args = parser.parse_args(argv)
    model = TinyTransformerForConditionalGeneration.from_pretrained(args.model)
    for path in export_onnx(model, args.output_dir, args.opset_version):
        print(path)


if __name__ == "__main__":
    gc.freeze()  # as train/train.py: the imports' objects out of the cyclic collector's sight
    main()
