"""Resumable checkpoints: `engine.save_checkpoint` on every rank, then a completion marker, then `latest`.

Layout under ROOT (e.g. OUTPUT/checkpoints/distill):
    <tag>/...              DeepSpeed's files (model states, ZeRO optimizer shards per rank)
    <tag>/xdt_state.json   written by rank 0 after every rank finished saving: the loop position
    latest                 the newest complete tag, replaced atomically after its marker exists

A crash mid-save leaves a tag without `xdt_state.json`: it is never named by `latest` and never loaded. The loop
position (stage, unfreeze step, step, best dev score, history) sits in the JSON marker so a resumed run knows which
engine to build before loading; RNG states travel in DeepSpeed's client_state.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from xdt.engine.distributed import barrier, is_main
from xdt.errors import XdtError

log = logging.getLogger(__name__)
MARKER = "xdt_state.json"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, root: str | Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def save(self, engine, tag: str, position: dict) -> None:
        """Collective: every rank calls it with the same tag."""
        engine.save_checkpoint(str(self.root), tag, client_state={"rng": rng_state()}, save_latest=False)
        barrier()  # every rank's shard is on disk before the marker says so
        if is_main():
            _atomic_write(self.root / tag / MARKER, json.dumps(position, indent=1))
            _atomic_write(self.root / "latest", tag)
            self._prune(keep=tag)
        barrier()

    def latest(self) -> tuple[str, dict] | None:
        """(tag, position) of the newest complete checkpoint, or None when there is none."""
        pointer = self.root / "latest"
        candidates = []
        if pointer.exists():
            candidates.append(pointer.read_text().strip())
        complete = sorted((p for p in self.root.glob(f"*/{MARKER}")), key=lambda p: _step(p), reverse=True)
        candidates += [p.parent.name for p in complete]
        for tag in candidates:
            marker = self.root / tag / MARKER
            if marker.exists():
                return tag, json.loads(marker.read_text())
            log.warning("%s: checkpoint %s is incomplete (no %s); not loading it", self.root, tag, MARKER)
        return None

    def load(self, engine, tag: str, module_only: bool = False) -> None:
        """Weights (and, unless module_only, optimizer, schedule and RNG states) of `tag` into `engine`."""
        if not (self.root / tag / MARKER).exists():
            raise XdtError(f"{self.root / tag}: incomplete checkpoint (no {MARKER}); refusing to load it")
        path, client = engine.load_checkpoint(str(self.root), tag, load_module_only=module_only,
                                              load_optimizer_states=not module_only,
                                              load_lr_scheduler_states=not module_only)
        if path is None:
            raise XdtError(f"{self.root / tag}: DeepSpeed could not load this checkpoint")
        if not module_only and client and "rng" in client:
            set_rng_state(client["rng"])

    def consolidated(self, tag: str) -> dict[str, torch.Tensor]:
        """The full fp32 state dict of `tag`, gathered from every rank's shards (DeepSpeed's zero_to_fp32)."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        if not (self.root / tag / MARKER).exists():
            raise XdtError(f"{self.root / tag}: incomplete checkpoint (no {MARKER}); refusing to load it")
        return get_fp32_state_dict_from_zero_checkpoint(str(self.root), tag)

    def _prune(self, keep: str) -> None:
        if self.keep_last <= 0:
            return
        complete = sorted((p.parent for p in self.root.glob(f"*/{MARKER}")), key=lambda p: _step(p / MARKER))
        for old in complete[:-self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


def _step(marker: Path) -> int:
    try:
        return int(json.loads(marker.read_text()).get("global_step", -1))
    except (OSError, ValueError):
        return -1


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
