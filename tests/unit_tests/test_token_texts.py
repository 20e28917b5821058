"""Token texts for the budget bound: GGUF vocabulary notations decode to what the tokens write."""

from __future__ import annotations

from langchain_fslm.engine.token_texts import REPLACEMENT, gguf_token_texts, longest_of


def test_byte_level_tokens_decode_to_their_text() -> None:
    texts = gguf_token_texts(["Ġhello", "ĊĊ", "abc", "Ã©", "Ã"], "gpt2")
    assert texts == [" hello", "\n\n", "abc", "é", REPLACEMENT]


def test_sentencepiece_tokens_decode_to_their_text() -> None:
    assert gguf_token_texts(["▁hi", "<0x41>", "x"], "llama") == [" hi", REPLACEMENT, "x"]
    assert gguf_token_texts(["a b"], None) == ["a b"]


def test_the_longest_token_of_an_alphabet() -> None:
    texts = ["ABC", "abcdef", "AB" + REPLACEMENT, "", "AAAAAAAAAA "]
    assert longest_of(texts, None) == 11
    assert longest_of(texts, frozenset("ABC")) == 3  # a partial character may be part of any
    assert longest_of(texts, frozenset("xyz")) == 0
