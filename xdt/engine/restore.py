"""Restore-to-best between unfreeze steps (XtremeDistil's algorithm): a snapshot of the best dev weights on disk,
and putting them back into a live DeepSpeed engine, whatever its ZeRO stage.

Why on disk: a run resumed after preemption must restore the same weights as the uninterrupted run, and the
snapshot may be newer than the exported best student (a stage without a dev score in between resets the anchor).
Rank 0 writes `path` atomically (safetensors, float32); every rank reads it back (a shared filesystem, like the
checkpoints).

Why both copies: DeepSpeed keeps the trained (low-precision or partitioned) parameters in the module and float32
master copies in its optimizer. The next unfreeze step's engine is built from the module's parameters, and a
ZeRO-3 checkpoint is consolidated from the optimizer's copies, so a restore writes both.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param, safe_set_local_fp32_param
from safetensors.torch import load_file, save_file

from xdt.engine.distributed import barrier, is_main


def _gathered(params: list[torch.nn.Parameter], zero3: bool):
    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def save_snapshot(module: torch.nn.Module, path: str | Path, zero3: bool) -> None:
    """Every parameter of `module` in float32 (the optimizer's master copy where it keeps one). A collective
    under ZeRO-3: every rank must call it."""
    state = {}
    for name, p in module.named_parameters():  # one at a time: only rank 0 keeps the values (ZeRO-3)
        with _gathered([p], zero3):
            value = p.detach().to("cpu", torch.float32, copy=True) if is_main() else None
        if p.requires_grad:
            master = safe_get_full_fp32_param(p)  # None when the engine keeps no separate master copy
            if master is not None and is_main():
                value = master.detach().to("cpu", torch.float32).reshape(value.shape).clone()
        if is_main():
            state[name] = value
    if is_main():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({n: t.contiguous() for n, t in state.items()}, str(tmp))
        os.replace(tmp, path)
    barrier()


@torch.no_grad()
def restore_snapshot(module: torch.nn.Module, path: str | Path, zero3: bool) -> list[str]:
    """Put the snapshot's values back into the parameters that train now (module and optimizer copies).

    Only trainable parameters can have moved since the snapshot: the loop snapshots or restores at the end of
    every scored unfreeze step, so each step starts from the snapshot and changes only what it trains.
    Returns the names restored."""
    state = load_file(str(path))
    restored = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        value = state[name].to(p.device)
        if zero3:  # this rank's slice of the flattened, end-padded parameter, in both copies (no collective)
            local = _local_partition(p, value)
            safe_set_local_fp32_param(p, local)
            p.ds_tensor.data.copy_(local.to(p.ds_tensor.dtype))
        else:
            safe_set_full_fp32_param(p, value)  # no-op where the engine trains the module's parameters directly
            p.data.copy_(value.reshape(p.shape).to(p.dtype))
        restored.append(name)
    return restored


@torch.no_grad()
def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`module.load_state_dict(state)`, also for a module built partitioned (ZeRO-3 zero.Init) and not yet in an
    engine: one parameter gathered at a time, so no rank holds the whole module twice."""
    from xdt.engine.zero3 import gathered, is_partitioned

    if not is_partitioned(module):
        module.load_state_dict(state)
        return
    params = dict(module.named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:  # every rank holds `state`: every rank refuses, none waits in a collective
        raise RuntimeError(f"state dict misses {len(missing)} parameters of the model: {missing[:5]}")
    for name, p in params.items():
        with gathered(p, write=True):
            p.copy_(state[name].reshape(p.shape).to(p.dtype))
    buffers = {n: b for n, b in module.named_buffers() if n in state}  # never partitioned
    for name, b in buffers.items():
        b.copy_(state[name])


def _local_partition(p: torch.nn.Parameter, value: torch.Tensor) -> torch.Tensor:
    """ZeRO-3 keeps elements [r * n, (r + 1) * n) of the flattened parameter, zero-padded to n * world, on rank r.
    (DeepSpeed's own full-parameter setter does not allow for that padding.)"""
    import torch.distributed as dist

    group = getattr(p, "ds_process_group", None)
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    r = dist.get_rank(group) if dist.is_initialized() else 0
    n = p.ds_tensor.numel()
    flat = torch.zeros(n * world, dtype=torch.float32, device=value.device)
    flat[:value.numel()] = value.flatten()
    return flat[r * n:(r + 1) * n]
