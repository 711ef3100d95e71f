"""Saving the model a DeepSpeed engine trains as a standard HF folder (safetensors), atomically, from rank 0."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from xdt.engine.distributed import barrier, is_main

# config.json key of a model xdt trained: the sub-words per window it was trained and selected with
# (data.max_seq_length). `xdt eval` scores with the same windows unless --max-seq-length says otherwise, so the
# model that `xdt run` scores and the exported one give one score.
WINDOW_KEY = "xdt_max_seq_length"


def save_hf(model: torch.nn.Module, out: str | Path, tokenizer=None, zero3: bool = False,
            max_seq_length: int | None = None) -> Path:
    """`model.save_pretrained(out)` (+ tokenizer), replacing `out` only once the new folder is complete.
    `max_seq_length`: recorded in config.json as `WINDOW_KEY`.

    Under ZeRO-3 each rank holds a shard of every parameter: they are gathered one layer at a time (a collective:
    every rank must call this) and only rank 0 keeps the values and writes, so no other rank ever holds the whole
    model and rank 0 holds it once.
    """
    out = Path(out)
    if max_seq_length is not None:
        setattr(model.config, WINDOW_KEY, int(max_seq_length))
    if zero3:
        from xdt.engine.zero3 import gathered

        state = model.state_dict() if is_main() else {}  # buffers; parameters are empty shards, replaced below
        for prefix, module in model.named_modules(remove_duplicate=False):  # tied weights under each name
            params = dict(module.named_parameters(prefix=prefix, recurse=False))
            with gathered(params.values()):
                if is_main():
                    state.update({k: p.detach().clone() for k, p in params.items()})
        if is_main():
            _write(model, out, tokenizer, state)
    elif is_main():
        _write(model, out, tokenizer, None)
    barrier()
    return out


def _write(model, out: Path, tokenizer, state_dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
