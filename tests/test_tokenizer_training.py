"""A new tokenizer trained on a user's texts (train/tokenizer_training.py), and the checks every tokenizer passes."""

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_tiny_transformer_train.data import BOS, EOS, PAD, UNK
from hf_tiny_transformer_train.tokenizer_training import MIN_VOCAB_SIZE, check_tokenizer, train_tokenizer

TEXTS = [
    "5 March 2021",
    "Mar 5th, 2021",
    "05/03/21",
    "2021-03-05",
    "vendredi 5 mars 2021",
    "Freitag, 5. März 2021",
] * 20


@pytest.mark.parametrize("tokenizer_type", ["bpe", "word_level"])
def test_special_tokens_have_the_built_in_ids_and_eos_is_appended(tokenizer_type):
    tokenizer = train_tokenizer(TEXTS, tokenizer_type, vocab_size=300)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.convert_tokens_to_ids([PAD, BOS, EOS, UNK]) == [0, 1, 2, 3]
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (PAD, BOS, EOS, UNK)
    assert tokenizer("5 March 2021")["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer(text_target="2021-03-05")["input_ids"][-1] == tokenizer.eos_token_id


def test_bpe_decodes_any_text_back_exactly_without_unknown_tokens():
    tokenizer = train_tokenizer(TEXTS, "bpe", vocab_size=300)
    for text in ["5 March 2021", "  two  spaces, a tab\tand ünïcödé 日本 ✓", "Mar 5th, 2021"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_bpe_merges_frequent_words_into_single_tokens_within_the_vocabulary_size():
    tokenizer = train_tokenizer(TEXTS, "bpe", vocab_size=300)
    assert len(tokenizer) <= 300
    assert len(tokenizer("2021")["input_ids"]) == 2  # one token and </s>


def test_word_level_keeps_the_most_frequent_words_and_maps_others_to_unk():
    tokenizer = train_tokenizer(["a a a b b c"], "word_level", vocab_size=10)
    assert set(tokenizer.get_vocab()) == {PAD, BOS, EOS, UNK, "a", "b", "c"}
    small = train_tokenizer(["a a a b b c"], "word_level", vocab_size=MIN_VOCAB_SIZE["word_level"])
    assert small("a c")["input_ids"] == [small.convert_tokens_to_ids("a"), small.unk_token_id, small.eos_token_id]
    assert tokenizer.decode(tokenizer("a  b\tc")["input_ids"], skip_special_tokens=True) == "a b c"


@pytest.mark.parametrize("tokenizer_type", ["bpe", "word_level"])
def test_a_saved_tokenizer_reloads_with_auto_tokenizer_identically(tokenizer_type, tmp_path):
    tokenizer = train_tokenizer(TEXTS, tokenizer_type, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["5 March 2021", "05/03/21", "unseen words 1999"]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.pad_token_id, reloaded.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    encoded = reloaded(texts)["input_ids"]
    assert reloaded.batch_decode(encoded, skip_special_tokens=True) == tokenizer.batch_decode(
        encoded, skip_special_tokens=True
    )


def test_training_is_deterministic():
    first = train_tokenizer(TEXTS, "bpe", vocab_size=300)
    second = train_tokenizer(list(TEXTS), "bpe", vocab_size=300)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


@pytest.mark.parametrize("tokenizer_type", ["bpe", "word_level"])
def test_a_vocabulary_below_the_minimum_is_refused(tokenizer_type):
    too_small = MIN_VOCAB_SIZE[tokenizer_type] - 1
    with pytest.raises(ValueError, match=f"--vocab_size must be at least {too_small + 1} .* got {too_small}"):
        train_tokenizer(TEXTS, tokenizer_type, vocab_size=too_small)


@pytest.mark.parametrize("missing", ["pad", "eos"])
def test_a_tokenizer_without_pad_or_eos_is_refused_by_name(missing):
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3}
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    del special[f"{missing}_token"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), **special)
    with pytest.raises(ValueError, match=f"the tokenizer my-tokenizer has no {missing} token"):
        check_tokenizer(tokenizer, "my-tokenizer")
