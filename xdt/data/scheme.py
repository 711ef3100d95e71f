"""Which IOB scheme a file's tags follow, and IOB1 -> IOB2.

IOB2 (WikiAnn's) opens every entity with `B-X`. IOB1 (CoNLL-2003's) opens it with `I-X` and uses `B-X` only for an
entity right after another of the same type. An `I-X` that opens an entity (after `O`, at the start of a sentence
or after another type) is what both schemes disagree on:

- a file where no `B-X` opens an entity and some `I-X` does is IOB1: it is converted to IOB2 on reading (each
  opening `I-X` becomes `B-X`), so the entities stay those seqeval's default mode (conlleval) reads, and strict IOB2
  scoring and training see IOB2;
- a file with both is IOB2 with stray opening `I-X` tags: they are kept as they are and counted (`data inspect`);
  seqeval's default mode reads each as the start of an entity, strict IOB2 mode drops it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def opens_with(tags: Sequence[str]) -> tuple[int, int]:
    """(entities opened by `B-X`, entities opened by `I-X`): an `I-X` opens one unless it follows `B-X` or `I-X`,
    a `B-X` unless it follows an entity of type X (IOB1's separator between two neighbours)."""
    by_b = by_i = 0
    prev = "O"
    for tag in tags:
        kind, _, name = tag.partition("-")
        same = prev[2:] == name and prev[:2] in ("B-", "I-")
        if kind == "I" and not same:
            by_i += 1
        elif kind == "B" and not same:
            by_b += 1
        prev = tag
    return by_b, by_i


def detect_scheme(tag_lists: Iterable[Sequence[str]]) -> str:
    """`IOB1` when some entity opens with `I-X` and none with `B-X`, else `IOB2`."""
    by_b = by_i = 0
    for tags in tag_lists:
        b, i = opens_with(tags)
        by_b, by_i = by_b + b, by_i + i
    return "IOB1" if by_i and not by_b else "IOB2"


def iob1_to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """Each `I-X` that opens an entity becomes `B-X`; nothing else changes."""
    out = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and not (prev[2:] == tag[2:] and prev[:2] in ("B-", "I-")):
            out.append("B-" + tag[2:])
        else:
            out.append(tag)
        prev = tag
    return tuple(out)
