"""`xdt slurm pipeline` without a cluster: the steps, their resources and dependencies, what a resubmission leaves
out, the dry run, and the preflight checks against a described cluster. tests/slurm/test_pipeline.py runs the same
pipeline on a real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xdt.errors import XdtError
from xdt.slurm import pipeline as pl
from xdt.slurm.preflight import Partition, _gpus, check_job
from xdt.slurm.render import Resources

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from xdt.cli import main

    capsys.readouterr()
    code = main(["slurm", *argv])
    got = capsys.readouterr()
    return code, got.out, got.err


def no_jobs(ids):  # job_states for a cluster that knows none of the recorded jobs
    return {i: "UNKNOWN" for i in ids}


class FakeSbatch:
    """sbatch as the pipeline calls it: each call's script and options, job ids from 100."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, list[str]]] = []
        self.next_id = 100
        monkeypatch.setattr("xdt.slurm.submit.sbatch", self)

    def __call__(self, script, options=None) -> str:
        self.calls.append((Path(script).name, list(options or [])))
        self.next_id += 1
        return str(self.next_id - 1)


def test_dry_run_prints_every_script_and_the_graph_and_submits_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, err = cli(["pipeline", QUICKSTART, f"output.dir={out}", f"distill.teacher_cache={out}/tc",
                              "--eval-shards", "2", "--dry-run"], capsys)
    assert code == 0, err
    graph = printed.rpartition("# ---- dependency graph")[2].strip().splitlines()[1:]
    assert [line.split()[:2] for line in graph] == [["teacher", "submit"], ["cache", "submit"],
                                                    ["distill", "submit"], ["eval", "submit"]]
    assert graph[0].endswith("waits on: nothing") and graph[1].endswith("waits on: teacher")
    assert graph[2].endswith("waits on: teacher, cache") and graph[3].endswith("waits on: distill")
    scripts = {p.name: p.read_text() for p in (out / "slurm").rglob("*.sbatch")}
    assert sorted(scripts) == ["xdt-cache-run.sbatch", "xdt-distill-run.sbatch", "xdt-eval-run-array.sbatch",
                               "xdt-eval-run-merge.sbatch", "xdt-teacher-run.sbatch"]
    for text in scripts.values():
        assert text in printed
    teacher, cache, distill = (scripts[f"xdt-{s}-run.sbatch"] for s in ("teacher", "cache", "distill"))
    assert "-m xdt teacher train" in teacher and "teacher.model=" not in teacher
    assert "-m xdt teacher cache" in cache and f"teacher.model={out}/teacher" in cache
    assert "-m xdt distill" in distill and f"teacher.model={out}/teacher" in distill
    array = " ".join(scripts["xdt-eval-run-array.sbatch"].replace("\\\n", " ").split())  # one line per command
    assert f"--model {out}/student_best" in array and f"--teacher {out}/teacher" in array
    assert "#SBATCH --array=0-1" in array
    assert not (out / "slurm" / "pipeline.json").exists() and not (out / "slurm" / "jobs.jsonl").exists()


def test_without_a_teacher_cache_there_is_no_cache_step_and_a_given_teacher_no_teacher_step(tmp_path):
    pipe = pl.plan(QUICKSTART, [f"output.dir={tmp_path / 'a'}"], job_states=no_jobs)
    assert list(pipe.steps) == ["teacher", "distill", "eval"] and pipe.steps["distill"].after == ["teacher"]
    teacher = tmp_path / "teacher"  # a fine-tuned teacher folder used as it is (teacher.epochs 0)
    teacher.mkdir()
    pipe = pl.plan(QUICKSTART, [f"output.dir={tmp_path / 'b'}", f"teacher.model={teacher}", "teacher.epochs=0"],
                   job_states=no_jobs)
    assert pipe.steps["teacher"].state == "given" and [s.name for s in pipe.to_submit()] == ["distill", "eval"]
    assert "teacher.model=" not in pipe.steps["distill"].train.text.replace(f"teacher.model={teacher}", "")
    assert f"--teacher {teacher}" in " ".join(pipe.steps["eval"].evals.array_text.replace("\\\n", " ").split())


def test_resources_config_section_then_common_flags_then_step_flags(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(Path(QUICKSTART).read_text() + "slurm:\n  partition: p1\n  eval_shards: 3\n"
                        "  teacher: {nodes: 2, time: '02:00:00'}\n  distill: {partition: p2, gpus_per_node: 4}\n")
    common = {"nodes": 3, "cpus_per_task": 4, "time": None}
    per_step = pl.parse_step_resources(["teacher:nodes=5,time=01:00:00", "eval:cpus-per-task=2"])
    pipe = pl.plan(str(cfg_file), [f"output.dir={tmp_path / 'run'}"], common, per_step, {"env": ["A=1"]},
                   job_states=no_jobs)
    r = {name: step.res for name, step in pipe.steps.items()}
    assert (r["teacher"].nodes, r["teacher"].time, r["teacher"].partition) == (5, "01:00:00", "p1")
    assert (r["distill"].nodes, r["distill"].partition, r["distill"].gpus_per_node, r["distill"].cpus_per_task) == \
        (3, "p2", 4, 4)
    assert (r["eval"].nodes, r["eval"].cpus_per_task, r["eval"].partition) == (1, 2, "p1")  # common --nodes: training
    assert all(res.env == ["A=1"] for res in r.values())
    assert "#SBATCH --array=0-2" in pipe.steps["eval"].evals.array_text  # slurm.eval_shards
    assert "#SBATCH --nodes=5" in pipe.steps["teacher"].train.text


@pytest.mark.parametrize("item, message", [
    ("gpu:nodes=2", "STEP one of teacher, cache, distill, eval"),
    ("teacher:nodez=2", "unknown key 'nodez'"),
    ("teacher:nodes=two", "nodes: expected an integer"),
    ("teacher", "expected STEP:KEY=VALUE"),
])
def test_step_resources_are_checked(item, message):
    with pytest.raises(XdtError, match=message):
        pl.parse_step_resources([item])


@pytest.mark.parametrize("override, message", [
    ("slurm.teacher.nodez=2", "^slurm.teacher.nodez: unknown key"),
    ("slurm.eval.time=soon", "^slurm.eval.time: expected minutes"),
    ("slurm.distill.nodes=0", "^slurm.distill.nodes: expected a positive integer"),
    ("slurm.eval_shards=0", "^slurm.eval_shards: expected a positive integer"),
])
def test_the_slurm_config_section_refuses_what_it_does_not_know(tmp_path, override, message, capsys):
    from xdt.config import load_config
    from xdt.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(QUICKSTART, [override])
    code, out, err = cli(["pipeline", QUICKSTART, f"output.dir={tmp_path}", override, "--dry-run"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "slurm." in err


def test_slurm_section_is_not_part_of_what_a_run_computes():
    from dataclasses import asdict

    from xdt.config import load_config
    from xdt.outputs import run_identity

    a, b = (run_identity(asdict(load_config(QUICKSTART, o))) for o in ([], ["slurm.teacher.nodes=4"]))
    assert a == b and not any(k.startswith("slurm.") for k in a)


def test_submission_chains_the_steps_and_a_resubmission_continues(tmp_path, monkeypatch):
    out = tmp_path / "run"
    overrides = [f"output.dir={out}", f"distill.teacher_cache={out}/tc"]
    sbatch = FakeSbatch(monkeypatch)
    pipe = pl.plan(QUICKSTART, overrides, eval_shards=2, job_states=no_jobs)
    assert pl.submit(pipe) == ["teacher", "cache", "distill", "eval"]
    kill = "--kill-on-invalid-dep=yes"
    assert sbatch.calls == [("xdt-teacher-run.sbatch", []),
                            ("xdt-cache-run.sbatch", ["--dependency=afterok:100", kill]),
                            ("xdt-distill-run.sbatch", ["--dependency=afterok:100:101", kill]),
                            ("xdt-eval-run-array.sbatch", ["--dependency=afterok:102", kill]),
                            ("xdt-eval-run-merge.sbatch", ["--dependency=afterok:103", kill])]
    record = json.loads((out / "slurm" / "pipeline.json").read_text())
    assert {s: e["jobs"] for s, e in record["steps"].items()} == {
        "teacher": {"job": "100"}, "cache": {"job": "101"}, "distill": {"job": "102"},
        "eval": {"array": "103", "merge": "104"}}
    assert record["steps"]["distill"]["waits_on"] == ["100", "101"]
    jobs = [json.loads(line) for line in (out / "slurm" / "jobs.jsonl").read_text().splitlines()]
    assert [j["kind"] for j in jobs] == ["pipeline-teacher", "pipeline-cache", "pipeline-distill",
                                         "pipeline-eval-array", "pipeline-eval-merge"]

    # the teacher finished, the cache job still runs, the rest failed or was cancelled: a resubmission leaves out
    # the teacher (done) and the cache (active), and the distillation waits on the running cache job
    (out / "teacher_done.json").write_text("{}")
    states = {"101": "RUNNING", "102": "CANCELLED", "103": "CANCELLED", "104": "CANCELLED"}
    pipe = pl.plan(QUICKSTART, overrides, eval_shards=2, job_states=lambda ids: {i: states.get(i, "UNKNOWN")
                                                                                 for i in ids})
    assert {s.name: s.state for s in pipe.steps.values()} == {"teacher": "done", "cache": "active",
                                                              "distill": "submit", "eval": "submit"}
    sbatch.calls.clear()
    assert pl.submit(pipe) == ["distill", "eval"]
    assert sbatch.calls == [("xdt-distill-run.sbatch", ["--dependency=afterok:101", kill]),
                            ("xdt-eval-run-array.sbatch", ["--dependency=afterok:105", kill]),
                            ("xdt-eval-run-merge.sbatch", ["--dependency=afterok:106", kill])]
    lines = pl.plan_lines(pipe)
    assert lines[0].split()[:2] == ["teacher", "done"] and lines[1].split()[:2] == ["cache", "active"]
    assert lines[2].split()[:4] == ["distill", "submitted", "job", "105;"]
    record = json.loads((out / "slurm" / "pipeline.json").read_text())
    assert record["steps"]["cache"]["jobs"] == {"job": "101"} and record["steps"]["distill"]["jobs"] == {"job": "105"}
    assert len(record["submissions"]) == 2

    # everything finished but the evaluation's report (removed): only the evaluation goes, waiting on nothing; the
    # earlier evaluation's leftovers are cleared first (the merge never writes over them)
    for marker in (out / "distill_done.json", out / "tc" / "manifest.json"):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
    (out / "slurm" / "eval" / "shards" / "0").mkdir(parents=True)
    sbatch.calls.clear()
    pipe = pl.plan(QUICKSTART, overrides, eval_shards=2, job_states=no_jobs)
    assert pl.submit(pipe) == ["eval"] and [c[1] for c in sbatch.calls] == [[], ["--dependency=afterok:108", kill]]
    assert not (out / "slurm" / "eval" / "shards").exists()


def test_a_failing_sbatch_part_way_keeps_what_went_in_on_record(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []

    def sbatch(script, options=None):
        calls.append(script)
        if len(calls) == 2:
            raise XdtError(f"sbatch {script}: Batch job submission failed: Invalid account")
        return "100"

    monkeypatch.setattr("xdt.slurm.submit.sbatch", sbatch)
    pipe = pl.plan(QUICKSTART, [f"output.dir={out}"], job_states=no_jobs)
    with pytest.raises(XdtError, match=r"Invalid account \(submitted before it: teacher, recorded in"):
        pl.submit(pipe)
    record = json.loads((out / "slurm" / "pipeline.json").read_text())
    assert record["steps"]["teacher"]["jobs"] == {"job": "100"} and record["steps"]["distill"]["state"] == "submit"


def test_pipeline_status_shows_steps_checkpoints_and_the_report(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    FakeSbatch(monkeypatch)
    pl.submit(pl.plan(QUICKSTART, [f"output.dir={out}"], job_states=no_jobs))
    (out / "teacher_done.json").write_text("{}")
    ckpt = out / "checkpoints" / "distill"
    (ckpt / "s0-p0-step5").mkdir(parents=True)
    (ckpt / "latest").write_text("s0-p0-step5")
    states = {"100": "COMPLETED", "101": "RUNNING", "102": "PENDING", "103": "PENDING"}
    monkeypatch.setattr(pl, "scontrol_states", lambda ids: {i: states[i] for i in ids})
    code, printed, err = cli(["status", "--pipeline", str(out)], capsys)
    assert code == 0, err
    lines = printed.splitlines()
    assert lines[1].split() == ["teacher", "done:", "job", "100", "COMPLETED"]
    assert lines[2].split() == ["distill", "running:", "job", "101", "RUNNING"]
    assert lines[3].split()[0] == "checkpoint" and "s0-p0-step5" in lines[3]
    assert lines[4].split() == ["eval", "pending:", "array", "102", "PENDING,", "merge", "103", "PENDING"]
    assert lines[-1].startswith("report: not yet")
    code, _, err = cli(["status", "--pipeline", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no slurm/pipeline.json" in err

    asked = []

    def no_slurm(ids):  # what scontrol_states raises where SLURM is not installed
        asked.append(ids)
        raise XdtError("scontrol: not found on PATH")

    monkeypatch.setattr(pl, "scontrol_states", no_slurm)
    code, printed, err = cli(["status", "--pipeline", str(out)], capsys)
    assert code == 0, err
    lines = printed.splitlines()
    assert lines[1] == "job states unknown: scontrol: not found on PATH" and len(asked) == 1  # asked once, not per step
    assert lines[2].split() == ["teacher", "done:", "job", "100", "?"]  # its marker still says done
    assert lines[3].split()[:5] == ["distill", "not", "done", "(job", "states"]


CLUSTER = {"debug": Partition("debug", ["n1", "n2"], True, None, 8, 0),
           "gpu": Partition("gpu", ["g1", "g2"], False, 1, 32, 4)}


@pytest.mark.parametrize("res, message", [
    (Resources(nodes=3), r"^--nodes 3: partition debug has 2 node\(s\)$"),
    (Resources(partition="gpu", nodes=1, gpus_per_node=4), None),
    (Resources(partition="nosuch"), r"^--partition nosuch: no such partition; the cluster has debug, gpu"),
    (Resources(cpus_per_task=16), r"^--cpus-per-task 16: the nodes of partition debug have at most 8 CPUs"),
    (Resources(partition="gpu", gpus_per_node=8), r"^--gpus-per-node 8: .* partition gpu have at most 4 GPU"),
    (Resources(partition="gpu", nodes=2), r"^--nodes 2: partition gpu allows 1 node\(s\) per job \(MaxNodes\)$"),
    (Resources(gpus_per_node=1), r"^--gpus-per-node 1: the nodes of partition debug have no GPUs"),
])
def test_preflight_refuses_what_the_cluster_cannot_run(res, message):
    if message is None:
        check_job(res, CLUSTER)
        return
    with pytest.raises(XdtError, match=message):
        check_job(res, CLUSTER)
    check_job(Resources(nodes=2, cpus_per_task=8), CLUSTER)
    check_job(Resources(partition="gpu", gpus_per_node=4, cpus_per_task=8), CLUSTER)


def test_gpu_gres_is_read_in_its_usual_spellings():
    assert [_gpus(g) for g in ("(null)", "gpu:4", "gpu:a100:8(S:0-1)", "gpu:a100:2,gpu:v100:2,mps:100")] == \
        [0, 4, 8, 4]
