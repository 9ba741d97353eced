import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_tiny_transformer_train.data import BOS, EOS, NUM_VALUES, PAD, PLUS, UNK, VOCABULARY, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_every_number_and_symbol_is_one_word_and_specials_have_fixed_ids(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == len(VOCABULARY) == NUM_VALUES + 5
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.convert_tokens_to_ids([PAD, BOS, EOS, UNK, PLUS]) == [0, 1, 2, 3, 4]
    ids = tokenizer(" ".join(str(value) for value in range(NUM_VALUES)))["input_ids"]
    assert ids == [*range(5, 5 + NUM_VALUES), tokenizer.eos_token_id]


@pytest.mark.parametrize("text", ["42 7 42 13", "0", "99 98 0 1", "4 0 7 + 9 5", " ".join(["5"] * 50)])
def test_round_trip_appends_eos_and_decodes_back(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.split()) + 1 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer(text_target=text)["input_ids"] == ids


def test_whitespace_as_people_type_it_is_ignored(tokenizer):
    assert tokenizer("  3   14\t15\n")["input_ids"] == tokenizer("3 14 15")["input_ids"]


def test_words_outside_the_vocabulary_become_unk(tokenizer):
    ids = tokenizer("3 100 -1 x 15")["input_ids"]
    assert ids[1:4] == [tokenizer.unk_token_id] * 3


def test_batches_are_padded_with_pad_and_masked(tokenizer):
    encoded = tokenizer(["1 2 3", "4"], padding=True, return_tensors="pt")
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert encoded["input_ids"][1].tolist() == [9, tokenizer.eos_token_id, 0, 0]
    assert encoded["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_saved_tokenizer_reloads_with_auto_tokenizer_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    reloaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    texts = ["42 7 42 13", "4 0 7 + 9 5", "3 100"]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.pad_token, reloaded.bos_token, reloaded.eos_token, reloaded.unk_token) == (PAD, BOS, EOS, UNK)
    assert reloaded.batch_decode(reloaded(texts)["input_ids"], skip_special_tokens=True) == [
        "42 7 42 13",
        "4 0 7 + 9 5",
        "3",  # <unk> is special, so skipped like </s>
    ]
