"""Sequence classification: teacher fine-tuning, dev accuracy, and the stage schedule for a classifier pair.

The task-agnostic route of XtremeDistilTransformers: fine-tune a teacher on a source task (e.g. MNLI), distil it
through the stages into a small student (hidden states and logits on [CLS], then labels), and fine-tune that
universal student on a target task with `train_classifier_teacher(..., model=student)`.

`train_classifier_teacher`: setup (ranks, model, DeepSpeed engine) -> train (steps, dev accuracy every
`eval_every` steps, early stopping) -> save (the best dev checkpoint as an HF folder) -> cleanup, as
`xdt.distill.teacher_train` does for NER. Model selection is the mean over languages of dev accuracy (percent);
macro-F1 is reported alongside.

`distill_classifier` is `xdt.distill.train.distill` with three differences: batches come from
`ClassificationBatcher`, the models also get `token_type_ids` (sentence pairs), and dev accuracy selects the
student. Once `distill()` takes a batcher and a score function and forwards `token_type_ids`, this loop is
that call (see the module's tail).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import numpy as np
import torch
from sklearn.metrics import f1_score  # a dependency of seqeval
from torch import nn

from xdt.config import RunConfig
from xdt.data.align import IGNORE_INDEX
from xdt.data.classification import ClassificationBatcher, ClassificationData, ClassificationFeatures, \
    ClassificationSplit
from xdt.distill.losses import DistillLoss, HiddenProjector
from xdt.distill.optim import make_optimizer, make_scheduler
from xdt.distill.strategies import resolve_stages
from xdt.distill.train import OUTPUT_TERMS, DistillResult, _to, phase_steps, stage_losses
from xdt.distill.unfreeze import UnfreezePlan, keep_frozen_names
from xdt.engine.distributed import init_distributed, is_main, rank, world_size
from xdt.engine.ds_config import build_ds_config, zero_stage
from xdt.engine.hf_save import save_hf
from xdt.engine.metrics import MetricsLog, progress_bar
from xdt.errors import XdtError
from xdt.models.layer_map import resolve_layer_map
from xdt.models.teacher import build_teacher

log = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    """The encoder inputs of a batch: ids, attention mask and (sentence pairs) token types."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


# --------------------------------------------------------------------------------------------- dev scores


@torch.inference_mode()
def predict_classes(model: nn.Module, features: ClassificationFeatures, batch_size: int, pad_id: int,
                    device: torch.device | None = None) -> np.ndarray:
    """The argmax class id of every example, in example order (batches sorted by length: little padding)."""
    device = device or next(model.parameters()).device
    batcher = ClassificationBatcher(features, pad_id)
    out = np.full(features.num_windows, -1, np.int64)
    for batch in batcher.epoch(batch_size, seed=0, epoch=0, shuffle=False):
        logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits
        out[batch["window"].numpy()] = logits.argmax(-1).cpu().numpy()
    return out


@dataclass
class DevAccuracy:
    accuracy: float  # percent, mean over languages: the selection metric
    macro_f1: float  # percent, mean over languages
    per_language: dict[str, dict[str, float]]  # lang -> {"accuracy", "macro_f1", "examples"}


def scores(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over every label of the model, absent ones scoring 0 as sklearn does), percent."""
    keep = gold != IGNORE_INDEX
    gold, pred = gold[keep], pred[keep]
    if not len(gold):
        raise XdtError("dev split has no labeled examples")
    return {"accuracy": 100.0 * float((gold == pred).mean()),
            "macro_f1": 100.0 * float(f1_score(gold, pred, labels=list(range(num_labels)), average="macro",
                                               zero_division=0)),
            "examples": int(len(gold))}


def dev_accuracy(model: nn.Module, dev: dict[str, ClassificationSplit], num_labels: int, pad_id: int,
                 batch_size: int = 64) -> DevAccuracy:
    was_training = model.training
    model.eval()
    try:
        per_language = {lang: scores(split.features.labels, predict_classes(model, split.features, batch_size,
                                                                             pad_id), num_labels)
                        for lang, split in dev.items()}
    finally:
        model.train(was_training)
    mean = lambda key: sum(s[key] for s in per_language.values()) / len(per_language)  # noqa: E731
    return DevAccuracy(mean("accuracy"), mean("macro_f1"), per_language)


# --------------------------------------------------------------------------------------------- teacher


@dataclass
class ClassifierResult:
    path: Path  # the best dev checkpoint, an HF folder
    best_dev_accuracy: float
    best_dev_macro_f1: float
    steps: int
    stopped_early: bool


def train_classifier_teacher(cfg: RunConfig, data: ClassificationData, out_dir: str | Path,
                             model: nn.Module | None = None, name: str = "teacher") -> ClassifierResult:
    """Fine-tune `model` (default: `build_teacher(cfg.teacher, task="sequence")`) with `cfg.teacher`'s schedule.

    Fine-tuning a distilled student on a target task is the same call with `model=student` (or `teacher.model`
    pointing at the student folder) and a `name` such as "student_finetuned".
    """
    # ---- setup
    init_distributed()
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    tokenizer = data.tokenizer
    tc = cfg.teacher
    if model is None:
        model = build_teacher(tc, vocab_size=len(tokenizer), labels=data.labels, task="sequence",
                              pad_token_id=tokenizer.pad_token_id)
    batcher = ClassificationBatcher(data.train.features, tokenizer.pad_token_id)
    world = world_size()
    steps_per_epoch = max(1, batcher.num_batches(tc.batch_size, world))
    total = max(1, math.ceil(tc.epochs * steps_per_epoch))
    eval_every = tc.eval_every or steps_per_epoch
    ds_config = build_ds_config(cfg.deepspeed, tc.batch_size, world)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], tc.lr, weight_decay=0.01)
    scheduler = make_scheduler(optimizer, "linear", total, int(tc.warmup_ratio * total))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config)
    zero3 = zero_stage(ds_config) == 3
    metrics = MetricsLog(out_dir, name, cfg.output.tensorboard)
    best_path = out_dir / name

    # ---- train
    best, best_f1, bad, step, epoch, stopped = -1.0, -1.0, 0, 0, 0, False
    progress = progress_bar(total, name)
    while step < total and not stopped:
        for batch in batcher.epoch(tc.batch_size, cfg.seed, epoch, rank=rank(), world=world):
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            out = engine(**model_inputs(batch), labels=batch["labels"])
            engine.backward(out.loss)
            engine.step()
            step += 1
            progress.update(1)
            metrics.log(step, **{f"{name}/loss": out.loss.item(), f"{name}/lr": scheduler.get_last_lr()[0]})
            if step % eval_every == 0 or step == total:
                dev = dev_accuracy(engine.module, data.dev, len(data.labels), tokenizer.pad_token_id,
                                   cfg.eval.batch_size)
                metrics.log(step, **{f"{name}/dev_accuracy": dev.accuracy, f"{name}/dev_macro_f1": dev.macro_f1})
                progress.set_postfix(dev_acc=f"{dev.accuracy:.2f}")
                if is_main():
                    log.info("%s step %d/%d: loss %.4f, dev accuracy %.2f, macro-F1 %.2f", name, step, total,
                             out.loss.item(), dev.accuracy, dev.macro_f1)
                if dev.accuracy > best:
                    best, best_f1, bad = dev.accuracy, dev.macro_f1, 0
                    save_hf(engine.module, best_path, tokenizer, zero3=zero3)
                else:
                    bad += 1
                    if tc.early_stopping_patience and bad >= tc.early_stopping_patience:
                        stopped = True
                        log.info("%s: dev accuracy did not improve for %d evaluations; stopping at step %d",
                                 name, bad, step)
            if step >= total or stopped:
                break
        epoch += 1

    # ---- cleanup
    progress.close()
    metrics.close()
    engine.destroy()
    del engine, optimizer
    return ClassifierResult(best_path, best, best_f1, step, stopped)


def load_classifier(path: str | Path, labels: list[str], eager: bool = False) -> nn.Module:
    """A fine-tuned sequence classifier folder for inference; its label order must be the run's."""
    from transformers import AutoModelForSequenceClassification

    kwargs = {"attn_implementation": "eager"} if eager else {}
    model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True, **kwargs)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if names != list(labels):
        raise XdtError(f"{path}: classifier labels {names} differ from the data's {labels}; fine-tune it on this "
                       "label set")
    return model


# --------------------------------------------------------------------------------------------- distillation


class ClassifyStep(nn.Module):
    """Student forward + the stage's losses, as `xdt.distill.train.DistillStep`, with `token_type_ids` passed to
    the student (sentence pairs). One module, so the DeepSpeed engine owns the student and the projector."""

    def __init__(self, student: nn.Module, distill_loss: DistillLoss | None, label_loss: DistillLoss | None):
        super().__init__()
        self.student = student
        self.distill_loss = distill_loss
        self.label_loss = label_loss

    def _student(self, batch: dict, loss: DistillLoss):
        return self.student(**model_inputs(batch), output_hidden_states=loss.needs_hidden_states,
                            output_attentions=loss.needs_attentions)

    def forward(self, batch: dict, teacher_out=None, labeled: dict | None = None):
        total = 0.0
        terms: dict[str, torch.Tensor] = {}
        if self.distill_loss is not None:
            out = self._student(batch, self.distill_loss)
            loss, t = self.distill_loss(out, teacher_out, mask=batch["word_index"] >= 0,
                                        attention_mask=batch["attention_mask"], labels=batch["labels"])
            total, terms = total + loss, {**terms, **t}
        if self.label_loss is not None:
            lab = labeled if labeled is not None else batch
            out = self._student(lab, self.label_loss)
            loss, t = self.label_loss(out, None, labels=lab["labels"])
            total, terms = total + loss, {**terms, **t}
        return total, terms


def _cycle(batcher: ClassificationBatcher, batch_size: int, seed: int):
    for epoch in itertools.count():
        yield from batcher.epoch(batch_size, seed, epoch, rank=rank(), world=world_size())


def distill_classifier(cfg: RunConfig, data: ClassificationData, teacher: nn.Module, student: nn.Module,
                       out_dir: str | Path, teacher_device: torch.device | None = None,
                       teacher_dtype: torch.dtype = torch.float32) -> DistillResult:
    """The stage schedule (`cfg.distill.strategy` or `cfg.stages`) for a sequence-classification pair.

    History entries and `DistillResult.best_dev_f1` hold the mean dev *accuracy* (percent) under the keys the NER
    loop uses, so reports and `xdt run` read both alike. `cfg.distill.mask_padding` with the batcher's [CLS]-only
    `word_index` makes the hidden and attention terms count [CLS] alone.
    """
    # ---- setup
    init_distributed()
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    tokenizer = data.tokenizer
    pad_id = tokenizer.pad_token_id
    stages = resolve_stages(cfg)
    teacher.eval().requires_grad_(False)
    teacher.to(device=teacher_device or torch.device("cpu"), dtype=teacher_dtype)
    projector = None
    if any(s.losses.get("hidden", 0) > 0 for s in stages):
        pairs = resolve_layer_map(cfg.distill.layer_map, student.config.num_hidden_layers,
                                  teacher.config.num_hidden_layers)
        projector = HiddenProjector(pairs, student.config.hidden_size, teacher.config.hidden_size,
                                    cfg.distill.projection_dropout)
    bs, world = cfg.distill.batch_size, world_size()
    ds_config = build_ds_config(cfg.deepspeed, bs, world)
    zero3 = zero_stage(ds_config) == 3
    batchers = {"transfer": ClassificationBatcher(data.transfer.features, pad_id),
                "labeled": ClassificationBatcher(data.train.features, pad_id)}
    keep_frozen = keep_frozen_names(student, cfg.student)
    metrics = MetricsLog(out_dir, "distill", cfg.output.tensorboard)
    best_path = out_dir / "student_best"
    best, global_step, history = -1.0, 0, []

    for s_idx, stage in enumerate(stages):
        key = f"stages.{s_idx}" if cfg.distill.strategy is None else f"distill.strategy {cfg.distill.strategy} " \
                                                                      f"stage {s_idx} ({stage.name})"
        uses_hidden = stage.losses.get("hidden", 0) > 0
        distill_loss, label_loss = stage_losses(stage, cfg, student, teacher, projector if uses_hidden else None,
                                                key)
        module = ClassifyStep(student, distill_loss, label_loss)
        if projector is not None and not uses_hidden:
            projector.requires_grad_(False)
        plan = UnfreezePlan(student, projector if uses_hidden else None, keep_frozen)
        main_data = "labeled" if stage.data == "labeled" else "transfer"
        phases = list(range(plan.num_steps)) if stage.gradual_unfreeze else [None]
        trains_output = any(stage.losses.get(t, 0) > 0 for t in OUTPUT_TERMS)

        for phase in phases:
            # ---- one unfreeze step: what trains, optimizer, schedule, engine
            trainable = plan.apply(phase) if phase is not None else plan.apply_all()
            params = [p for p in module.parameters() if p.requires_grad]
            steps = phase_steps(stage, batchers[main_data].num_batches(bs, world))
            optimizer = make_optimizer(params, stage.lr)
            scheduler = make_scheduler(optimizer, stage.schedule, steps, stage.warmup_steps)
            engine, optimizer, _, scheduler = deepspeed.initialize(model=module, optimizer=optimizer,
                                                                   model_parameters=params,
                                                                   lr_scheduler=scheduler, config=ds_config)
            label = stage.name + (f" [{plan.group_names[phase]}]" if phase is not None else "")
            progress = progress_bar(steps, f"S{s_idx + 1} {label}")
            seed = cfg.seed + 1000 * s_idx + (phase or 0)
            main_iter = _cycle(batchers[main_data], bs, seed)
            labeled_iter = _cycle(batchers["labeled"], bs, seed + 7) if stage.data == "both" else None
            losses = []
            for _ in range(steps):
                batch = {k: v.to(engine.device) for k, v in next(main_iter).items()}
                labeled = ({k: v.to(engine.device) for k, v in next(labeled_iter).items()}
                           if labeled_iter is not None else None)
                teacher_out = None
                if distill_loss is not None and distill_loss.needs_teacher:
                    with torch.no_grad():
                        teacher_out = teacher(**{k: v.to(teacher.device) for k, v in model_inputs(batch).items()},
                                              output_hidden_states=distill_loss.needs_hidden_states,
                                              output_attentions=distill_loss.needs_attentions)
                    teacher_out = _to(teacher_out, engine.device)
                loss, terms = engine(batch, teacher_out, labeled)
                engine.backward(loss)
                engine.step()
                global_step += 1
                losses.append(loss.item())
                progress.update(1)
                metrics.log(global_step, **{"distill/loss": losses[-1], "distill/stage": s_idx,
                                            "distill/lr": scheduler.get_last_lr()[0],
                                            **{f"distill/{k}": v.item() for k, v in terms.items()}})
            progress.close()
            entry = {"stage": s_idx, "name": stage.name, "phase": phase, "group": label, "steps": steps,
                     "trainable": len(trainable), "first_loss": losses[0], "last_loss": losses[-1]}
            if trains_output:
                dev = dev_accuracy(student, data.dev, len(data.labels), pad_id, cfg.eval.batch_size)
                entry["dev_f1"] = entry["dev_accuracy"] = dev.accuracy
                entry["dev_macro_f1"] = dev.macro_f1
                metrics.log(global_step, **{"distill/dev_accuracy": dev.accuracy,
                                            "distill/dev_macro_f1": dev.macro_f1})
                if dev.accuracy > best:
                    best = dev.accuracy
                    save_hf(student, best_path, tokenizer, zero3=zero3)
            history.append(entry)
            if is_main():
                log.info("stage %d %s: loss %.4f -> %.4f%s", s_idx + 1, label, losses[0], losses[-1],
                         f", dev accuracy {entry['dev_accuracy']:.2f}" if "dev_accuracy" in entry else "")
            engine.destroy()  # removes ZeRO's gradient hooks: the next unfreeze step builds its own engine
            del engine, optimizer, scheduler

    if best < 0:  # no stage trained the output: keep the final student
        save_hf(student, best_path, tokenizer, zero3=zero3)
    metrics.close()
    return DistillResult(best_path, best, global_step, history)


def dev_score_fn(cfg: RunConfig, data: ClassificationData):
    """The selection metric as a function of the model, for `distill(..., score_fn=...)` once it takes one."""
    return lambda model: dev_accuracy(model, data.dev, len(data.labels), data.tokenizer.pad_token_id,
                                      cfg.eval.batch_size).accuracy


# Once xdt/distill/train.py's `distill()` takes `batcher=` and `score_fn=` and forwards `token_type_ids`
# (DistillStep._student and the teacher call), `distill_classifier`, `ClassifyStep` and `_cycle` reduce to:
#
#     distill(cfg, data, teacher, student, out_dir, teacher_device, teacher_dtype,
#             batcher=ClassificationBatcher, score_fn=dev_score_fn(cfg, data), score_name="dev_accuracy")
