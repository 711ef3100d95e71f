"""The parts of a distillation step: the student forward with its stage's losses in one module (what the
DeepSpeed engine wraps), the losses of a stage, its step budget, the batches of a rank, the teacher outputs a step
reads, and where a run resumes. The loop that drives them is `xdt.recipes.distill`.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
from torch import nn

from xdt.config import RunConfig, StageConfig
from xdt.data.batching import WindowBatcher
from xdt.data.classification import model_inputs
from xdt.distill.losses import DistillLoss, HiddenProjector
from xdt.distill.teacher_cache import TeacherCache
from xdt.engine.distributed import rank, world_size
from xdt.engine.checkpoint import Checkpointer
from xdt.errors import ConfigError, XdtError
from xdt.models.layer_map import resolve_layer_map

log = logging.getLogger(__name__)


class DistillStep(nn.Module):
    """Student forward + loss in one module, so the DeepSpeed engine owns every trained parameter (the
    projector too) and ZeRO-3 gathers them inside its forward.

    Registered submodules are the student and the projector only, the same in every stage, so any checkpoint
    loads into any stage's engine; the stage's loss modules are plain attributes set with `set_losses`."""

    def __init__(self, student: nn.Module, projector: HiddenProjector | None, every_token: bool = False):
        super().__init__()
        self.student = student
        self.projector = projector
        self.every_token = every_token  # distill.positions tokens: every real token, not just first sub-words
        self._losses: tuple[DistillLoss | None, DistillLoss | None] = (None, None)

    def set_losses(self, distill_loss: DistillLoss | None, label_loss: DistillLoss | None) -> None:
        self._losses = (distill_loss, label_loss)

    def _student(self, batch: dict, loss: DistillLoss):
        return self.student(**model_inputs(batch), output_hidden_states=loss.needs_hidden_states,
                            output_attentions=loss.needs_attentions)

    def forward(self, batch: dict | None, teacher_out=None, labeled: dict | None = None):
        distill_loss, label_loss = self._losses
        total = 0.0
        terms: dict[str, torch.Tensor] = {}
        if distill_loss is not None:
            out = self._student(batch, distill_loss)
            mask = batch["attention_mask"] > 0 if self.every_token else batch["word_index"] >= 0
            loss, t = distill_loss(out, teacher_out, mask=mask,
                                   attention_mask=batch["attention_mask"], labels=batch["labels"])
            total, terms = total + loss, {**terms, **t}
        if label_loss is not None:
            lab = labeled if labeled is not None else batch
            out = self._student(lab, label_loss)
            loss, t = label_loss(out, None, labels=lab["labels"])
            total, terms = total + loss, {**terms, **t}
        return total, terms


def stage_losses(stage: StageConfig, cfg: RunConfig, student, teacher_config, projector: HiddenProjector | None,
                 key: str) -> tuple[DistillLoss | None, DistillLoss | None]:
    """(terms on the stage's distillation batches, the labels term on labeled batches) for one stage."""
    weights = {k: v for k, v in stage.losses.items() if v > 0}
    if not weights:
        raise ConfigError(f"{key}.losses: no term has a positive weight")
    if stage.data == "transfer" and "labels" in weights:
        raise ConfigError(f"{key}.losses: the labels term needs labeled data; set {key}.data to labeled or both")
    labels_w = weights.pop("labels", None) if stage.data == "both" else None
    common = dict(student_layers=student.config.num_hidden_layers, teacher_layers=teacher_config.num_hidden_layers,
                  student_hidden=student.config.hidden_size, teacher_hidden=teacher_config.hidden_size, key=key)
    distill = DistillLoss.from_config(cfg.distill, weights, projector=projector, **common) if weights else None
    labels = DistillLoss.from_config(cfg.distill, {"labels": labels_w}, **common) if labels_w else None
    return distill, labels


def phase_steps(stage: StageConfig, batches_per_epoch: int, accumulation: int = 1) -> int:
    """Optimizer steps of one stage (or unfreeze step): `steps`, or `epochs` of this rank's micro-batches."""
    if stage.steps > 0:
        return stage.steps
    return max(1, math.ceil(stage.epochs * batches_per_epoch / accumulation))


def batches_from(batcher: WindowBatcher, batch_size: int, seed: int, start: int):
    """This rank's batches of an endless sequence of epochs, from its `start`-th batch on (resume)."""
    world = world_size()
    epoch, index = divmod(start, batcher.num_batches(batch_size, world))
    yield from batcher.epoch(batch_size, seed, epoch, rank=rank(), world=world, start_batch=index * world)
    for e in itertools.count(epoch + 1):
        yield from batcher.epoch(batch_size, seed, e, rank=rank(), world=world)


def cached_layers(cfg: RunConfig, student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher hidden states the cache must hold: `distill.cache_layers`, or those the layer map pairs."""
    if cfg.distill.cache_layers is not None:
        return sorted(cfg.distill.cache_layers)
    if not any(s.losses.get("hidden", 0) > 0 for s in cfg.stages):
        return []
    return sorted({t for _, t in resolve_layer_map(cfg.distill.layer_map, student_layers, teacher_layers)
                   if t >= 0})


def stage_reads_cache(stage: StageConfig, cache: TeacherCache | None, cfg: RunConfig) -> bool:
    """The cache holds the teacher outputs of the transfer set; attention maps are never cached."""
    return cache is not None and stage.data != "labeled" and cfg.distill.attention_loss == "none"


def check_cross_tokenizer(cfg: RunConfig, data) -> None:
    """Attention maps compare token with token: across tokenizers they are refused, never dropped."""
    if getattr(data, "teacher", None) is not None and cfg.distill.attention_loss != "none":
        raise ConfigError(f"distill.attention_loss: is {cfg.distill.attention_loss!r}, but the teacher's tokenizer "
                          "is not the student's and attention maps compare token with token; set "
                          "distill.attention_loss: none (hidden states and logits are compared word by word)")


def teacher_runner(teacher: nn.Module, hidden_states: bool, dev: torch.device):
    """`run(input_ids, attention_mask)` -> the frozen teacher's logits and hidden states on `dev`, in float32."""
    def run(ids: torch.Tensor, mask: torch.Tensor) -> dict:
        out = teacher(input_ids=ids.to(teacher.device), attention_mask=mask.to(teacher.device),
                      output_hidden_states=hidden_states)
        return teacher_outputs_to(out, dev)

    return run


def teacher_states(loss: DistillLoss) -> list[int]:
    """The teacher hidden states a loss reads (those its layer map pairs), none without the hidden term."""
    if not loss.needs_hidden_states:
        return []
    return sorted({t for _, t in loss.projector.layer_map})


def resume_point(ckpt: Checkpointer, resume: str) -> tuple[str, dict] | None:
    """The checkpoint to continue from; refuses to start over a run that has checkpoints unless asked."""
    found = ckpt.latest()
    if resume == "auto":
        if found is not None:
            ckpt.verify(found[0])  # a damaged file is found now, not after the engine is built
        return found
    if found is not None:
        raise XdtError(f"{ckpt.root}: holds checkpoints of an earlier run (newest: {found[0]}); continue it with "
                       "output.resume=auto (--resume auto), choose another output.dir, or pass --overwrite to "
                       "start over")
    return None


def teacher_outputs_to(output, dev: torch.device):
    """Teacher outputs (logits, hidden states, attentions) on the student's device, in float32."""
    def move(x):
        if x is None:
            return None
        if isinstance(x, (tuple, list)):
            return type(x)(move(t) for t in x)
        return x.to(device=dev, dtype=torch.float32)

    return {"logits": move(output.logits), "hidden_states": move(getattr(output, "hidden_states", None)),
            "attentions": move(getattr(output, "attentions", None))}
