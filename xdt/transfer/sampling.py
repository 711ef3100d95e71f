"""Language sampling with exponential smoothing, exact quotas, and streaming selection.

    p_l = w_l ** alpha / sum_k w_k ** alpha,   w_l = sum over sources s of weight_s * n_{s,l}

(n_{s,l}: sentences of language l in source s after length filters and de-duplication), as mBERT (alpha 0.7) and
XLM (0.5) sample their pre-training languages. Quotas are exact integers (largest remainder), not expectations:
with no language at its cap, |count_l / size - p_l| <= 1 / size. A language that reaches its cap (its own
`caps`/`max_per_lang`, or, without `upsample`, the sentences it has) is fixed there and the rest of the size is
shared among the other languages by the same p_l ("water-filling"), so the requested size is kept whenever the
sources can fill it.

Selection is Knuth's Algorithm S per (source, language) group in the second pass over the sources: every sentence
is kept with probability (still needed) / (still to come), which picks exactly the quota, uniformly, in O(1) memory.
With upsampling a group's quota may exceed its size: each sentence then appears quota // n times, plus once more
for a uniform sample of quota % n of them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable


def smoothed_probabilities(weights: dict[str, float], alpha: float) -> dict[str, float]:
    powered = {k: (w ** alpha if w > 0 else 0.0) for k, w in weights.items()}
    total = sum(powered.values())
    if total <= 0:
        return {k: 0.0 for k in weights}
    return {k: v / total for k, v in powered.items()}


def allocate(total: int, weights: dict[Hashable, float], caps: dict[Hashable, int | None]) -> dict[Hashable, int]:
    """Integers summing to min(total, sum of caps), proportional to `weights`, none above its cap (None: none)."""
    out: dict[Hashable, int] = {k: 0 for k in weights}
    active = [k for k, w in weights.items() if w > 0 and (caps.get(k) is None or caps[k] > 0)]
    remaining = total
    while active and remaining > 0:
        mass = sum(weights[k] for k in active)
        saturated = [k for k in active if caps.get(k) is not None and remaining * weights[k] / mass >= caps[k]]
        if not saturated:
            break
        for k in saturated:
            out[k] = caps[k]
            remaining -= caps[k]
            active.remove(k)
    if active and remaining > 0:
        mass = sum(weights[k] for k in active)
        ideal = {k: remaining * weights[k] / mass for k in active}
        floors = {k: math.floor(v) for k, v in ideal.items()}
        left = remaining - sum(floors.values())
        # largest remainder; ties in the order the keys came
        by_remainder = sorted(active, key=lambda k: -(ideal[k] - floors[k]))
        for k in by_remainder[:left]:
            floors[k] += 1
        out.update(floors)
    return out


class GroupSelector:
    """Algorithm S over one group of `n` sentences seen in order: `take()` returns how many copies to keep."""

    __slots__ = ("base", "needed", "remaining", "rng")

    def __init__(self, n: int, quota: int, rng: random.Random):
        self.base, extra = divmod(quota, n) if n else (0, 0)
        self.needed = extra
        self.remaining = n
        self.rng = rng

    def take(self) -> int:
        if self.remaining <= 0:
            raise RuntimeError("more sentences than counted in the first pass")
        copies = self.base
        if self.needed and self.rng.random() * self.remaining < self.needed:
            copies += 1
            self.needed -= 1
        self.remaining -= 1
        return copies
