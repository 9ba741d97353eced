"""hf_tiny_transformer: a compact encoder-decoder Transformer that is a first-class transformers model.

Importing the package registers `model_type="tiny_transformer"` with AutoConfig, AutoModel and
AutoModelForSeq2SeqLM, and marks the classes for remote code so that `save_pretrained` copies their source and writes
an `auto_map` (loadable with `trust_remote_code=True` where this package is not installed).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

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
