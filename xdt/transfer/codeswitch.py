"""Cross-lingual code-switching: replace a fraction of a sentence's words by dictionary translations.

One word always becomes one word (MUSE entries are single words), so tags stay aligned; with `entities: keep`,
words inside entities (tag other than O) are never replaced. Punctuation around a word is kept ("Haus," ->
"house,") and so is its case pattern (Capitalized, ALL CAPS). A word is replaced only by a translation that differs
from it (ignoring case). How many words: `word_ratio` x the sentence length, rounded at random to an integer (at
least 1), at most the number of words that have a translation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from xdt.transfer.config import CodeSwitchConfig
from xdt.transfer.dictionary import Dictionaries
from xdt.transfer.words import has_letter, match_case, split_affixes


@dataclass(frozen=True)
class Item:
    """A sampled sentence on its way to the writer."""

    lang: str
    words: tuple[str, ...]
    tags: tuple[str, ...] | None
    source: str


@dataclass(frozen=True)
class Change:
    """An augmented copy: the new words and, per changed word, (index, what: a language code, mask, ...)."""

    words: tuple[str, ...]
    changed: tuple[tuple[int, str], ...]


def words_to_change(n_words: int, ratio: float, available: int, rng: random.Random) -> int:
    """ratio x n_words rounded at random (so its mean is exact), at least 1, at most `available`."""
    want = ratio * n_words
    k = math.floor(want) + (1 if rng.random() < want - math.floor(want) else 0)
    return min(max(k, 1), available)


def changeable(item: Item, keep_entities: bool) -> list[int]:
    """Indices of words an augmentation may change: words with a letter, outside entities when they are kept."""
    return [i for i, w in enumerate(item.words)
            if has_letter(w) and not (keep_entities and item.tags is not None and item.tags[i] != "O")]


class CodeSwitcher:
    name = "codeswitch"

    def __init__(self, cfg: CodeSwitchConfig, dictionaries: Dictionaries, targets: list[str], keep_entities: bool):
        self.cfg = cfg
        self.dicts = dictionaries
        self.targets = sorted(targets)
        self.keep_entities = keep_entities

    def _options(self, core: str, lang: str, target: str) -> tuple[str, ...]:
        low = core.lower()
        return tuple(t for t in self.dicts.translations(core, lang, target) if t.lower() != low)

    def apply(self, item: Item, rng: random.Random) -> Change | None:
        """An augmented copy of `item`, or None when no word of it has a translation into the targets."""
        targets = [t for t in self.targets if t != item.lang]
        if not targets or not self.dicts.has(item.lang):
            return None
        positions = changeable(item, self.keep_entities)
        cores = {i: split_affixes(item.words[i]) for i in positions}
        if self.cfg.choose == "sentence":
            target = targets[rng.randrange(len(targets))]
            options = {i: [(target, o) for o in self._options(cores[i][1], item.lang, target)] for i in positions}
        else:
            options = {i: [(t, o) for t in targets for o in self._options(cores[i][1], item.lang, t)]
                       for i in positions}
        translatable = [i for i in positions if options[i]]
        if not translatable:
            return None
        k = words_to_change(len(item.words), self.cfg.word_ratio, len(translatable), rng)
        chosen = sorted(rng.sample(translatable, k))
        words = list(item.words)
        changed = []
        for i in chosen:
            if self.cfg.choose == "word":  # a target language first, then one of its words: all targets alike
                langs = sorted({t for t, _ in options[i]})
                target = langs[rng.randrange(len(langs))]
                pool = [o for t, o in options[i] if t == target]
            else:
                target, pool = options[i][0][0], [o for _, o in options[i]]
            prefix, core, suffix = cores[i]
            words[i] = prefix + match_case(core, pool[rng.randrange(len(pool))]) + suffix
            changed.append((i, target))
        return Change(tuple(words), tuple(changed))

    def apply_batch(self, items: list[Item], rng: random.Random) -> list[Change | None]:
        return [self.apply(item, rng) for item in items]
