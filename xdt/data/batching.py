"""Length-bucketed batches of aligned windows, padded per batch, deterministic for a (seed, epoch).

Windows are sorted by length inside chunks of `bucket_size` batches drawn in a seeded random order, so a batch
holds windows of similar length (little padding) while the order of batches still changes every epoch. The batch
order of an epoch is a pure function of (seed, epoch): a resumed run replays it from a batch index.
Sharding for data parallelism takes every `world`-th batch of the global order, so ranks see disjoint batches;
with several ranks the last incomplete round of batches is dropped so that every rank takes the same steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from xdt.data.align import IGNORE_INDEX, AlignedFeatures


def bucketed_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                     bucket_size: int = 50) -> list[np.ndarray]:
    """Window indices per batch. Without shuffle: sorted by length (inference order)."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    chunk = batch_size * bucket_size
    batches = []
    for start in range(0, n, chunk):
        part = perm[start:start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


@dataclass
class WindowBatcher:
    """Collates windows of one `AlignedFeatures` into padded tensors."""

    features: AlignedFeatures
    pad_id: int

    def collate(self, windows: np.ndarray) -> dict[str, torch.Tensor]:
        f = self.features
        starts = f.offsets[windows]
        lengths = f.offsets[windows + 1] - starts
        width = int(lengths.max())
        n = len(windows)
        input_ids = np.full((n, width), self.pad_id, np.int64)
        labels = np.full((n, width), IGNORE_INDEX, np.int64)
        word_index = np.full((n, width), -1, np.int64)
        attention = np.zeros((n, width), np.int64)
        for row, (lo, length) in enumerate(zip(starts, lengths)):
            input_ids[row, :length] = f.input_ids[lo:lo + length]
            labels[row, :length] = f.labels[lo:lo + length]
            word_index[row, :length] = f.word_index[lo:lo + length]
            attention[row, :length] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
            "word_index": torch.from_numpy(word_index),
            "window": torch.from_numpy(np.asarray(windows, np.int64)),
        }

    def epoch(self, batch_size: int, seed: int, epoch: int, shuffle: bool = True, rank: int = 0, world: int = 1,
              start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of this rank for one epoch, from global batch `start_batch` on (resume)."""
        batches = bucketed_batches(self.features.window_lengths(), batch_size, seed, epoch, shuffle)
        usable = len(batches) - len(batches) % world  # every rank takes the same number of steps
        for i in range(start_batch, usable):
            if i % world == rank:
                yield self.collate(batches[i])

    def num_batches(self, batch_size: int, world: int = 1) -> int:
        total = -(-self.features.num_windows // batch_size)
        return total // world
