"""The text of each vocabulary token, for bounds on what a token budget can write.

A constraint whose shortest text cannot fit into the budget is refused before generation
(:func:`langchain_fslm.engine.constraint.check_budget`); the bound needs the longest token made only of
characters the pattern can contain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

REPLACEMENT = "\ufffd"
"""What a token that holds part of a character decodes to; it may be part of any character."""

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def longest_of(texts: Sequence[str], alphabet: frozenset[str] | None) -> int:
    """Characters of the longest token text made only of ``alphabet`` (None: any characters).

    A replacement character counts as a member: the token holds bytes of a character that may be one.
    """
    if alphabet is None:
        return max((len(t) for t in texts), default=0)
    allowed = alphabet | {REPLACEMENT}
    return max((len(t) for t in texts if t and all(ch in allowed for ch in t)), default=0)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: each printable stand-in character -> its byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def gguf_token_texts(tokens: Sequence[str], model: str | None) -> list[str]:
    """What each GGUF vocabulary string (``tokenizer.ggml.tokens``) decodes to.

    Args:
        tokens: The strings, in the tokenizer's own notation.
        model: ``tokenizer.ggml.model``: ``gpt2`` (byte-level BPE: each character stands for one byte),
            ``llama`` (SentencePiece: ``▁`` is a space, ``<0xAB>`` one byte); others are taken as they are.
    """
    if model == "gpt2":
        decoder = _byte_decoder()
        return [bytes(decoder[ch] for ch in t if ch in decoder).decode("utf-8", "replace") for t in tokens]
    if model == "llama":
        return [REPLACEMENT if _BYTE_TOKEN.fullmatch(t) else t.replace("▁", " ") for t in tokens]
    return list(tokens)
