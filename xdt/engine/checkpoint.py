"""Resumable checkpoints: `engine.save_checkpoint` on every rank, then a completion marker, then `latest`.

A tag is loaded only once rank 0 has written its `xdt_state.json` marker (the loop position) after every rank
saved, and `latest` is replaced atomically after that, so a crash mid-save is never resumed from. Each rank writes
and reads back its own RNG states; a checkpoint from another number of ranks is refused where it would set them.
Every DeepSpeed load runs inside `weights_only_loads()`: nothing pickled runs. Layout: docs/internals.md.
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from xdt.engine.distributed import barrier, is_main, rank, world_size
from xdt.engine.safe_load import weights_only_loads
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
        if len(state["cuda"]) != torch.cuda.device_count():
            log.warning("RNG states of %d CUDA devices, this process sees %d: CUDA RNG not restored",
                        len(state["cuda"]), torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(folder: Path, r: int) -> Path:
    return folder / f"rng-rank{r}.safetensors"


def save_rng(path: Path, state: dict, r: int, world: int) -> None:
    """`state` (from rng_state()) as safetensors: tensors and string metadata only, nothing pickled."""
    _, key, pos, has_gauss, cached = state["numpy"]
    version, mt, gauss_next = state["python"]
    tensors = {"torch": state["torch"], "numpy.key": torch.from_numpy(np.asarray(key, np.int64)),
               "python.state": torch.tensor(mt, dtype=torch.int64)}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(state.get("cuda", []))})
    meta = {"rank": str(r), "world_size": str(world), "numpy.pos": str(pos), "numpy.has_gauss": str(has_gauss),
            "numpy.cached_gaussian": float(cached).hex(), "python.version": str(version),
            "python.gauss_next": "none" if gauss_next is None else float(gauss_next).hex(),
            "cuda_devices": str(len(state.get("cuda", [])))}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_rng(path: Path) -> tuple[dict, dict]:
    """(state for set_rng_state, metadata) of a file written by save_rng."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        t = load_file(str(path))
        cached = float.fromhex(meta["numpy.cached_gaussian"])
        gauss = None if meta["python.gauss_next"] == "none" else float.fromhex(meta["python.gauss_next"])
        state = {"torch": t["torch"],
                 "numpy": ("MT19937", t["numpy.key"].numpy().astype(np.uint32), int(meta["numpy.pos"]),
                           int(meta["numpy.has_gauss"]), cached),
                 "python": (int(meta["python.version"]), tuple(int(x) for x in t["python.state"].tolist()), gauss)}
        if int(meta["cuda_devices"]):
            state["cuda"] = [t[f"cuda.{i}"] for i in range(int(meta["cuda_devices"]))]
        return state, meta
    except (OSError, SafetensorError, KeyError, ValueError) as err:
        raise XdtError(f"{path}: not an RNG state file written by xdt ({err})") from None


class Checkpointer:
    def __init__(self, root: str | Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def save(self, engine, tag: str, position: dict) -> None:
        """Collective: every rank calls it with the same tag."""
        engine.save_checkpoint(str(self.root), tag, save_latest=False)
        (self.root / tag).mkdir(parents=True, exist_ok=True)
        save_rng(rng_file(self.root / tag, rank()), rng_state(), rank(), world_size())
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

    def verify(self, tag: str) -> None:
        """Every file of `tag` is whole (torch's zip files end with their directory, safetensors headers cover
        their file), so a copy cut short is refused before a run resumes from it. No tensor is read."""
        import zipfile

        from safetensors import SafetensorError

        folder = self.root / tag
        for path in sorted(folder.glob("*.pt")):
            try:
                with zipfile.ZipFile(path):
                    pass
            except (zipfile.BadZipFile, OSError) as err:
                raise XdtError(f"{path}: truncated or damaged checkpoint file ({err}); {_DAMAGED_ADVICE}") from None
        for path in sorted(folder.glob("rng-rank*.safetensors")):
            try:
                with safe_open(str(path), "pt"):
                    pass
            except (SafetensorError, OSError) as err:
                raise XdtError(f"{path}: truncated or damaged checkpoint file ({err}); {_DAMAGED_ADVICE}") from None

    def load(self, engine, tag: str, module_only: bool = False) -> None:
        """Weights (and, unless module_only, optimizer, schedule and RNG states) of `tag` into `engine`."""
        if not (self.root / tag / MARKER).exists():
            raise XdtError(f"{self.root / tag}: incomplete checkpoint (no {MARKER}); refusing to load it")
        rng = None if module_only else self._own_rng(tag)
        try:
            with weights_only_loads():
                path, client = engine.load_checkpoint(str(self.root), tag, load_module_only=module_only,
                                                      load_optimizer_states=not module_only,
                                                      load_lr_scheduler_states=not module_only)
        except XdtError as err:
            raise XdtError(f"{err}; {_DAMAGED_ADVICE}") from None
        except (OSError, ValueError, KeyError, RuntimeError) as err:  # e.g. another student shape
            raise XdtError(f"{self.root / tag}: does not load into this run's model ({_first_line(err)}); "
                           f"{_RESUME_ADVICE}") from None
        if path is None:
            raise XdtError(f"{self.root / tag}: DeepSpeed could not load this checkpoint")
        if rng is None and not module_only and client and "rng" in client:  # written before per-rank files
            if world_size() > 1:
                log.warning("%s: written before per-rank RNG files; under ZeRO 0-2 every rank takes rank 0's RNG "
                            "states, so dropout differs from the uninterrupted run", self.root / tag)
            rng = client["rng"]
        if rng is not None:
            set_rng_state(rng)

    def _own_rng(self, tag: str) -> dict | None:
        """This rank's RNG states of `tag`; None for a checkpoint written before per-rank RNG files."""
        folder = self.root / tag
        saved = sorted(folder.glob("rng-rank*.safetensors"))
        if not saved:
            return None
        state, meta = load_rng(saved[0])
        world = int(meta["world_size"])
        if world != world_size() or len(saved) != world:
            raise XdtError(f"{folder}: RNG states of {world} rank(s) ({len(saved)} rng-rank*.safetensors files), "
                           f"this run has {world_size()}: resume it with {world} rank(s), where every rank "
                           "continues its own random stream")
        return load_rng(rng_file(folder, rank()))[0]

    def consolidated(self, tag: str) -> dict[str, torch.Tensor]:
        """The full fp32 state dict of `tag`, gathered from every rank's shards (DeepSpeed's zero_to_fp32)."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        if not (self.root / tag / MARKER).exists():
            raise XdtError(f"{self.root / tag}: incomplete checkpoint (no {MARKER}); refusing to load it")
        try:
            with weights_only_loads():
                return get_fp32_state_dict_from_zero_checkpoint(str(self.root), tag)
        except (OSError, ValueError, KeyError, RuntimeError) as err:  # files missing or cut short
            raise XdtError(f"{self.root / tag}: cannot read this checkpoint ({_first_line(err)})") from None

    def _prune(self, keep: str) -> None:
        if self.keep_last <= 0:
            return
        complete = sorted((p.parent for p in self.root.glob(f"*/{MARKER}")), key=lambda p: _step(p / MARKER))
        for old in complete[:-self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


_RESUME_ADVICE = "resume with the config that wrote it, or start over with --overwrite"
_DAMAGED_ADVICE = "delete that checkpoint folder to resume from the one before, or start over with --overwrite"


def _first_line(err: Exception) -> str:
    """The gist of a library error in one line (torch's load errors run over many)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(err).__name__)
    return detail[:300]


def _step(marker: Path) -> int:
    try:
        return int(json.loads(marker.read_text()).get("global_step", -1))
    except (OSError, ValueError):
        return -1


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
