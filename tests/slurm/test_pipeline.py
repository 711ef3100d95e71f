"""`xdt slurm pipeline` on the real local SLURM cluster (the session's `cluster` fixture): the quickstart as chained
jobs (teacher, teacher cache, distillation, evaluation array + merge) ends with the report `xdt run` gives; a
resubmission skips what finished; a step that fails cancels the steps after it; bad input is refused before anything
is submitted. The full pipeline runs once per module (`finished`); the resubmission test continues its folder.
tests/slurm/test_pipeline_plan.py covers the plan itself without a cluster.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.slurm.cluster import logs, wait_job
from tests.slurm.test_jobs import MIN_STUDENT_F1, MIN_TEACHER_F1, SMALL

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
LANGS = {"en", "de", "ru", "ar", "hi"}
# the DeepSpeed CPU op built once and shared (each CPU job builds its own by default: ~30 s per job)
SHARED_OPS = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
# two gloo ranks per training job, as tests/slurm/test_jobs.py; one CPU per evaluation shard, so both shards run at once
RESOURCES = ["--cpus-per-task", "2", "--time", "00:15:00", "--signal-seconds", "60", "--eval-shards", "2",
             "--step-resources", "eval:cpus_per_task=1", "--env", f"TORCH_EXTENSIONS_DIR={SHARED_OPS}"]


def xdt(argv: list[str]) -> tuple[int, str, str]:
    """`xdt ...` in this process: (exit code, stdout, stderr)."""
    from xdt.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def plan_of(printed: str) -> dict[str, list[str]]:
    """The submission's lines (`STEP STATE details...`) by step."""
    return {line.split()[0]: line.split()[1:] for line in printed.strip().splitlines()}


def submitted_jobs(plan: dict[str, list[str]]) -> dict[str, list[str]]:
    """{step: its job ids} of the steps this submission sent (`job 12;` or `array 13, merge 14;`)."""
    found = {}
    for step, words in plan.items():
        if words[0] == "submitted":
            details = " ".join(words[1:]).partition(";")[0]
            found[step] = [part.split()[1] for part in details.split(", ")]
    return found


def step_states(printed: str) -> dict[str, str]:
    """`xdt slurm status --pipeline`: each step's state (the words before its jobs)."""
    steps = ("teacher", "cache", "distill", "eval")
    return {line.split()[0]: line.split(None, 1)[1].partition(":")[0]
            for line in printed.splitlines() if line.split() and line.split()[0] in steps}


def queued() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                              check=True).stdout.split())


def wait_all(jobs: dict[str, list[str]], out: Path, timeout: float = 600) -> dict[str, str]:
    """Each job's final state (every array task's, joined), in submission order."""
    states = {}
    for ids in jobs.values():
        for job_id in ids:
            tasks = wait_job(job_id, timeout)
            states[job_id] = ",".join(sorted({t["JobState"] for t in tasks}))
    return states


@pytest.fixture(scope="module")
def finished(cluster, tmp_path_factory):
    """The quickstart, small, as a pipeline of every step (a teacher cache, so that step runs too), finished."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    code, printed, err = xdt(["slurm", "pipeline", QUICKSTART, *SMALL, f"output.dir={out}",
                              f"distill.teacher_cache={out}/teacher-cache", *RESOURCES])
    assert code == 0, err
    plan = plan_of(printed)
    jobs = submitted_jobs(plan)
    states = wait_all(jobs, out)
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs(out)}\n{logs(out / 'slurm' / 'eval')}"
    return out, plan, jobs


def test_the_pipeline_runs_every_step_in_order_and_reports_like_xdt_run(finished):
    out, plan, jobs = finished
    assert list(jobs) == ["teacher", "cache", "distill", "eval"] and len(jobs["eval"]) == 2
    teacher, cache, distill, (array, merge) = jobs["teacher"][0], jobs["cache"][0], jobs["distill"][0], jobs["eval"]
    after = {step: words[-1] for step, words in plan.items()}  # "after: A:B" closes each line
    assert after == {"teacher": "nothing", "cache": teacher, "distill": f"{teacher}:{cache}", "eval": distill}

    report = json.loads((out / "slurm" / "eval" / "report" / "report.json").read_text())
    assert set(report["languages"]) == LANGS and report["missing"] == []
    teacher_f1, student_f1 = report["teacher"]["mean_f1"], report["mean_f1"]
    assert teacher_f1 > MIN_TEACHER_F1, f"teacher mean F1 {teacher_f1:.2f}: it learned nothing\n{logs(out)}"
    assert student_f1 > MIN_STUDENT_F1, f"student mean F1 {student_f1:.2f} (teacher {teacher_f1:.2f})\n{logs(out)}"
    assert all(entry["teacher_f1"] is not None for entry in report["languages"].values())
    # the distillation read the cache the cache job wrote, with the teacher the teacher job fine-tuned
    manifest = json.loads((out / "teacher-cache" / "manifest.json").read_text())
    from xdt.distill.teacher_cache import teacher_weights_hash

    assert manifest["teacher_hash"] == teacher_weights_hash(out / "teacher")
    distilled = json.loads((out / "distill_done.json").read_text())
    assert distilled["path"] == str(out / "student_best") and distilled["teacher_loaded"] is False  # the cache served
    assert f"teacher.model={out}/teacher" in (out / "slurm" / f"xdt-distill-{out.name}.sbatch").read_text()

    code, printed, err = xdt(["slurm", "status", "--pipeline", str(out)])
    assert code == 0, err
    assert step_states(printed) == dict.fromkeys(("teacher", "cache", "distill", "eval"), "done"), printed
    assert f"job {distill} COMPLETED" in printed and f"array {array} COMPLETED, merge {merge} COMPLETED" in printed
    assert "checkpoint" in printed
    assert f"teacher mean {teacher_f1:.2f}" in printed  # the report's summary, as `xdt run` prints it


def test_resubmitting_skips_finished_steps_and_redoes_only_what_is_missing(finished):
    out, _, _ = finished
    record = out / "slurm" / "pipeline.json"
    before = json.loads(record.read_text())
    code, printed, err = xdt(["slurm", "pipeline", QUICKSTART, *SMALL, f"output.dir={out}",
                              f"distill.teacher_cache={out}/teacher-cache", *RESOURCES])
    assert code == 0, err
    assert {step: words[0] for step, words in plan_of(printed).items()} == dict.fromkeys(
        ("teacher", "cache", "distill", "eval"), "done")
    assert json.loads(record.read_text())["steps"] == before["steps"]  # nothing new submitted

    report = out / "slurm" / "eval" / "report" / "report.json"
    first = json.loads(report.read_text())
    report.unlink()
    code, printed, err = xdt(["slurm", "pipeline", QUICKSTART, *SMALL, f"output.dir={out}",
                              f"distill.teacher_cache={out}/teacher-cache", *RESOURCES])
    assert code == 0, err
    plan = plan_of(printed)
    assert [plan[s][0] for s in ("teacher", "cache", "distill", "eval")] == ["done", "done", "done", "submitted"]
    assert plan["eval"][-1] == "nothing"  # waits on no job: what it needs is there
    jobs = submitted_jobs(plan)
    assert list(jobs) == ["eval"]
    assert set(wait_all(jobs, out).values()) == {"COMPLETED"}, logs(out / "slurm" / "eval")
    again = json.loads(report.read_text())
    assert again["mean_f1"] == first["mean_f1"] and again["teacher"]["mean_f1"] == first["teacher"]["mean_f1"]
    assert json.loads(record.read_text())["steps"]["eval"]["jobs"] == dict(zip(("array", "merge"), jobs["eval"]))


def test_a_failing_step_cancels_every_step_after_it(cluster, tmp_path):
    """The teacher job fails at run time (a language without data is found when the job reads the data, not when
    the config is checked): SLURM cancels the cache, distillation, evaluation array and merge jobs that wait on
    it (--kill-on-invalid-dep=yes) instead of leaving them pending."""
    out = tmp_path / "run"
    code, printed, err = xdt(["slurm", "pipeline", QUICKSTART, *SMALL, "data.langs=[en,zz]", f"output.dir={out}",
                              f"distill.teacher_cache={out}/teacher-cache", *RESOURCES])
    assert code == 0, err
    jobs = submitted_jobs(plan_of(printed))
    assert list(jobs) == ["teacher", "cache", "distill", "eval"]
    states = wait_all(jobs, out, timeout=240)
    ids = [i for group in jobs.values() for i in group]
    assert states[ids[0]] == "FAILED", f"{states}\n{logs(out)}"
    assert [states[i] for i in ids[1:]] == ["CANCELLED"] * 4, states
    whole = "".join(p.read_text(errors="replace") for p in (out / "slurm" / "logs").glob("*"))
    assert "xdt: error: " in whole and "zz" in whole, whole[-3000:]
    assert not queued() & set(ids)  # nothing left pending
    for i in ids[1:]:  # never started: no log of theirs
        assert not list((out / "slurm").rglob(f"*-{i}*.out")), i
    code, printed, _ = xdt(["slurm", "status", "--pipeline", str(out)])
    assert step_states(printed) == {"teacher": "not done (FAILED)", **dict.fromkeys(
        ("cache", "distill", "eval"), "not done (CANCELLED)")}, printed


@pytest.mark.parametrize("argv, message", [
    (["pipeline", QUICKSTART, "--nodes", "99"], "--nodes 99: partition "),
    (["pipeline", QUICKSTART, "--step-resources", "distill:nodes=99"], "step distill: --nodes 99: partition "),
    (["pipeline", QUICKSTART, "--partition", "nosuch"], "--partition nosuch: no such partition"),
    (["pipeline", QUICKSTART, "teacher.epochz=1"], "teacher.epochz: unknown key"),
    (["submit", QUICKSTART, "--nodes", "99"], "--nodes 99: partition "),
    (["submit", QUICKSTART, "--partition", "nosuch"], "--partition nosuch: no such partition"),
    (["eval", "--model", ".", "--data", ".", "--langs", "en", "--shards", "1", "--partition", "nosuch"],
     "--partition nosuch: no such partition"),
])
def test_bad_input_is_refused_before_anything_is_submitted(cluster, tmp_path, argv, message):
    out = tmp_path / "run"
    before = queued()
    where = [f"output.dir={out}"] if argv[0] != "eval" else ["--out", str(out)]
    code, printed, err = xdt(["slurm", *argv, *where])
    assert code == 2 and printed == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("xdt: error: ") and message in err, err
    assert queued() == before and not out.exists()  # no job, no script, no record
