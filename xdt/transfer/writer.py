"""JSONL output with an on-disk shuffle in bounded memory.

Lines go to `buckets` scratch files, each line to a bucket drawn at random; `close` reads one bucket at a time,
shuffles it in memory and appends it to the output. A line's final position is uniform (bucket order is random by
construction, order within a bucket is shuffled); memory is one bucket (about `bucket_lines` lines). Without
shuffle, lines are written in the order they come. The output appears under its name only when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path

MAX_BUCKETS = 512  # open files at once; beyond 512 x bucket_lines lines the buckets grow instead


def jsonl_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class ShuffledWriter:
    def __init__(self, path: Path, scratch: Path, expected_lines: int, bucket_lines: int, shuffle: bool,
                 rng: random.Random):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.scratch = Path(scratch)
        self.shuffle = shuffle
        self.rng = rng
        self.lines = 0
        if shuffle:
            self.n_buckets = min(MAX_BUCKETS, max(1, math.ceil(expected_lines / bucket_lines)))
            self.scratch.mkdir(parents=True, exist_ok=True)
            self.buckets = [open(self.scratch / f"bucket-{b:03d}.jsonl", "wb") for b in range(self.n_buckets)]
        else:
            self.n_buckets = 0
            self.out = open(self.partial, "wb")

    def write(self, line: bytes) -> None:
        self.lines += 1
        if self.shuffle:
            self.buckets[self.rng.randrange(self.n_buckets) if self.n_buckets > 1 else 0].write(line)
        else:
            self.out.write(line)

    def close(self) -> str:
        """Finish the file; returns its SHA-256."""
        digest = hashlib.sha256()
        if self.shuffle:
            for f in self.buckets:
                f.close()
            with open(self.partial, "wb") as out:
                for b in range(self.n_buckets):
                    bucket = self.scratch / f"bucket-{b:03d}.jsonl"
                    with open(bucket, "rb") as f:
                        lines = f.readlines()
                    bucket.unlink()
                    self.rng.shuffle(lines)
                    for line in lines:
                        digest.update(line)
                    out.writelines(lines)
                    del lines
        else:
            self.out.close()
            with open(self.partial, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        os.replace(self.partial, self.path)
        return digest.hexdigest()

    def abort(self) -> None:
        for f in getattr(self, "buckets", []):
            f.close()
        if not self.shuffle:
            self.out.close()
        self.partial.unlink(missing_ok=True)
