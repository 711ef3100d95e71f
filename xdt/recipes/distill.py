"""`xdt distill`: the stage schedule, each stage (and each unfreeze step) one DeepSpeed engine.

distill_step: the teacher (loaded, or its cached outputs), the student built from it -> distill:
setup (ranks, teacher frozen in eval mode, the shared hidden-state projector)
-> for each stage: for each unfreeze step: set what trains, build optimizer + schedule, `deepspeed.initialize`,
   run the steps (student forward/backward, teacher forward without gradients or its cached outputs), select on dev
-> save the best dev student as an HF folder -> cleanup.

A fresh optimizer per unfreeze step, over the parameters that train in it, is what the released code does too
(it recompiles the model): frozen parameters get no update at all, not even weight decay or old momentum.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig

from xdt.config import OUTPUT_TERMS, TEACHER_TERMS, RunConfig
from xdt.data.batching import WindowBatcher
from xdt.data.classification import model_inputs
from xdt.data.task import TaskData
from xdt.distill.losses import HiddenProjector
from xdt.distill.optim import make_optimizer, make_scheduler
from xdt.distill.selection import dev_score
from xdt.distill.step import (DistillStep, batches_from, cached_layers, check_cross_tokenizer, phase_steps,
                              resume_point, stage_losses, stage_reads_cache, teacher_outputs_to, teacher_runner,
                              teacher_states)
from xdt.distill.teacher_cache import TeacherCache, cache_keys, teacher_weights_hash
from xdt.distill.unfreeze import UnfreezePlan, keep_frozen_names
from xdt.engine.checkpoint import Checkpointer
from xdt.engine.distributed import init_distributed, is_main, world_size
from xdt.engine.ds_config import build_ds_config, zero_stage
from xdt.engine.hf_save import save_hf
from xdt.engine.metrics import MetricsLog, progress_bar
from xdt.engine.preemption import Preemption
from xdt.engine.restore import load_state, restore_snapshot, save_snapshot
from xdt.engine.zero3 import build_config, build_model, frozen_config, frozen_engine, is_partitioned, zero3_build
from xdt.errors import Preempted, XdtError
from xdt.models.layer_map import resolve_layer_map
from xdt.models.student import build_student, count_parameters, student_shape
from xdt.models.teacher import load_teacher_model, teacher_device_dtype
from xdt.models.vocab_map import cross_vocab_embeddings
from xdt.outputs import DISTILL_DONE
from xdt.recipes.cache import cache_step
from xdt.recipes.setup import loop_kwargs

log = logging.getLogger(__name__)


def distill_step(cfg: RunConfig, data, teacher_dir: Path, out: Path) -> dict:
    """The teacher (loaded, or only its cached outputs), the student built from it, then `distill`; the summary
    is written to OUTPUT/distill_done.json last."""
    eager = cfg.distill.attention_loss != "none"
    check_cross_tokenizer(cfg, data)
    tcfg = AutoConfig.from_pretrained(str(teacher_dir))
    cache = None
    if cfg.distill.teacher_cache:
        if not (Path(cfg.distill.teacher_cache) / "manifest.json").exists():
            cache_step(cfg, data, teacher_dir)
        layers = cached_layers(cfg, cfg.student.num_layers, tcfg.num_hidden_layers)
        cache = TeacherCache.open(cfg.distill.teacher_cache, teacher_hash=teacher_weights_hash(teacher_dir),
                                  layers_needed=layers, **cache_keys(cfg, data))
    needs_live = any(s.losses.get(t, 0) > 0 for s in cfg.stages if not stage_reads_cache(s, cache, cfg)
                     for t in TEACHER_TERMS)
    svd = cfg.student.embedding_init in ("svd", "pca") and not cfg.student.init_from
    cut = cfg.student.embedding_init == "teacher" and not cfg.student.init_from
    dev, dtype = teacher_device_dtype()
    # ZeRO-3: teacher and student are built partitioned, under the config distill() trains with (the teacher in
    # its own precision); no rank holds either whole
    student_hidden = AutoConfig.from_pretrained(cfg.student.init_from).hidden_size if cfg.student.init_from else \
        student_shape(cfg.student).hidden_size
    partitioned = build_config(cfg.deepspeed, build_ds_config(cfg.deepspeed, cfg.distill.batch_size, world_size(),
                                                              student_hidden))
    with zero3_build(partitioned and frozen_config(partitioned, dtype)):
        teacher = load_teacher_model(teacher_dir, data.labels, eager, cfg.data.task) if needs_live or \
            cfg.student.embedding_init == "teacher" else None
    word_rows = None  # the teacher's word embeddings, for the student's pieces
    if (svd and teacher is None) or ((svd or cut) and data.cross_tokenizer):
        word_rows = teacher_word_embeddings(teacher_dir)
        if data.cross_tokenizer:
            word_rows = cross_vocab_embeddings(word_rows, data.tokenizer, data.teacher_tokenizer)
    torch.manual_seed(cfg.seed)  # the student's random initialisation is part of what a seed reproduces
    with zero3_build(partitioned):
        student = build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels,
                                task=cfg.data.task, teacher=teacher, copy_layer_map=cfg.distill.layer_map,
                                teacher_word_embeddings=word_rows, pad_token_id=data.tokenizer.pad_token_id,
                                attn_implementation="eager" if eager else None,
                                attention_dropout=0.0 if eager else None)
    sizes = {"teacher_parameters": count_parameters(teacher) if teacher is not None else None,
             "student_parameters": count_parameters(student)}  # full sizes, also when partitioned
    result = distill(cfg, data, teacher, student, out, dev, dtype, cache=cache, teacher_config=tcfg,
                     **loop_kwargs(cfg, data))
    summary = {"path": str(result.path), "best_dev_f1": result.best_dev_f1, "steps": result.steps,
               "history": result.history, "teacher_loaded": teacher is not None, **sizes}
    if is_main():  # written last: what marks the distillation finished (`xdt slurm pipeline` reads it)
        (out / DISTILL_DONE).write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return summary


def teacher_word_embeddings(teacher_dir: Path) -> torch.Tensor:
    """The teacher's word-embedding matrix from its safetensors, without building the model (SVD init)."""
    for path in sorted(Path(teacher_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith("embeddings.word_embeddings.weight"):
                    return f.get_tensor(key)
    raise XdtError(f"{teacher_dir}: no *embeddings.word_embeddings.weight in its safetensors files")


@dataclass
class DistillResult:
    path: Path  # best dev student, HF folder
    best_dev_f1: float
    steps: int
    history: list[dict] = field(default_factory=list)  # one entry per (stage, unfreeze step)


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
                        teacher_out = teacher_outputs_to(teacher_out, engine.device)
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
