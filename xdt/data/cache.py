"""On-disk cache of aligned splits: numpy arrays memory-mapped back, keyed by what decides their content.

Key = file content hash + tokenizer fingerprint + max_seq_length + label map + aligner version. A cache entry is
written to a temporary folder and renamed into place, so a crash mid-write never leaves a readable partial entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from xdt.data.align import AlignedFeatures, Aligner
from xdt.data.tokenizer import tokenizer_fingerprint

ALIGN_VERSION = 1  # bump when Aligner's output for the same input changes


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDT_CACHE", Path.home() / ".cache" / "xdt"))


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cache_key(content_id: str, aligner: Aligner, extra: str = "") -> str:
    parts = {
        "content": content_id,
        "tokenizer": tokenizer_fingerprint(aligner.tokenizer),
        "max_seq_length": aligner.max_seq_length,
        "label2id": sorted(aligner.label2id.items()) if aligner.label2id else None,
        "version": ALIGN_VERSION,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def load_aligned(entry: Path) -> AlignedFeatures | None:
    if not (entry / "done").exists():
        return None
    return AlignedFeatures(**{f.name: np.load(entry / f"{f.name}.npy", mmap_mode="r", allow_pickle=False)
                              for f in fields(AlignedFeatures)})


def save_aligned(entry: Path, features: AlignedFeatures) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp", dir=entry.parent))
    try:
        for f in fields(AlignedFeatures):
            np.save(tmp / f"{f.name}.npy", getattr(features, f.name))
        (tmp / "done").write_text("")
        try:
            os.rename(tmp, entry)
        except OSError:  # another process wrote the same entry first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def align_cached(sentences, aligner: Aligner, content_id: str | None, cache_dir: Path | None,
                 extra: str = "") -> AlignedFeatures:
    """`aligner.align(sentences)`, read from / written to the cache when a content id and a folder are given."""
    if content_id is None or cache_dir is None:
        return aligner.align(sentences)
    entry = Path(cache_dir) / "aligned" / cache_key(content_id, aligner, extra)
    cached = load_aligned(entry)
    if cached is not None:
        return cached
    features = aligner.align(sentences)
    save_aligned(entry, features)
    return features
