"""A new tokenizer for a user's data, trained with the `tokenizers` library, and the checks every tokenizer passes.

Two kinds, both with the special tokens of the built-in tokenizer (`<pad>`, `<s>`, `</s>`, `<unk>` at ids 0-3) and
`</s>` appended to every text, and both saved as `tokenizer.json` that `AutoTokenizer` loads:

- `bpe`: byte-level BPE, as GPT-2 and BART use. It starts from the 256 byte values, so every text is encoded
  without `<unk>` and decodes back to exactly itself; merges learned from the training texts make frequent words
  and numbers single tokens.
- `word_level`: one token per whitespace-separated word seen in training (the most frequent `vocab_size`); any
  other word becomes `<unk>`. Suits data whose words form a small closed set.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer
from tokenizers.decoders import ByteLevel as ByteLevelDecoder
from tokenizers.models import BPE, WordLevel
from tokenizers.pre_tokenizers import ByteLevel, WhitespaceSplit
from tokenizers.trainers import BpeTrainer, WordLevelTrainer
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hf_tiny_transformer_train.data import BOS, EOS, PAD, UNK, as_transformers_tokenizer

TOKENIZER_TYPES = ("bpe", "word_level")
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # in this order, so that their ids are 0, 1, 2, 3 as in the built-in tokenizer
BYTE_ALPHABET_SIZE = 256
# The smallest vocabulary each kind can have: its special tokens, plus every byte value for BPE and one word for
# word-level.
MIN_VOCAB_SIZE = {"bpe": len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE, "word_level": len(SPECIAL_TOKENS) + 1}


def train_tokenizer(texts: Iterable[str], tokenizer_type: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A `tokenizer_type` tokenizer with at most `vocab_size` tokens, learned from `texts` (the training split's
    sources and targets: the model shares one embedding between encoder and decoder)."""
    if tokenizer_type not in TOKENIZER_TYPES:
        raise ValueError(f"tokenizer_type must be one of {', '.join(TOKENIZER_TYPES)}; got {tokenizer_type!r}")
    if vocab_size < MIN_VOCAB_SIZE[tokenizer_type]:
        raise ValueError(
            f"--vocab_size must be at least {MIN_VOCAB_SIZE[tokenizer_type]} for a {tokenizer_type} tokenizer; "
            f"got {vocab_size}"
        )
    if tokenizer_type == "bpe":
        backend = Tokenizer(BPE())
        # Spaces are kept as part of the following word (GPT-2's "Ġ"), so decoding restores the text exactly.
        backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
        backend.decoder = ByteLevelDecoder()
        trainer = BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        backend = Tokenizer(WordLevel(unk_token=UNK))
        backend.pre_tokenizer = WhitespaceSplit()
        trainer = WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return as_transformers_tokenizer(backend)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Raise ValueError naming the tokenizer `name` if it lacks a token the model needs: padding to batch examples,
    and end-of-sequence to end answers (`generate` stops there)."""
    for role in ("pad", "eos"):
        if getattr(tokenizer, f"{role}_token_id") is None:
            raise ValueError(
                f"the tokenizer {name} has no {role} token; set one (tokenizer.{role}_token = ...), save it with "
                "save_pretrained and pass that folder"
            )
