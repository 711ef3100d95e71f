"""No code from a file runs: every `torch.load` inside `weights_only_loads()` is `weights_only=True`.

DeepSpeed loads its checkpoints with `torch.load(weights_only=False)` (`engine.load_checkpoint` through its
checkpoint engine, `zero_to_fp32` for consolidation), which unpickles anything, code included. xdt calls those
functions only inside `weights_only_loads()`: for its duration `torch.load` is replaced by a wrapper that forces
`weights_only=True` and allows, besides tensors and plain containers, only the few classes DeepSpeed's own
checkpoints hold (found by loading real ZeRO-0...3 checkpoints, fp32/bf16, with and without offload, written by
xdt). A file that needs anything else (a pickled function call, any other class) is refused with one line naming
the file, before any of it runs.

Everything else xdt reads is data by construction: model weights through safetensors only (a model folder's
pickled `.bin`/`.pt` weights are refused by name before anything opens them: `check_model_weights`), caches as
`.npy` (`allow_pickle=False`) and JSON, restore snapshots and per-rank RNG states as safetensors.
"""

from __future__ import annotations

import functools
import pickle
import re
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from xdt.errors import XdtError


class UnsafeCheckpoint(XdtError):
    """A checkpoint file that would run code (or build objects outside the allowlist) when loaded."""


def _deepspeed_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _numpy_globals() -> list:
    """numpy arrays as plain data (no object arrays' items beyond the allowlist): checkpoints written before
    per-rank RNG files kept numpy's RNG state in DeepSpeed's client_state."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


@functools.cache
def safe_globals() -> tuple:
    """The classes and functions a weights-only load may build, beyond torch's own allowlist."""
    return tuple(_deepspeed_globals() + _numpy_globals())


def _allowed():
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; 2.4 has only the global list
    if scoped is not None:
        return scoped(list(safe_globals()))
    torch.serialization.add_safe_globals(list(safe_globals()))
    return nullcontext()


_lock = threading.RLock()  # one patch at a time; nested blocks restore what they found


def _refusal(source, err: Exception) -> UnsafeCheckpoint:
    text = str(err).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        what = f"it would call or build {found.group(1)}"
    else:  # torch's message is many lines: keep the first
        what = text.splitlines()[0] if text else type(err).__name__
    return UnsafeCheckpoint(f"{source}: refusing to load: {what} (xdt loads checkpoints with "
                            "torch.load(weights_only=True); a file that holds pickled code or objects is not "
                            "a checkpoint xdt wrote)")


def safe_torch_load(f, map_location=None, pickle_module=None, *, weights_only=None, **kwargs):
    """`torch.load(f, weights_only=True)` with DeepSpeed's allowlist; a refusal is one `UnsafeCheckpoint` line."""
    del pickle_module, weights_only  # never a caller's choice
    with _allowed():
        try:
            return torch.serialization.load(f, map_location=map_location, weights_only=True, **kwargs)
        except pickle.UnpicklingError as err:
            raise _refusal(getattr(f, "name", f), err) from None
        except (RuntimeError, EOFError) as err:  # torch's zip reader on a file cut short, e.g. by a full disk
            first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
            raise XdtError(f"{getattr(f, 'name', f)}: truncated or damaged checkpoint file ({first})") from None


@contextmanager
def weights_only_loads():
    """Within the block, every `torch.load` in this process (DeepSpeed's included) is `safe_torch_load`."""
    with _lock:
        saved = torch.load
        torch.load = safe_torch_load
        try:
            yield
        finally:
            torch.load = saved


def check_safetensors(folder: str | Path) -> None:
    """Every `*.safetensors` file of `folder` opens: its header reads and covers the whole file. A truncated or
    empty weights file is one line naming it, found before any model is built from it."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise XdtError(f"{path}: not a complete safetensors file ({err}); it is truncated or damaged, write "
                           "it again") from None


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_model_weights(folder: str | Path, key: str = "") -> None:
    """A model folder xdt builds a model from holds safetensors weights, whole (`check_safetensors`). Pickled
    weights (`pytorch_model.bin`, `*.pt`) are refused by name before anything opens them: torch unpickles such a
    file to read it, and a pickle can run code. `key` (e.g. "teacher.model") starts the message."""
    folder = Path(folder)
    where = f"{key}: " if key else ""
    if any(folder.glob("*.safetensors")):
        check_safetensors(folder)
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_WEIGHTS) if folder.is_dir() else []
    if pickled:
        raise XdtError(f"{where}{folder / pickled[0]}: pickled weights, refused unopened (unpickling can run code "
                       "the file holds); xdt loads models from safetensors only: if you trust the file, re-save the "
                       "model with save_pretrained(DIR), which writes model.safetensors")
    raise XdtError(f"{where}{folder}: no model weights (expected model.safetensors, or *.safetensors shards)")
