"""Training modes no other test ran: ZeRO-0 and ZeRO-1, bf16, each learning-rate schedule as the optimizer applies
it, `output.keep_last` pruning, and a real `xdt run` process stopped by SIGUSR1 that exits 75 and resumes to its
report. Tiny models on the mock task of tests/recipes/test_distill.py: a few steps each."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests.conftest import ROOT
from xdt.config import load_config
from xdt.recipes.distill import distill
from xdt.engine.checkpoint import MARKER
from xdt.engine.metrics import read_metrics

from .conftest import SMALL
from .test_distill import _models

pytestmark = pytest.mark.distributed  # DeepSpeed engines (one gloo rank)

# one joint stage (labels + teacher logits) that visibly learns in 12 steps: mean loss of the first three steps
# 1.886 -> last three 1.674 (fp32 on ZeRO 0, 1 and 2 alike; bf16 1.674); at lr 1e-9 it stays (1.873 -> 1.873)
JOINT = ["distill.strategy=D1", "distill.steps=12", "distill.lr=1e-2", "distill.schedule=constant"]


def _losses(out) -> list[float]:
    return [r["distill/loss"] for r in read_metrics(out / "distill.jsonl") if "distill/loss" in r]


def _assert_falls(losses: list[float], what: str) -> None:
    first, last = statistics.mean(losses[:3]), statistics.mean(losses[-3:])
    assert last < 0.95 * first, f"{what}: loss {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("zero", [0, 1])
def test_zero_0_and_1_train_and_keep_only_the_last_checkpoints(mock_task, tmp_path, zero):
    """A checkpoint every 2 steps with keep_last=2: of s0-p0-step{2,4,6,8,10} and s0-p0-done only the two newest
    complete ones stay, and `latest` names the last."""
    _, data = mock_task
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", *JOINT, "output.checkpoint_every=2",
                             "output.keep_last=2", f"deepspeed.config=ds_configs/zero{zero}.json"])
    teacher, student = _models(cfg, data)
    distill(cfg, data, teacher, student, tmp_path / "run")
    _assert_falls(_losses(tmp_path / "run"), f"ZeRO-{zero}")
    root = tmp_path / "run" / "checkpoints" / "distill"
    tags = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert tags == ["s0-p0-done", "s0-p0-step10"], tags
    assert all((root / t / MARKER).exists() for t in tags) and (root / "latest").read_text() == "s0-p0-done"
    # the ZeRO stage that ran: stage 1 shards the optimizer state into a file of its own, stage 0 does not
    assert len(list((root / "s0-p0-done").glob("*optim_states.pt"))) == (1 if zero == 1 else 0)


def test_bf16_computes_in_bf16_and_follows_the_fp32_curve(mock_task, tmp_path):
    """The same seed in fp32 and bf16 (ZeRO-2): the student's forward runs in bf16, and the loss curves agree to
    bf16 rounding (measured within 0.5% at every step), so bf16 trains the same model rather than something else."""
    _, data = mock_task
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", *JOINT, f"deepspeed.precision={precision}"])
        teacher, student = _models(cfg, data)
        dtypes = set()
        student.register_forward_hook(lambda module, args, out: dtypes.add(out.logits.dtype))
        distill(cfg, data, teacher, student, tmp_path / precision)
        assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float32}, (precision, dtypes)
        curves[precision] = _losses(tmp_path / precision)
        _assert_falls(curves[precision], precision)
    assert curves["bf16"] == pytest.approx(curves["fp32"], rel=0.02)


def _cosine(k: int, warmup: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))


# factor of the base rate at each optimizer step of a 6-step stage with 2 warmup steps, written out by hand
SCHEDULES = {"constant": [0.5, 1, 1, 1, 1, 1],
             "linear": [0.5, 1, 1, 0.75, 0.5, 0.25],
             "cosine": [0.5, 1, 1, _cosine(3, 2, 6), _cosine(4, 2, 6), _cosine(5, 2, 6)]}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_each_learning_rate_schedule_is_the_rate_the_optimizer_steps_with(mock_task, tmp_path, schedule):
    """D3.1 (two stages, each with a fresh optimizer and schedule): the rate of every optimizer step, read inside
    the optimizer's own step, is the schedule's, each stage starts it over, and the metrics log records it."""
    _, data = mock_task
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", "distill.strategy=D3.1", "distill.steps=6",
                             "distill.lr=1e-2", f"distill.schedule={schedule}", "distill.warmup_steps=2"])
    teacher, student = _models(cfg, data)
    rates: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: rates.append(optimizer.param_groups[0]["lr"]))
    try:
        distill(cfg, data, teacher, student, tmp_path / "run")
    finally:
        hook.remove()
    assert rates == pytest.approx([1e-2 * f for f in SCHEDULES[schedule] * 2], rel=1e-3, abs=1e-9)
    logged = [r["distill/lr"] for r in read_metrics(tmp_path / "run" / "distill.jsonl") if "distill/lr" in r]
    assert logged == pytest.approx(rates, rel=1e-6, abs=1e-12)  # the log records each step's own rate


# --------------------------------------------------------------------------------------------- exit code 75


@pytest.mark.slow
def test_sigusr1_in_the_teacher_loop_exits_75_and_resume_auto_finishes_the_run(tmp_path):
    """`xdt run` in its own process: SIGUSR1 while the teacher trains -> checkpoint, `xdt: stopped:` and exit 75
    (EX_TEMPFAIL, outside SLURM no requeue); `--resume auto` continues the teacher from there, distils, and writes
    the report, with one loss record per teacher step."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "xdt", "run", *SMALL, f"data.cache_dir={tmp_path / 'cache'}", f"output.dir={out}",
           "teacher.epochs=4", "teacher.batch_size=8", "distill.strategy=D4.2", "distill.steps=2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "teacher.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text().strip()):  # the teacher took a step: its handlers are installed
        assert proc.poll() is None and time.monotonic() < deadline, "the teacher never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    assert "xdt: stopped: teacher saved at step" in stderr and "(signal)" in stderr, stderr[-3000:]
    stopped_at = len([r for r in read_metrics(log) if "teacher/loss" in r])
    assert (out / "checkpoints" / "teacher" / "latest").exists() and not (out / "teacher_done.json").exists()

    done = subprocess.run(cmd + ["--resume", "auto"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming teacher training" in done.stderr
    steps = [r["step"] for r in read_metrics(log) if "teacher/loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at, (stopped_at, steps)
    assert json.loads((out / "teacher_done.json").read_text())["steps"] == len(steps)
    assert json.loads((out / "eval" / "report.json").read_text())["languages"].keys() == {"en", "ru"}
