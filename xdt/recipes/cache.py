"""`xdt teacher cache`: the teacher's outputs on the transfer set, one shard per rank
(`xdt.distill.teacher_cache` writes and reads it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xdt.config import RunConfig
from xdt.distill.step import cached_layers
from xdt.distill.teacher_cache import build_teacher_cache, cache_keys
from xdt.engine.distributed import is_main, rank, world_size
from xdt.errors import ConfigError
from xdt.models.student import student_shape
from xdt.models.teacher import load_teacher_model, teacher_device_dtype
from xdt.recipes.setup import model_config


def cache_step(cfg: RunConfig, data, teacher_dir: Path) -> dict:
    """`xdt teacher cache`: the teacher's outputs on the transfer set, one shard per rank."""
    if not cfg.distill.teacher_cache:
        raise ConfigError("distill.teacher_cache: set the folder the cache goes to")
    tcfg = model_config(str(teacher_dir), "teacher.model")
    layers = cached_layers(cfg, student_shape(cfg.student).num_layers, tcfg.num_hidden_layers)
    teacher = load_teacher_model(teacher_dir, data.labels, eager=False)
    dev, dtype = teacher_device_dtype()
    teacher.to(device=dev, dtype=dtype)
    return build_teacher_cache(teacher, data.transfer.features, cfg.distill.teacher_cache, layers=layers,
                               batch_size=cfg.eval.batch_size, teacher_path=teacher_dir, rank=rank(),
                               world=world_size(), dtype=getattr(np, cfg.distill.cache_dtype),
                               pad_id=data.teacher_tokenizer.pad_token_id, progress=is_main(),
                               bridge=data.teacher.bridges["transfer"] if data.cross_tokenizer else None,
                               **cache_keys(cfg, data))
