"""What the benchmarks share: the machine's load beside every figure, and paired, rotated timing.

The development machine is shared, so a ratio of two medians taken minutes apart measures the load as much as the
code. The benchmarks time the things they compare in the same round, rotate which goes first from round to round
(the first of a round pays for cold caches and for load that arrives mid-round alike), and report the median of
the per-round ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path


def machine_load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2), "cpus": os.cpu_count()}


class LoadWatch:
    """Load average when a benchmark starts (printed at once, to stderr) and when it ends."""

    def __init__(self, name: str):
        self.name = name
        self.start = machine_load()
        print(f"{name}: machine load at start {self._text(self.start)}", file=sys.stderr, flush=True)

    @staticmethod
    def _text(load: dict) -> str:
        return f"{load['1min']}/{load['5min']}/{load['15min']} (1/5/15 min, {load['cpus']} cpus)"

    def finish(self) -> dict:
        self.end = machine_load()
        print(f"{self.name}: machine load at end {self._text(self.end)}", file=sys.stderr, flush=True)
        return {"start": self.start, "end": self.end}

    def summary(self) -> str:
        return f"load {self.start['1min']} -> {self.end['1min']} on {self.start['cpus']} cpus"


def rotated(items: Sequence, round_index: int) -> list:
    """`items` starting at position round_index mod len: each goes first equally often."""
    k = round_index % len(items)
    return list(items[k:]) + list(items[:k])


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of per-round ratios (pairs taken in the same round share its load)."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("paired ratios need two equally long, non-empty lists")
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def emit_json(result: dict, out: str | Path | None) -> None:
    """Print the benchmark's JSON object and, with `--out FILE`, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
