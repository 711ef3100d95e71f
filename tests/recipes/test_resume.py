"""Scale: 2 gloo ranks match 1 rank, and a run killed with SIGKILL resumes to the same curve and weights.

Every run here is a real `xdt distill` (or `xdt teacher train`) process (one process, or two under torchrun) on
mock data with a tiny teacher; the uninterrupted reference of each (ranks, ZeRO stage) is computed once per module.
The resume tests train with the shipped dropout (0.1), so every rank must continue its own random stream; and a
checkpoint carrying pickled code is refused by `--resume auto` and `xdt export` before the code runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ENV, EVERY_STEP, ROOT, TOLERANCE, command, curve, final_weights

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


_references: dict[tuple, Path] = {}


def reference(root: Path, ranks: int, zero: int, extra: tuple[str, ...] = ()) -> Path:
    key = (ranks, zero, extra)
    if key not in _references:
        out = root / f"ref-{ranks}-{zero}-{len(extra)}"
        run(command(root, out, ranks, zero, list(extra)))
        _references[key] = out
    return _references[key]


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc): torchrun starts each worker in a session of its own, so killing
    torchrun's process group would leave the ranks running to the end."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_at(cmd: list[str], out: Path, lines: int, what: str = "distill") -> None:
    """Start `cmd`, SIGKILL it and every process it started (the ranks) once OUT/{what}.jsonl has `lines`
    records, as a node that dies does."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = out / f"{what}.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= lines:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        tree = process_tree(proc.pid)
        for pid in reversed(tree):  # the ranks first, then the launcher
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    for pid in tree[1:]:  # gone (or a zombie of a dead launcher) before anything else touches OUT
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except (OSError, IndexError):
                break
            time.sleep(0.05)


@pytest.mark.parametrize("zero", [2, 3])
def test_two_ranks_match_one_rank_with_the_same_global_batch(workdir, zero):
    two = final_weights(reference(workdir, 2, zero))
    one_out = workdir / f"one-accum2-{zero}"
    run(command(workdir, one_out, 1, zero, ["deepspeed.gradient_accumulation_steps=2"]))
    one = final_weights(one_out)
    assert one.keys() == two.keys()
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    assert diff <= TOLERANCE, f"ZeRO-{zero}: 2 ranks vs 1 rank x 2 accumulation steps differ by {diff:.3g}"


@pytest.mark.parametrize("ranks, zero", [(1, 2), (1, 3), (2, 2), (2, 3)])
def test_sigkill_then_resume_auto_gives_the_same_curve_and_weights(workdir, ranks, zero):
    """Dropout on: with 2 ranks each rank resumes its own RNG stream (rng-rank{r}.safetensors), so the dropout
    masks after the restart are the uninterrupted run's."""
    ref = reference(workdir, ranks, zero, EVERY_STEP)
    total = len(curve(ref))
    rng = random.Random(f"{ranks}-{zero}")
    # kill points at random (two for one rank, one for two), each at the record of a step whose neighbours are
    # mid-unfreeze-step checkpoints too, so even a kill that comes a step late restarts inside an unfreeze step,
    # where the RNG states carry on (a finished step's successor reseeds); most kills land in a save
    mid = {int(t.name.rsplit("step", 1)[1]) for t in (ref / "checkpoints" / "distill").glob("s*-p*-step*")}
    points = [n for n, (step, loss, _) in enumerate(curve(ref), 1) if loss is not None and
              {step - 1, step, step + 1} <= mid]
    for k, lines in enumerate(sorted(rng.sample(points, 2 if ranks == 1 else 1))):
        out = workdir / f"killed-{ranks}-{zero}-{k}"
        cmd = command(workdir, out, ranks, zero, list(EVERY_STEP))
        kill_at(cmd, out, lines)
        assert len(curve(out)) < total, "the run finished before it was killed"
        run(cmd + ["--resume", "auto"])
        assert curve(out) == curve(ref), f"killed after {lines} records"
        a, b = final_weights(out), final_weights(ref)
        assert all(torch.equal(a[n], b[n]) for n in a), f"killed after {lines} records: weights differ"
        assert (out / "student_best" / "model.safetensors").read_bytes() == \
            (ref / "student_best" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("zero", ["2_offload", "3_offload"])
def test_offload_runs_resume_within_1e_6(workdir, zero):
    ref = reference(workdir, 1, zero, EVERY_STEP)
    out = workdir / f"killed-offload-{zero}"
    cmd = command(workdir, out, 1, zero, list(EVERY_STEP))
    kill_at(cmd, out, len(curve(ref)) // 2)
    run(cmd + ["--resume", "auto"])
    a, b = final_weights(out), final_weights(ref)
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6
    assert [r[0] for r in curve(out)] == [r[0] for r in curve(ref)]


@pytest.mark.parametrize("ranks, zero, boundary", [(1, 2, "s1-p2-done"), (1, 3, "s1-p2-done"),
                                                    (2, 3, "s1-p2-done"), (1, 2, "s1-p4-done"), (1, 3, "s1-p4-done")])
def test_resume_at_an_unfreeze_boundary(workdir, ranks, zero, boundary):
    """A restart right after an unfreeze step finished: the next step's engine, with another frozen set, takes
    the weights through the consolidated checkpoint, and the run ends as the uninterrupted one. s1-p2-done: within
    the logits stage, the next step freezes a subset of what this one froze; s1-p4-done: the logits stage's last
    step, followed by the labels stage's first, which freezes what this one trained. From ZeRO-2 on DeepSpeed's own
    load looks the new engine's frozen parameters up among the ones the checkpoint recorded as frozen: a KeyError
    there (hit by a two-node job after a node crash) until the consolidated load served ZeRO-2 as well."""
    ref = reference(workdir, ranks, zero, EVERY_STEP)
    out = workdir / f"boundary-{ranks}-{zero}-{boundary}"
    shutil.copytree(ref, out)
    root = out / "checkpoints" / "distill"
    cut = json.loads((root / boundary / "xdt_state.json").read_text())["global_step"]
    for tag in root.iterdir():
        marker = tag / "xdt_state.json"
        if marker.exists() and json.loads(marker.read_text())["global_step"] > cut:
            shutil.rmtree(tag)
    (root / "latest").write_text(boundary)
    run(command(workdir, out, ranks, zero, list(EVERY_STEP)) + ["--resume", "auto"])
    assert curve(out) == curve(ref)
    a, b = final_weights(out), final_weights(ref)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_teacher_training_killed_on_two_ranks_with_dropout_resumes_to_the_same_weights(workdir):
    """The teacher loop, 2 ranks, ZeRO-2, dropout 0.1 (the tiny teacher's config): SIGKILL mid-run, --resume auto."""
    extra = [*EVERY_STEP, "teacher.batch_size=8", "teacher.epochs=1"]
    ref = workdir / "teacher-ref"
    run(command(workdir, ref, 2, 2, extra, what="teacher"))
    total = len(curve(ref, "teacher"))
    assert total >= 6, total
    out = workdir / "teacher-killed"
    cmd = command(workdir, out, 2, 2, extra, what="teacher")
    kill_at(cmd, out, total // 2, what="teacher")
    assert len(curve(out, "teacher")) < total and not (out / "teacher_done.json").exists()
    run(cmd + ["--resume", "auto"])
    assert curve(out, "teacher") == curve(ref, "teacher")
    a, b = final_weights(out, "teacher"), final_weights(ref, "teacher")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


class Payload:
    """Unpickling it creates `marker`: what a checkpoint carrying code would do with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_checkpoint_carrying_pickled_code_is_refused_by_resume_and_export(workdir):
    from xdt.engine.safe_load import safe_torch_load

    ref = reference(workdir, 1, 2, EVERY_STEP)
    out = workdir / "poisoned"
    shutil.copytree(ref, out)
    root = out / "checkpoints" / "distill"
    # a mid-step checkpoint (a resume loads weights, optimizer and RNG from it) as the newest
    tag = next(t.name for t in sorted(root.iterdir(), key=lambda t: t.stat().st_mtime) if "-step" in t.name
               and json.loads((t / "xdt_state.json").read_text())["stage"] == 1)
    cut = json.loads((root / tag / "xdt_state.json").read_text())["global_step"]
    for other in root.iterdir():
        marker = other / "xdt_state.json"
        if marker.exists() and json.loads(marker.read_text())["global_step"] > cut:
            shutil.rmtree(other)
    (root / "latest").write_text(tag)
    poisoned = root / tag / "mp_rank_00_model_states.pt"
    state = safe_torch_load(poisoned)
    ran = workdir / "payload-ran"
    torch.save({**state, "payload": Payload(ran)}, poisoned)
    control = workdir / "payload-control"
    torch.save({"payload": Payload(control)}, workdir / "control.pt")
    torch.load(workdir / "control.pt", weights_only=False)
    assert control.exists()  # the payload is live: a pickle-trusting load runs it

    # export names the checkpoint root: given the run folder it would export student_best, not the checkpoint
    for cmd in (command(workdir, out, 1, 2, list(EVERY_STEP)) + ["--resume", "auto"],
                [sys.executable, "-m", "xdt", "export", str(root), "--out", str(workdir / "poisoned-export")]):
        proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("xdt: error:")]
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert len(errors) == 1 and str(poisoned) in errors[0] and "weights_only=True" in errors[0], errors
        assert "Traceback" not in proc.stderr
        assert not ran.exists(), f"{cmd[3:5]}: the pickled payload ran"
    assert not (workdir / "poisoned-export").exists()


def test_truncated_checkpoint_is_never_loaded(workdir):
    from xdt.engine.checkpoint import MARKER, Checkpointer
    from xdt.errors import XdtError

    ref = reference(workdir, 1, 2, EVERY_STEP)
    out = workdir / "truncated"
    shutil.copytree(ref, out)
    root = out / "checkpoints" / "distill"
    newest = (root / "latest").read_text().strip()
    # a save that died half way: DeepSpeed's files partly there, no marker, and `latest` already naming it
    broken = root / "s9-p9-step999"
    shutil.copytree(root / newest, broken)
    (broken / MARKER).unlink()
    for f in list(broken.glob("*optim_states*"))[:1]:
        f.write_bytes(f.read_bytes()[:100])
    (root / "latest").write_text(broken.name)
    tag, position = Checkpointer(root).latest()
    assert tag == newest and position["global_step"] == len([r for r in curve(ref) if r[1] is not None])
    with pytest.raises(XdtError, match="incomplete checkpoint"):
        Checkpointer(root).load(None, broken.name)


def test_fresh_run_refuses_to_overwrite_an_earlier_runs_checkpoints(workdir):
    ref = reference(workdir, 1, 2, EVERY_STEP)
    out = workdir / "again"
    shutil.copytree(ref, out)
    # the same config (another one is refused sooner, by the run folder's record: test_trust_outputs.py)
    proc = subprocess.run(command(workdir, out, 1, 2, list(EVERY_STEP)), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2
    assert "holds checkpoints of an earlier run" in proc.stderr and "output.resume=auto" in proc.stderr


def test_cached_teacher_gives_the_live_curve_to_fp16_rounding_and_stale_caches_are_refused(workdir):
    live = reference(workdir, 1, 2)
    cache = workdir / "teacher-cache"
    out = workdir / "cached"
    proc = subprocess.run(command(workdir, out, 1, 2, [f"distill.teacher_cache={cache}"]), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["teacher_loaded"] is False
    cached, reference_curve = curve(out), curve(live)
    assert [r[0] for r in cached] == [r[0] for r in reference_curve]
    for (step, a, _), (_, b, _) in zip(cached, reference_curve):
        if a is not None:  # fp16 targets: the losses agree to about 1e-3 relative
            assert a == pytest.approx(b, rel=5e-3, abs=1e-4), step

    # another teacher (one weight changed) against the same cache: refused, naming the field
    from safetensors.torch import load_file, save_file

    other = workdir / "teacher-2"
    shutil.copytree(workdir / "teacher", other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    cmd = command(workdir, workdir / "stale", 1, 2, [f"distill.teacher_cache={cache}"])
    cmd = [c.replace(f"teacher.model={workdir / 'teacher'}", f"teacher.model={other}") for c in cmd]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "stale teacher cache: teacher_hash" in proc.stderr, proc.stderr[-2000:]


def test_export_consolidates_a_two_rank_zero3_checkpoint(workdir):
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    from xdt.cli import main

    ref = reference(workdir, 2, 3)
    out = workdir / "export-zero3"
    assert main(["export", str(ref / "checkpoints" / "distill"), "--out", str(out),
                 "--tokenizer", str(ref / "student_best")]) == 0
    exported = load_file(out / "model.safetensors")
    consolidated = {k.removeprefix("student."): v for k, v in final_weights(ref).items() if k.startswith("student.")}
    assert exported.keys() <= consolidated.keys()
    assert all(torch.equal(exported[k], consolidated[k]) for k in exported)
    model = AutoModelForTokenClassification.from_pretrained(out)  # plain transformers, no xdt
    assert model.config.id2label[0] == "O" and model.config.model_type == "electra"
