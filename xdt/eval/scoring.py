"""seqeval scores from entity counts, so that languages (and shards) can be pooled exactly.

Entities are extracted by seqeval itself: `get_entities` in the default (conlleval-compatible) mode, the paper's
metric, and `seqeval.scheme.Entities` in strict mode (IOB2 by default). Precision, recall and F1 are computed from
the true-positive / predicted / gold counts with seqeval's own arithmetic (`prf`), so a language's F1 equals
`seqeval.metrics.f1_score` on the same tags, and a micro F1 over languages equals seqeval on all of them at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from seqeval import scheme as seqeval_scheme
from seqeval.metrics.sequence_labeling import get_entities

MODES = ("default", "strict")


@dataclass
class Counts:
    tp: int = 0
    pred: int = 0
    gold: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.pred + other.pred, self.gold + other.gold)

    def prf(self) -> tuple[float, float, float]:
        """(precision, recall, F1) as fractions, as seqeval computes them (zero division gives 0)."""
        precision = self.tp / self.pred if self.pred else 0.0
        recall = self.tp / self.gold if self.gold else 0.0
        denom = precision + recall
        f1 = 2.0 * precision * recall / (denom if denom != 0.0 else 1.0)
        return precision, recall, f1

    def to_json(self) -> dict[str, int]:
        return {"tp": self.tp, "pred": self.pred, "gold": self.gold}

    @classmethod
    def from_json(cls, raw: dict) -> Counts:
        return cls(int(raw["tp"]), int(raw["pred"]), int(raw["gold"]))


@dataclass
class Scores:
    """Entity counts per type, in each mode."""

    by_type: dict[str, dict[str, Counts]] = field(default_factory=dict)  # mode -> type -> counts

    def total(self, mode: str) -> Counts:
        out = Counts()
        for counts in self.by_type.get(mode, {}).values():
            out = out + counts
        return out

    def __add__(self, other: Scores) -> Scores:
        merged: dict[str, dict[str, Counts]] = {}
        for source in (self, other):
            for mode, types in source.by_type.items():
                for name, counts in types.items():
                    slot = merged.setdefault(mode, {})
                    slot[name] = slot.get(name, Counts()) + counts
        return Scores(merged)


def _count(true_sets: dict[str, set], pred_sets: dict[str, set]) -> dict[str, Counts]:
    names = sorted(set(true_sets) | set(pred_sets))
    return {n: Counts(tp=len(true_sets.get(n, set()) & pred_sets.get(n, set())),
                      pred=len(pred_sets.get(n, set())), gold=len(true_sets.get(n, set()))) for n in names}


def _default_sets(tags: Sequence[Sequence[str]]) -> dict[str, set]:
    out: dict[str, set] = {}
    for name, start, end in get_entities([list(t) for t in tags]):
        out.setdefault(name, set()).add((start, end))
    return out


def _strict_sets(tags: Sequence[Sequence[str]], scheme: str) -> dict[str, set]:
    entities = seqeval_scheme.Entities([list(t) for t in tags], getattr(seqeval_scheme, scheme), False)
    return {name: entities.filter(name) for name in entities.unique_tags}


def score(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str = "IOB2") -> Scores:
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tags differ in shape")
    return Scores({
        "default": _count(_default_sets(gold), _default_sets(pred)),
        "strict": _count(_strict_sets(gold, scheme), _strict_sets(pred, scheme)),
    })
