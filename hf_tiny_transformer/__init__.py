"""hf_tiny_transformer: a compact encoder-decoder Transformer that is a first-class transformers model.

Importing the package registers `model_type="tiny_transformer"` with AutoConfig, AutoModel and
AutoModelForSeq2SeqLM, and marks the classes for remote code so that `save_pretrained` copies their source and writes
an `auto_map` (loadable with `trust_remote_code=True` where this package is not installed).
"""

import contextlib
import logging
import re
from collections.abc import Iterator

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

# Lines that torchao (the `quantization` extra) logs as it is first imported, which transformers' model code does for
# every model, and that say nothing about a model: the kernels for NVIDIA GPUs in torchao's wheel (`_C_mxfp8`, built
# for another Python; `_C_cutlass_90a`, for Hopper GPUs) not loading, and torch's deprecation notice for the Enum types
# torchao registers with pytree. Only these, and only while this package imports transformers' model code.
TORCHAO_IMPORT_NOISE = {
    "torchao": re.compile(r"Failed to load .*torchao[/\\]_C_\w+.*\.so"),
    "torch.utils._pytree": re.compile(r"is an Enum subclass and is now natively supported by torch\.compile"),
}


@contextlib.contextmanager
def torchao_import_noise_dropped() -> Iterator[None]:
    """Drop TORCHAO_IMPORT_NOISE's log records while the block runs; every other record passes as before."""

    def not_noise(pattern: re.Pattern) -> logging.Filter:
        noise_filter = logging.Filter()
        noise_filter.filter = lambda record: not pattern.search(record.getMessage())
        return noise_filter

    filters = {name: not_noise(pattern) for name, pattern in TORCHAO_IMPORT_NOISE.items()}
    for name, noise_filter in filters.items():
        logging.getLogger(name).addFilter(noise_filter)
    try:
        yield
    finally:
        for name, noise_filter in filters.items():
            logging.getLogger(name).removeFilter(noise_filter)


with torchao_import_noise_dropped():
    from .configuration_tiny_transformer import TinyTransformerConfig
    from .modeling_tiny_transformer import (
        TinyTransformerForConditionalGeneration,
        TinyTransformerModel,
        TinyTransformerPreTrainedModel,
    )

__version__ = "0.1.0"

AutoConfig.register(TinyTransformerConfig.model_type, TinyTransformerConfig, exist_ok=True)
AutoModel.register(TinyTransformerConfig, TinyTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(TinyTransformerConfig, TinyTransformerForConditionalGeneration, exist_ok=True)
TinyTransformerConfig.register_for_auto_class()
TinyTransformerModel.register_for_auto_class("AutoModel")
TinyTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__all__ = [
    "TinyTransformerConfig",
    "TinyTransformerPreTrainedModel",
    "TinyTransformerModel",
    "TinyTransformerForConditionalGeneration",
]
