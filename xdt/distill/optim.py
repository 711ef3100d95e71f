"""Optimizer and learning-rate schedule of a training phase (torch AdamW: nothing to JIT-compile on CPU)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (CPU and CUDA): on a 15M-parameter mBERT embedding table the loop version
    spends ~150 ms per CPU step, the fused one ~10 ms (benchmarks/distill_step.py)."""
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, fused=True)


def lr_factor(schedule: str, step: int, total: int, warmup: int, floor: float = 1e-5) -> float:
    """Multiplier of the base LR at `step`: linear warmup, then constant, linear decay or cosine to `floor`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(floor, 1.0 - progress)
    if schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_steps: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, total_steps, warmup_steps))
