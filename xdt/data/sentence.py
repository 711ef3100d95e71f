"""The one record every reader produces."""

from __future__ import annotations

import re
from dataclasses import dataclass

# WikiAnn's label set in the order of XTREME's sorted label file is B-LOC B-ORG B-PER I-LOC I-ORG I-PER O;
# the HF `wikiann` dataset numbers them O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC. xdt never relies on
# either order: labels travel as names and are numbered only against a model's own label2id.
WIKIANN_LABELS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
HF_WIKIANN_LABEL_ORDER: tuple[str, ...] = WIKIANN_LABELS

_IOB_TAG = re.compile(r"^(O|[BIES]-\S+)$")


@dataclass(frozen=True, slots=True)
class Sentence:
    lang: str
    words: tuple[str, ...]
    tags: tuple[str, ...] | None = None  # None for unlabeled text

    def __post_init__(self) -> None:
        if self.tags is not None and len(self.tags) != len(self.words):
            raise ValueError(f"{len(self.words)} words but {len(self.tags)} tags")


def is_iob_tag(tag: str) -> bool:
    return bool(_IOB_TAG.match(tag))
