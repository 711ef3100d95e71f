"""The teacher: a local HF encoder folder with a (new) token/sequence classification head, or a random BERT.

A random BERT of TeacherConfig's shape is what the offline quickstart and the tests fine-tune; a real run points
`teacher.model` at a local folder (e.g. mBERT). The head is re-initialised when the folder's head has another
label set (`ignore_mismatched_sizes`), which is the usual case when fine-tuning a masked-LM checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig,
                          PreTrainedModel)

from xdt.config import TeacherConfig
from xdt.engine.distributed import device
from xdt.engine.safe_load import check_model_weights
from xdt.engine.zero3 import build_model, from_pretrained
from xdt.errors import ConfigError, XdtError
from xdt.models.student import Task, model_class, label_maps


def build_teacher(cfg: TeacherConfig, *, vocab_size: int, labels: Sequence[str], task: Task = "token",
                  pad_token_id: int = 0, attn_implementation: str | None = None) -> PreTrainedModel:
    """`cfg.model` loaded with a head for `labels`, or (empty `cfg.model`) a random BERT of `cfg`'s shape.

    `vocab_size` sizes the random BERT (the tokenizer's vocabulary) and is checked against a loaded folder.
    Inside `xdt.engine.zero3.zero3_build` (ZeRO-3) either is built partitioned: every rank must call this.
    """
    if cfg.model:
        return _load_teacher(cfg, vocab_size=vocab_size, labels=labels, task=task,
                             attn_implementation=attn_implementation)
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"teacher.{key}: expected a positive integer, got {value!r}")
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"teacher.hidden_size: {cfg.hidden_size} is not divisible by teacher.num_heads "
                          f"{cfg.num_heads}")
    config = BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                        pad_token_id=pad_token_id, **label_maps(labels))
    model = build_model(model_class(config, task), config)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    return model


def teacher_hidden_size(cfg: TeacherConfig) -> int:
    """The hidden size of the teacher `build_teacher` builds (sizes ZeRO-3's buckets before it exists)."""
    if not cfg.model:
        return cfg.hidden_size
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(cfg.model).hidden_size


def _load_teacher(cfg: TeacherConfig, *, vocab_size: int, labels: Sequence[str], task: Task,
                  attn_implementation: str | None) -> PreTrainedModel:
    folder = Path(cfg.model)
    if not folder.is_dir():
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ConfigError(f"teacher.model: {cfg.model} is not a local folder"
                          + (" (HF_HUB_OFFLINE=1: hub names cannot be fetched)" if offline else ""))
    if not (folder / "config.json").is_file():
        raise ConfigError(f"teacher.model: no config.json in {cfg.model}")
    check_model_weights(folder, "teacher.model")  # a pickled .bin is refused before torch opens it
    auto = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = from_pretrained(auto, str(folder), weights_only=True, trust_remote_code=cfg.trust_remote_code,
                                **label_maps(labels), **kwargs)  # ignore_mismatched_sizes, also partitioned
    except (OSError, ValueError) as err:
        raise ConfigError(f"teacher.model: cannot load {cfg.model}: {err}") from err
    if model.config.vocab_size < vocab_size:  # larger is fine: some checkpoints pad the matrix
        raise ConfigError(f"teacher.model: {cfg.model} has {model.config.vocab_size} word embeddings, fewer than "
                          f"the tokenizer's {vocab_size} pieces; use the teacher's own tokenizer")
    return model


def load_teacher_model(path: str | Path, labels: list[str], eager: bool, task: str = "token"):
    """A fine-tuned teacher folder for inference. Its label order must be the run's."""
    kwargs = {"attn_implementation": "eager"} if eager else {}
    auto = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    model = auto.from_pretrained(str(path), use_safetensors=True, **kwargs)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if names != list(labels):
        raise XdtError(f"{path}: teacher labels {names} differ from the data's {labels}; fine-tune the teacher on "
                       "this label set (xdt teacher train)")
    return model


def teacher_device_dtype() -> tuple[torch.device, torch.dtype]:
    """Where a frozen teacher runs during distillation: bf16 on GPUs that have it, fp32 on CPU."""
    dev = device()
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return dev, torch.bfloat16
    return dev, torch.float32
