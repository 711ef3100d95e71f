"""Exact and normalized de-duplication in bounded memory (hash partitions on disk).

A sentence's key is an 8-byte BLAKE2b hash of its language and its text: the words joined by one space (`exact`),
or (`normalized`) the text after NFKC, casefold, and removal of all whitespace and punctuation (Unicode P*), so that
"Hello, World!" and "hello world" are copies. Keys include the language: the same words in two languages are two
sentences (WikiAnn repeats entity-only lines such as names across languages on purpose).

Memory: `Deduplicator.add` appends 16 bytes per sentence (hash, position and group) to a small buffer that is
flushed to one of 256 partition files by the hash's top byte; `finish` reads one partition at a time, sorts it and
marks every record whose hash was seen at a lower position. The peak is ~3 x 16 bytes x (sentences / 256) while
sorting a partition (7M sentences: ~1.3 MB), plus the flush buffer (~4 MB), plus the result: one bit per sentence
(7M: 0.9 MB). Disk: 16 bytes per sentence, deleted when done. A hash collision (2**-64 per pair) drops a sentence.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import unicodedata
from array import array
from functools import lru_cache
from pathlib import Path

import numpy as np

PARTITIONS = 256
GROUP_BITS = 24  # positions and groups share one uint64: position << 24 | group
_FLUSH = 1 << 18  # records per flush (4 MB as two uint64 arrays)
_RECORD = np.dtype([("h", "<u8"), ("pg", "<u8")])


@lru_cache(maxsize=1)
def _strip_table() -> dict[int, None]:
    """Every punctuation and whitespace code point, for `str.translate` (built once, ~0.3 s)."""
    table = {}
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch.isspace() or unicodedata.category(ch)[0] in "PZ":
            table[cp] = None
    return table


def normalize(text: str) -> str:
    """NFKC, casefold, and no whitespace or punctuation."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_strip_table())


def sentence_key(lang: str, words: tuple[str, ...], mode: str) -> bytes:
    text = " ".join(words)
    if mode == "normalized":
        text = normalize(text)
    return f"{lang}\x00{text}".encode("utf-8", "surrogatepass")


def key_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class Deduplicator:
    """Feed (lang, words, position, group) in position order; `finish` gives the positions to drop (later copies)
    and the number of dropped sentences per group."""

    def __init__(self, mode: str, folder: Path):
        if mode not in ("exact", "normalized"):
            raise ValueError(f"dedup mode {mode!r}")
        self.mode = mode
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hashes = array("Q")
        self._pgs = array("Q")
        self.count = 0

    def add(self, lang: str, words: tuple[str, ...], position: int, group: int) -> None:
        self._hashes.append(key_hash(sentence_key(lang, words, self.mode)))
        self._pgs.append(position << GROUP_BITS | group)
        self.count += 1
        if len(self._hashes) >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        if not self._hashes:
            return
        records = np.empty(len(self._hashes), dtype=_RECORD)
        records["h"] = np.frombuffer(self._hashes, dtype=np.uint64)
        records["pg"] = np.frombuffer(self._pgs, dtype=np.uint64)
        part = (records["h"] >> np.uint64(56)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        records, part = records[order], part[order]
        bounds = np.searchsorted(part, np.arange(PARTITIONS + 1))
        for p in range(PARTITIONS):
            lo, hi = bounds[p], bounds[p + 1]
            if hi > lo:
                with open(self.folder / f"part-{p:03d}.bin", "ab") as f:
                    records[lo:hi].tofile(f)
        self._hashes = array("Q")
        self._pgs = array("Q")

    def finish(self, positions: int, groups: int) -> tuple[bytearray, np.ndarray]:
        """(bitset over `positions`: bit set = drop, dropped count per group), and the partition files deleted."""
        self._flush()
        drop = bytearray((positions + 7) // 8)
        dropped = np.zeros(groups, dtype=np.int64)
        group_mask = np.uint64((1 << GROUP_BITS) - 1)
        for p in range(PARTITIONS):
            file = self.folder / f"part-{p:03d}.bin"
            if not file.exists():
                continue
            records = np.fromfile(file, dtype=_RECORD)
            file.unlink()
            order = np.lexsort((records["pg"], records["h"]))  # by hash, then position: first copy first
            h, pg = records["h"][order], records["pg"][order]
            later = np.flatnonzero(h[1:] == h[:-1]) + 1
            if later.size:
                pos = (pg[later] >> np.uint64(GROUP_BITS)).astype(np.int64)
                dropped += np.bincount((pg[later] & group_mask).astype(np.int64), minlength=groups)
                for q in pos.tolist():
                    drop[q >> 3] |= 1 << (q & 7)
        shutil.rmtree(self.folder, ignore_errors=True)
        return drop, dropped


def is_set(bits: bytearray, position: int) -> bool:
    return bool(bits[position >> 3] & (1 << (position & 7)))
