"""`xdt teacher train`: fine-tune any HF encoder for token (or sequence) classification on one or many
languages jointly.

setup (ranks, model, DeepSpeed engine) -> train (steps, dev score every `eval_every` steps, early stopping) -> save
(the best dev checkpoint as an HF folder) -> cleanup. The paper's teacher is one model for all 41 languages.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
from torch import nn

from xdt.config import RunConfig
from xdt.data.batching import WindowBatcher
from xdt.data.classification import model_inputs
from xdt.data.task import TaskData
from xdt.distill.optim import make_optimizer, make_scheduler
from xdt.distill.selection import dev_score
from xdt.distill.step import batches_from, resume_point
from xdt.engine.distributed import init_distributed, is_main, world_size
from xdt.engine.ds_config import build_ds_config, zero_stage
from xdt.engine.hf_save import save_hf
from xdt.engine.checkpoint import Checkpointer
from xdt.engine.metrics import MetricsLog, progress_bar
from xdt.engine.preemption import Preemption
from xdt.engine.zero3 import build_config, is_partitioned, zero3_build
from xdt.errors import Preempted
from xdt.models.student import Task
from xdt.models.teacher import build_teacher, teacher_hidden_size
from xdt.outputs import TEACHER_DONE
from xdt.recipes.setup import loop_kwargs

log = logging.getLogger(__name__)


@dataclass
class TeacherResult:
    path: Path  # the best dev checkpoint, an HF folder
    best_dev_f1: float
    steps: int
    stopped_early: bool


def train_teacher(cfg: RunConfig, data: TaskData, out_dir: str | Path, *, task: Task = "token",
                  model: nn.Module | None = None, batcher_cls=WindowBatcher,
                  score_fn: Callable[[nn.Module], float] | None = None) -> TeacherResult:
    """`score_fn(model)`: the dev score that selects and stops (default: mean per-language entity F1)."""
    # ---- setup
    init_distributed()
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    tokenizer = data.tokenizer
    tc = cfg.teacher
    world = world_size()
    if model is None:  # ZeRO-3: built partitioned, no rank holds the whole teacher
        ds_config = build_ds_config(cfg.deepspeed, tc.batch_size, world, teacher_hidden_size(tc))
        with zero3_build(build_config(cfg.deepspeed, ds_config)):
            model = build_teacher(tc, vocab_size=len(tokenizer), labels=data.labels, task=task,
                                  pad_token_id=tokenizer.pad_token_id)
        if is_partitioned(model) and is_main():
            log.info("ZeRO-3: teacher built partitioned (deepspeed.zero.Init), rank 0 holds %d of its %d parameters",
                     sum(p.ds_tensor.numel() for p in model.parameters()), sum(p.ds_numel for p in model.parameters()))
    batcher = batcher_cls(data.train.features, tokenizer.pad_token_id)
    score_fn = score_fn or (lambda m: dev_score(m, data.dev, data.labels, tokenizer.pad_token_id,
                                                cfg.eval.batch_size).mean_f1)
    accum = cfg.deepspeed.gradient_accumulation_steps
    steps_per_epoch = max(1, batcher.num_batches(tc.batch_size, world) // accum)  # optimizer steps
    total = max(1, math.ceil(tc.epochs * steps_per_epoch))
    eval_every = tc.eval_every or steps_per_epoch
    ds_config = build_ds_config(cfg.deepspeed, tc.batch_size, world, model.config.hidden_size)
    if tc.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tc.lr, weight_decay=0.01)
    scheduler = make_scheduler(optimizer, "linear", total, int(tc.warmup_ratio * total))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                                           lr_scheduler=scheduler, config=ds_config)
    zero3 = zero_stage(ds_config) == 3
    best_path = out_dir / "teacher"
    ckpt = Checkpointer(out_dir / "checkpoints" / "teacher", cfg.output.keep_last)
    resume = resume_point(ckpt, cfg.output.resume)
    pos = {"step": 0, "best": -1.0, "bad": 0, "global_step": 0}
    if resume:
        ckpt.load(engine, resume[0])
        pos = resume[1]
        if is_main():
            log.info("resuming teacher training from %s (step %d)", resume[0], pos["step"])
    engine.module.train()  # from_pretrained returns eval mode: without this a loaded model trains without dropout
    metrics = MetricsLog(out_dir, "teacher", cfg.output.tensorboard, resume_step=pos["step"] if resume else None)
    preempt = Preemption(out_dir / cfg.output.stop_file).install()

    # ---- train
    best, bad, step = pos["best"], pos["bad"], pos["step"]
    stopped = bool(tc.early_stopping_patience) and bad >= tc.early_stopping_patience
    progress = progress_bar(total, "teacher")
    progress.update(step)
    batches = batches_from(batcher, tc.batch_size, cfg.seed, step * accum)
    while step < total and not stopped:
        micro_losses = []
        lr = scheduler.get_last_lr()[0]  # this step's rate: engine.step() moves the scheduler on
        for _ in range(accum):  # DeepSpeed updates the weights at the accumulation boundary
            batch = {k: v.to(engine.device) for k, v in next(batches).items()}
            out = engine(**model_inputs(batch), labels=batch["labels"])
            engine.backward(out.loss)
            engine.step()
            micro_losses.append(out.loss.item())
        step += 1
        progress.update(1)
        loss_value = sum(micro_losses) / accum
        metrics.log(step, **{"teacher/loss": loss_value, "teacher/lr": lr})
        evaluated = step % eval_every == 0 or step == total
        if evaluated:
            score = score_fn(engine.module)
            metrics.log(step, **{"teacher/dev_f1": score})
            progress.set_postfix(dev_f1=f"{score:.2f}")
            if is_main():
                log.info("teacher step %d/%d: loss %.4f, dev score %.2f", step, total, loss_value, score)
            if score > best:
                best, bad = score, 0
                save_hf(engine.module, best_path, tokenizer, zero3=zero3, max_seq_length=cfg.data.max_seq_length)
            else:
                bad += 1
                if tc.early_stopping_patience and bad >= tc.early_stopping_patience:
                    stopped = True
                    log.info("teacher: dev F1 did not improve for %d evaluations; stopping at step %d", bad, step)
        position = {"step": step, "best": best, "bad": bad, "global_step": step}
        if preempt.should_stop(step):
            ckpt.save(engine, f"step{step}", position)
            requeued = preempt.requeue() if is_main() else False
            raise Preempted(f"teacher saved at step {step} ({preempt.reason})"
                            + ("; SLURM job requeued" if requeued else ""))
        if evaluated or (cfg.output.checkpoint_every and step % cfg.output.checkpoint_every == 0):
            ckpt.save(engine, f"step{step}", position)

    # ---- cleanup
    progress.close()
    preempt.uninstall()
    metrics.close()
    engine.destroy()
    del engine, optimizer
    return TeacherResult(best_path, best, step, stopped)


def train_teacher_step(cfg: RunConfig, data, out: Path) -> dict:
    """Fine-tune the teacher, or (resuming) take the one an earlier attempt of this run finished."""
    done = out / TEACHER_DONE
    if cfg.output.resume == "auto" and done.exists():
        return json.loads(done.read_text())
    teacher_data = data.for_teacher() if cfg.data.task == "token" else data  # its own tokenizer and windows
    result = train_teacher(cfg, teacher_data, out, task=cfg.data.task, **loop_kwargs(cfg, data))
    summary = {"path": str(result.path), "best_dev_f1": result.best_dev_f1, "steps": result.steps,
               "stopped_early": result.stopped_early}
    if is_main():
        done.write_text(json.dumps(summary))
    return summary
