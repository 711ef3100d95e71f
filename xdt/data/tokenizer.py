"""Loading a fast tokenizer from a local folder (or the hub when online), and its content fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from functools import lru_cache
from pathlib import Path

from xdt.errors import XdtError


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")


def has_tokenizer(folder: str | Path) -> bool:
    """Whether a local folder holds tokenizer files (a model folder saved with its tokenizer does)."""
    path = Path(folder)
    return path.is_dir() and any((path / f).exists() for f in TOKENIZER_FILES)


def load_tokenizer(name_or_dir: str | Path):
    from transformers import AutoTokenizer

    path = Path(name_or_dir)
    local = path.exists()
    if local and not path.is_dir():
        raise XdtError(f"{path}: tokenizer must be a folder holding tokenizer.json or vocab.txt")
    if local and not has_tokenizer(path):
        raise XdtError(f"{path}: no tokenizer files (tokenizer.json, vocab.txt, sentencepiece model) in this folder")
    if not local and (str(name_or_dir).startswith((".", "/", "~")) or os.environ.get("HF_HUB_OFFLINE") == "1"):
        raise XdtError(f"{name_or_dir}: tokenizer folder not found (and hub names cannot be fetched offline)")
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_dir))
    except (OSError, ValueError) as err:
        raise XdtError(f"{name_or_dir}: cannot load a tokenizer: {err}") from err
    if not tok.is_fast:
        raise XdtError(f"{name_or_dir}: loaded {type(tok).__name__}, not a fast tokenizer; word alignment needs one")
    return tok


@lru_cache(maxsize=16)
def _fingerprint(serialized: str, specials: str) -> str:
    return hashlib.sha256((serialized + "\0" + specials).encode()).hexdigest()[:16]


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides sub-word ids: the full backend (vocab, normalizer, pre-tokenizer).

    Remembered per tokenizer object (with its size, which adding tokens changes): serialising a 250k-piece
    vocabulary takes most of a second, and every cache key asks."""
    known = _FINGERPRINTS.get(tokenizer)
    if known is not None and known[0] == len(tokenizer):
        return known[1]
    fingerprint = _compute_fingerprint(tokenizer)
    _FINGERPRINTS[tokenizer] = (len(tokenizer), fingerprint)
    return fingerprint


def _compute_fingerprint(tokenizer) -> str:
    specials = f"{tokenizer.cls_token_id},{tokenizer.sep_token_id},{tokenizer.unk_token_id}"
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    # truncation and padding are call-time state (transformers resets a saved one on the first call): a folder
    # saved with them would fingerprint differently before and after tokenizing anything
    backend.pop("truncation", None)
    backend.pop("padding", None)
    return _fingerprint(json.dumps(backend, sort_keys=True), specials)


def check_vocabulary(tokenizer, rows, model: str | Path, tokenizer_dir: str | Path) -> None:
    """A tokenizer with more pieces than the model has word-embedding rows (config.json `vocab_size`) would feed
    ids beyond the table: an IndexError on the first sentence that uses one. Refused before the model loads."""
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise XdtError(f"{tokenizer_dir}: the tokenizer has {len(tokenizer)} pieces, more than the {rows} rows of "
                       f"{model}'s word-embedding table (config.json vocab_size); use the model's own tokenizer")
