"""Word surgery shared by the augmenters: punctuation around a word, and its case pattern.

    split_affixes("«Haus,")  -> ("«", "Haus", ",")
    match_case("Haus", "house") -> "House";  match_case("NATO", "otan") -> "OTAN"
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache


@lru_cache(maxsize=4096)
def _is_affix(ch: str) -> bool:
    # punctuation (P*) and symbols (S*); combining marks (Devanagari vowel signs, ...) stay in the word
    return unicodedata.category(ch)[0] in "PS"


def split_affixes(word: str) -> tuple[str, str, str]:
    """(leading punctuation, core, trailing punctuation); the core is empty for a word of punctuation only."""
    start, end = 0, len(word)
    while start < end and _is_affix(word[start]):
        start += 1
    while end > start and _is_affix(word[end - 1]):
        end -= 1
    return word[:start], word[start:end], word[end:]


def match_case(original: str, replacement: str) -> str:
    """`replacement` in the case pattern of `original`: ALL CAPS, Capitalized, or as the dictionary writes it."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper() and not replacement[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)
