"""Length-bucketed batches: every window exactly once per epoch, deterministic, disjoint across ranks."""

from __future__ import annotations

import numpy as np

from xdt.data.align import AlignedFeatures
from xdt.data.batching import WindowBatcher, bucketed_batches


def _features(lengths) -> AlignedFeatures:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    n = len(lengths)
    return AlignedFeatures(
        input_ids=np.arange(total, dtype=np.int32) % 50 + 1, labels=np.zeros(total, np.int16),
        word_index=np.where(np.arange(total) % 2 == 0, 0, -1).astype(np.int32), offsets=offsets,
        window_sentence=np.arange(n, dtype=np.int32), sentence_words=np.ones(n, np.int32),
        sentence_subwords=np.asarray(lengths, np.int32), unk_words=np.zeros(n, np.int32),
        truncated_words=np.zeros(n, np.int32))


def test_each_window_once_per_epoch_and_batches_of_similar_length():
    lengths = np.random.default_rng(0).integers(3, 120, size=1000)
    batches = bucketed_batches(lengths, 16, seed=1, epoch=0)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in np.array_split(np.arange(1000), 63)])
    assert spread < random_spread / 3  # bucketing cuts padding


def test_order_is_a_function_of_seed_and_epoch():
    lengths = np.arange(200) % 37 + 3
    a = bucketed_batches(lengths, 8, seed=5, epoch=2)
    b = bucketed_batches(lengths, 8, seed=5, epoch=2)
    c = bucketed_batches(lengths, 8, seed=5, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_ranks_take_disjoint_equal_shares_and_resume_from_a_batch():
    batcher = WindowBatcher(_features(np.arange(101) % 13 + 3), pad_id=0)
    r0 = [b["window"].tolist() for b in batcher.epoch(4, 0, 0, rank=0, world=2)]
    r1 = [b["window"].tolist() for b in batcher.epoch(4, 0, 0, rank=1, world=2)]
    assert len(r0) == len(r1) == batcher.num_batches(4, world=2) == 13
    assert not set(sum(r0, [])) & set(sum(r1, []))
    full = [b["window"].tolist() for b in batcher.epoch(4, 0, 0)]
    resumed = [b["window"].tolist() for b in batcher.epoch(4, 0, 0, start_batch=10)]
    assert resumed == full[10:]


def test_collate_pads_to_longest_in_batch():
    f = _features([3, 5, 4])
    batch = WindowBatcher(f, pad_id=0).collate(np.array([0, 1, 2]))
    assert batch["input_ids"].shape == (3, 5)
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 4]
    assert batch["input_ids"][0, 3:].tolist() == [0, 0] and batch["labels"][0, 3:].tolist() == [-100, -100]
    assert batch["word_index"][0, 3:].tolist() == [-1, -1]
    assert batch["input_ids"][1].tolist() == f.input_ids[3:8].tolist()
