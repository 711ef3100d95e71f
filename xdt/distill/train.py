"""`xdt distill`: the stage schedule, each stage (and each unfreeze step) one DeepSpeed engine.

setup (ranks, teacher frozen in eval mode, student, the shared hidden-state projector)
-> for each stage: for each unfreeze step: set what trains, build optimizer + schedule, `deepspeed.initialize`,
   run the steps (student forward/backward, teacher forward without gradients), select on dev
-> save the best dev student as an HF folder -> cleanup.

A fresh optimizer per unfreeze step, over the parameters that train in it, is what the released code does too
(it recompiles the model): frozen parameters get no update at all, not even weight decay or old momentum.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
from torch import nn

from xdt.config import OUTPUT_TERMS, RunConfig, StageConfig
from xdt.data.batching import WindowBatcher
from xdt.data.classification import model_inputs
from xdt.distill.data import TaskData
from xdt.distill.losses import DistillLoss, HiddenProjector
from xdt.distill.optim import make_optimizer, make_scheduler
from xdt.distill.selection import dev_score
from xdt.distill.teacher_cache import TeacherCache
from xdt.distill.unfreeze import UnfreezePlan, keep_frozen_names
from xdt.engine.distributed import init_distributed, is_main, rank, world_size
from xdt.engine.ds_config import build_ds_config, zero_stage
from xdt.engine.hf_save import save_hf
from xdt.engine.checkpoint import Checkpointer
from xdt.engine.metrics import MetricsLog, progress_bar
from xdt.engine.preemption import Preemption
from xdt.engine.restore import load_state, restore_snapshot, save_snapshot
from xdt.engine.zero3 import build_model, frozen_config, frozen_engine, is_partitioned, zero3_build
from xdt.errors import ConfigError, Preempted, XdtError
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


@dataclass
class DistillResult:
    path: Path  # best dev student, HF folder
    best_dev_f1: float
    steps: int
    history: list[dict] = field(default_factory=list)  # one entry per (stage, unfreeze step)


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
        return _to(out, dev)

    return run


def distill(cfg: RunConfig, data: TaskData, teacher: nn.Module | None, student: nn.Module, out_dir: str | Path,
            teacher_device: torch.device | None = None, teacher_dtype: torch.dtype = torch.float32,
            cache: TeacherCache | None = None, teacher_config=None, batcher_cls=WindowBatcher,
            score_fn: Callable[[nn.Module], float] | None = None) -> DistillResult:
    """`teacher` may be None when `cache` serves every stage that needs the teacher (pass `teacher_config`)."""
    # ---- setup
    init_distributed()
    out_dir = Path(out_dir)
    tokenizer = data.tokenizer
    stages = cfg.stages
    tcfg = teacher.config if teacher is not None else teacher_config
    bs, world, accum = cfg.distill.batch_size, world_size(), cfg.deepspeed.gradient_accumulation_steps
    ds_config = build_ds_config(cfg.deepspeed, bs, world, student.config.hidden_size)
    zero3 = zero_stage(ds_config) == 3
    teacher_engine = None
    if teacher is not None:
        teacher.eval().requires_grad_(False)
        if is_partitioned(teacher):  # built under zero3_build: an engine's hooks gather each layer for its forward
            teacher_engine = frozen_engine(teacher, frozen_config(ds_config, teacher_dtype))
            teacher.eval()
        else:
            teacher.to(device=teacher_device or torch.device("cpu"), dtype=teacher_dtype)
    if cache is not None:
        cache.check_features(data.transfer.features)
    check_cross_tokenizer(cfg, data)
    # where the teacher has its own tokenizer its outputs reach the student per word (xdt.data.word_bridge)
    bridges = data.teacher.bridges if getattr(data, "teacher", None) is not None else None
    teacher_pad = data.teacher_tokenizer.pad_token_id if bridges else None
    torch.manual_seed(cfg.seed)
    projector = None
    if any(s.losses.get("hidden", 0) > 0 for s in stages):
        pairs = resolve_layer_map(cfg.distill.layer_map, student.config.num_hidden_layers, tcfg.num_hidden_layers)
        # partitioned like the student it trains with: DeepSpeed would leave a whole part of a partitioned module
        # in fp32 on the CPU
        with zero3_build(ds_config if is_partitioned(student) else None):
            projector = build_model(HiddenProjector, pairs, student.config.hidden_size, tcfg.hidden_size,
                                    cfg.distill.projection_dropout)
    module = DistillStep(student, projector, every_token=cfg.distill.positions == "tokens"
                         and cfg.data.task == "token" and bridges is None)
    if is_partitioned(student) and is_main():
        log.info("ZeRO-3: student%s built partitioned (deepspeed.zero.Init), rank 0 holds %d of its %d parameters",
                 " and teacher" if teacher_engine is not None else "",
                 sum(p.ds_tensor.numel() for p in student.parameters()),
                 sum(p.ds_numel for p in student.parameters()))
    batchers = {"transfer": batcher_cls(data.transfer.features, tokenizer.pad_token_id),
                "labeled": batcher_cls(data.train.features, tokenizer.pad_token_id)}
    score_fn = score_fn or (lambda m: dev_score(m, data.dev, data.labels, tokenizer.pad_token_id,
                                                cfg.eval.batch_size).mean_f1)
    keep_frozen = keep_frozen_names(student, cfg.student)
    best_path = out_dir / "student_best"
    anchor_path = out_dir / "checkpoints" / "distill-anchor.safetensors"  # restore-to-best snapshot
    ckpt = Checkpointer(out_dir / "checkpoints" / "distill", cfg.output.keep_last)
    resume = resume_point(ckpt, cfg.output.resume)
    pos = resume[1] if resume else {"stage": 0, "phase": 0, "step": 0, "phase_done": False, "global_step": 0,
                                    "best": -1.0, "anchor": -1.0, "history": [], "first_loss": None}
    pending_load = (resume[0], pos["phase_done"]) if resume else None  # (tag, module weights only)
    best, global_step, history = pos["best"], pos["global_step"], list(pos["history"])
    # dev score of the snapshot at anchor_path; -1: none (a stage without a dev score moved the weights since)
    anchor = pos.get("anchor", -1.0)
    metrics = MetricsLog(out_dir, "distill", cfg.output.tensorboard, resume_step=global_step if resume else None)
    preempt = Preemption(out_dir / cfg.output.stop_file).install()
    if resume and is_main():
        log.info("resuming distillation from %s (stage %d, unfreeze step %d, step %d)", resume[0],
                 pos["stage"] + 1, pos["phase"], pos["step"])

    for s_idx, stage in enumerate(stages):
        key = f"stages.{s_idx}" if cfg.distill.strategy is None else f"distill.strategy {cfg.distill.strategy} " \
                                                                      f"stage {s_idx} ({stage.name})"
        uses_hidden = stage.losses.get("hidden", 0) > 0
        module.set_losses(*stage_losses(stage, cfg, student, tcfg, projector if uses_hidden else None, key))
        distill_loss = module._losses[0]
        from_cache = stage_reads_cache(stage, cache, cfg)
        if distill_loss is not None and distill_loss.needs_teacher and not from_cache and teacher is None:
            raise XdtError(f"{key}: needs the teacher's outputs on {stage.data} data, which the teacher cache "
                           "does not hold; run with the teacher loaded (distill.teacher_cache: null)")
        plan = UnfreezePlan(student, projector if uses_hidden else None, keep_frozen)
        if projector is not None and not uses_hidden:
            projector.requires_grad_(False)
        main_data = "labeled" if stage.data == "labeled" else "transfer"
        phases = list(range(plan.num_steps)) if stage.gradual_unfreeze else [None]
        trains_output = any(stage.losses.get(t, 0) > 0 for t in OUTPUT_TERMS)

        for p_idx, phase in enumerate(phases):
            here = (s_idx, p_idx)
            if here < (pos["stage"], pos["phase"]) or (here == (pos["stage"], pos["phase"]) and pos["phase_done"]):
                continue  # finished before the restart
            start = pos["step"] if here == (pos["stage"], pos["phase"]) else 0
            # ---- one unfreeze step: what trains, optimizer, schedule, engine
            seed = cfg.seed + 1000 * s_idx + p_idx
            torch.manual_seed(seed)
            if pending_load is not None and pending_load[1] and zero_stage(ds_config) >= 2:
                # a finished unfreeze step's weights into the next one, whose frozen set differs: from ZeRO-2 on,
                # DeepSpeed's load copies the parameters the new engine keeps frozen out of the frozen ones the
                # checkpoint recorded (a KeyError where the sets differ), so consolidate the checkpoint and load it
                # before the engine
                load_state(module, ckpt.consolidated(pending_load[0]))
                pending_load = None
            trainable = plan.apply(phase) if phase is not None else plan.apply_all()
            params = [p for p in module.parameters() if p.requires_grad]
            steps = phase_steps(stage, batchers[main_data].num_batches(bs, world), accum)
            optimizer = make_optimizer(params, stage.lr)
            scheduler = make_scheduler(optimizer, stage.schedule, steps, stage.warmup_steps)
            engine, optimizer, _, scheduler = deepspeed.initialize(model=module, optimizer=optimizer,
                                                                   model_parameters=params,
                                                                   lr_scheduler=scheduler, config=ds_config)
            if pending_load is not None:  # the weights (and, mid-phase, optimizer, schedule, RNG) of the restart
                ckpt.load(engine, pending_load[0], module_only=pending_load[1])
                pending_load = None
            module.train()  # models loaded from a folder come in eval mode: dropout must be on while training
            label = f"{stage.name}" + (f" [{plan.group_names[phase]}]" if phase is not None else "")
            progress = progress_bar(steps, f"S{s_idx + 1} {label}")
            progress.update(start)
            main_iter = batches_from(batchers[main_data], bs, seed, start * accum)
            labeled_iter = (batches_from(batchers["labeled"], bs, seed + 7, start * accum)
                            if stage.data == "both" else None)
            first_loss = pos["first_loss"] if start else None
            loss_value = float("nan")

            def position(step: int, done: bool) -> dict:
                return {"stage": s_idx, "phase": p_idx, "step": step, "phase_done": done, "global_step": global_step,
                        "best": best, "anchor": anchor, "history": history, "first_loss": first_loss}

            def evaluate() -> float:
                """Dev score now: the exported best student and the restore anchor follow it."""
                nonlocal best, anchor
                score = score_fn(student)
                metrics.log(global_step, **{"distill/dev_f1": score})
                if score > best:
                    best = score
                    save_hf(student, best_path, tokenizer, zero3=zero3, max_seq_length=cfg.data.max_seq_length)
                if score >= anchor:
                    anchor = score
                    save_snapshot(module, anchor_path, zero3)
                return score

            for step in range(start, steps):  # optimizer steps; `accum` micro-batches each
                terms: dict[str, torch.Tensor] = {}
                micro_losses = []
                lr = scheduler.get_last_lr()[0]  # this step's rate: engine.step() moves the scheduler on
                for _ in range(accum):
                    batch = {k: v.to(engine.device) for k, v in next(main_iter).items()}
                    labeled = ({k: v.to(engine.device) for k, v in next(labeled_iter).items()}
                               if labeled_iter is not None else None)
                    teacher_out = None
                    if distill_loss is not None and distill_loss.needs_teacher and from_cache:
                        teacher_out = cache.batch(batch["window"], batch["input_ids"].shape[1], engine.device,
                                                  word_index=batch["word_index"])
                    elif distill_loss is not None and distill_loss.needs_teacher and bridges is not None:
                        with torch.no_grad():
                            teacher_out = bridges[main_data].batch_outputs(
                                teacher_runner(teacher, distill_loss.needs_hidden_states, engine.device),
                                batch["window"].cpu().numpy(), batch["input_ids"].shape[1],
                                teacher_states(distill_loss), tcfg.num_hidden_layers + 1, cfg.distill.word_pooling,
                                teacher_pad)
                    elif distill_loss is not None and distill_loss.needs_teacher:
                        with torch.no_grad():
                            inputs = {k: v.to(teacher.device) for k, v in model_inputs(batch).items()}
                            teacher_out = teacher(**inputs,
                                                  output_hidden_states=distill_loss.needs_hidden_states,
                                                  output_attentions=distill_loss.needs_attentions)
                        teacher_out = _to(teacher_out, engine.device)
                    loss, terms = engine(batch, teacher_out, labeled)
                    engine.backward(loss)
                    engine.step()  # DeepSpeed updates the weights at the accumulation boundary
                    micro_losses.append(loss.item())
                global_step += 1
                loss_value = sum(micro_losses) / accum
                first_loss = loss_value if first_loss is None else first_loss
                progress.update(1)
                metrics.log(global_step, **{"distill/loss": loss_value, "distill/stage": s_idx,
                                            "distill/lr": lr,
                                            **{f"distill/{k}": v.item() for k, v in terms.items()}})
                if preempt.should_stop(global_step):
                    ckpt.save(engine, f"s{s_idx}-p{p_idx}-step{global_step}", position(step + 1, False))
                    requeued = preempt.requeue() if is_main() else False
                    raise Preempted(f"saved at step {global_step} ({preempt.reason})"
                                    + ("; SLURM job requeued" if requeued else ""))
                if trains_output and cfg.distill.eval_every and global_step % cfg.distill.eval_every == 0 \
                        and step + 1 < steps:
                    evaluate()
                if cfg.output.checkpoint_every and global_step % cfg.output.checkpoint_every == 0 \
                        and step + 1 < steps:
                    ckpt.save(engine, f"s{s_idx}-p{p_idx}-step{global_step}", position(step + 1, False))
            progress.close()

            entry = {"stage": s_idx, "name": stage.name, "phase": phase, "group": label, "steps": steps,
                     "trainable": len(trainable), "first_loss": first_loss, "last_loss": loss_value}
            if trains_output:
                entry["dev_f1"] = evaluate()
                if entry["dev_f1"] < anchor:  # XtremeDistil: the next unfreeze step starts from the best weights
                    restore_snapshot(module, anchor_path, zero3)
                    entry["restored_dev_f1"] = anchor
            else:
                anchor = -1.0  # the weights moved without a dev score: older snapshots are no anchor
            history.append(entry)
            if is_main():
                log.info("stage %d %s: loss %.4f -> %.4f%s%s", s_idx + 1, label, first_loss, loss_value,
                         f", dev F1 {entry['dev_f1']:.2f}" if "dev_f1" in entry else "",
                         f" (restored the best, {anchor:.2f})" if "restored_dev_f1" in entry else "")
            ckpt.save(engine, f"s{s_idx}-p{p_idx}-done", position(steps, True))
            engine.destroy()  # removes ZeRO's gradient hooks: the next unfreeze step builds its own engine
            del engine, optimizer, scheduler

    if best < 0 and not best_path.exists():  # no stage trained the output: keep the final student
        save_hf(student, best_path, tokenizer, zero3=zero3, max_seq_length=cfg.data.max_seq_length)
    if teacher_engine is not None:
        teacher_engine.destroy()
    preempt.uninstall()
    metrics.close()
    return DistillResult(best_path, best, global_step, history)


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


def _to(output, dev: torch.device):
    """Teacher outputs (logits, hidden states, attentions) on the student's device, in float32."""
    def move(x):
        if x is None:
            return None
        if isinstance(x, (tuple, list)):
            return type(x)(move(t) for t in x)
        return x.to(device=dev, dtype=torch.float32)

    return {"logits": move(output.logits), "hidden_states": move(getattr(output, "hidden_states", None)),
            "attentions": move(getattr(output, "attentions", None))}
