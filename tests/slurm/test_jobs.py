"""On a real single-node SLURM cluster (slurm/local/cluster.sh, brought up once for the session and down at the end):
the rendered scripts submitted with sbatch, the USR1 path of a preempted job (trap -> srun -> every rank -> agreement
-> scontrol requeue -> restart), a sharded evaluation array plus its merge job against one `xdt eval` process, a
2-rank distillation that leaves its report, and a preempted `xdt run` that resumes.

Skipped, saying why, only when the SLURM binaries are missing and cannot be installed (`cluster.sh install` needs
root and apt-get), or when the daemons cannot run here (not root).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm.cluster import _cluster, logs, slurm_cli, wait_job
from xdt.slurm.render import Resources
from xdt.slurm.status import newest_checkpoint, scontrol_jobs
from xdt.slurm.submit import sbatch, write_script
from xdt.slurm.train_job import build_train_job, resume_supported

# 1800 s: the first test also installs slurm-wlm (apt) and brings the cluster up; requeued jobs wait for a restart
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
DATA = ROOT.parent / "shared" / "data"
XTREME = DATA / "wikiann" / "xtreme"
VOCAB = DATA / "vocab" / "bert-base-multilingual-cased"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
# small distillation of the quickstart, a few seconds of training per rank, that still learns: with 1 teacher epoch
# of 100 sentences per language (8 steps per rank) the teacher scored F1 0.0 in every language and the test passed.
# These settings (93 teacher steps per rank, ~10 s) measured teacher 58.8-59.9, student 44.9-48.5 test mean F1 on
# the cluster's 2 ranks (the preempted and resumed run: 59.9 and 44.9)
SMALL = ["data.mock.train_sentences=200", "data.mock.dev_sentences=50", "data.mock.test_sentences=50",
         "teacher.epochs=3", "teacher.lr=3e-3", "teacher.batch_size=16", "distill.steps=5"]
# what a run that learns reaches with margin; a teacher that learned nothing (0.0) or a student that lost it fails
MIN_TEACHER_F1, MIN_STUDENT_F1 = 40.0, 30.0


def assert_learned(out: Path) -> None:
    """The run's report: the teacher learned the mock data and the distilled student kept a good part of it."""
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["languages"]) == {"en", "de", "ru", "ar", "hi"}
    teacher, student = report["teacher"]["mean_f1"], report["mean_f1"]
    assert teacher > MIN_TEACHER_F1, f"teacher mean F1 {teacher:.2f}: it learned nothing\n{logs(out)}"
    assert student > MIN_STUDENT_F1, f"student mean F1 {student:.2f} (teacher {teacher:.2f})\n{logs(out)}"


# --------------------------------------------------------------------------------------------- tests


def test_cluster_up_is_idempotent_and_reports_status(cluster):
    again = _cluster("up", cluster)
    assert again.returncode == 0 and again.stdout.strip() == f"export SLURM_CONF={os.environ['SLURM_CONF']}"
    status = _cluster("status", cluster)
    assert status.returncode == 0 and "slurmctld: running" in status.stdout and "idle" in status.stdout


def test_usr1_reaches_every_rank_and_the_job_requeues_itself(cluster, tmp_path, monkeypatch):
    """The real train.sbatch around a probe: USR1 to the batch shell (what --signal=B:USR1@S does) is forwarded
    through srun and torchrun's agent to both gloo ranks; they stop at one step, rank 0 requeues the job with
    scontrol, and the restarted job (SLURM_RESTART_COUNT=1) finishes."""
    monkeypatch.chdir(ROOT)  # the job runs `python -m tests.slurm.probe` from here (its --chdir)
    out = tmp_path / "probe-run"
    job = build_train_job(QUICKSTART, [f"output.dir={out}"], Resources(cpus_per_task=2, time="00:10:00",
                                                                       signal_seconds=60, job_name="probe"),
                          module="tests.slurm.probe")
    job_id = sbatch(write_script(job.script, job.text))
    probe = out / "probe"
    deadline = time.monotonic() + 120
    while not all((probe / f"ready-0-{r}").exists() for r in (0, 1)):
        assert time.monotonic() < deadline, f"the ranks never started\n{logs(out)}"
        assert scontrol_jobs(job_id)[0]["JobState"] in ("PENDING", "RUNNING"), logs(out)
        time.sleep(0.2)
    # torchrun named this node for the workers by its host name (--local-addr), not `localhost` (socket.getfqdn()
    # where the host name resolves to 127.0.0.1), which workers on other nodes could not reach
    batch_host = scontrol_jobs(job_id)[0]["BatchHost"]
    assert json.loads((probe / "ready-0-1").read_text())["master_addr"] == batch_host != "localhost"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    jobs = wait_job(job_id, 150)
    assert jobs[0]["JobState"] == "COMPLETED" and jobs[0]["Restarts"] == "1", f"{jobs}\n{logs(out)}"
    step0, reason0, got0 = (probe / "stopped-0-0").read_text().split(" ")
    step1, reason1, got1 = (probe / "stopped-0-1").read_text().split(" ")
    assert step0 == step1 and reason0 == reason1 == "signal"
    usr1 = str(int(signal.SIGUSR1))
    assert got0.split(",")[0] == usr1 and got1.split(",")[0] == usr1  # USR1 reached both ranks (TERM may follow)
    assert (probe / "requeued").read_text() == "True"
    assert (probe / "finished-0").exists() and (probe / "finished-1").exists()
    batch_log = (out / "slurm" / "logs" / f"probe-{job_id}.out").read_text()
    assert "got SIGUSR1: forwarding it to the training step" in batch_log
    assert "(restart 1)" in batch_log and "finished" in batch_log


def test_a_usr1_during_the_jobs_set_up_stops_the_run_at_its_first_step(cluster, tmp_path, monkeypatch):
    """USR1 while the batch shell still runs the job's set-up lines: nothing to forward it to yet, so the batch
    shell writes it to XDT_SIGNAL_FILE; the ranks, started later, stop at their first step, rank 0 requeues, and the
    restart (which removes the file first) runs without stopping."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "early-run"
    job = build_train_job(QUICKSTART, [f"output.dir={out}"], Resources(
        cpus_per_task=2, time="00:10:00", signal_seconds=60, job_name="early",
        setup=['[[ "${SLURM_RESTART_COUNT:-0}" == 0 ]] && sleep 8  # e.g. module loads, a data copy']),
        module="tests.slurm.probe")
    job_id = sbatch(write_script(job.script, job.text))
    batch_log = out / "slurm" / "logs" / f"early-{job_id}.out"
    deadline = time.monotonic() + 60
    while not (batch_log.exists() and "[xdt]" in batch_log.read_text()):  # printed just before the set-up lines
        assert time.monotonic() < deadline, f"the job never started\n{logs(out)}"
        time.sleep(0.2)
    assert not (out / "probe").exists()  # no rank is running yet
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    jobs = wait_job(job_id, 150)
    assert jobs[0]["JobState"] == "COMPLETED" and jobs[0]["Restarts"] == "1", f"{jobs}\n{logs(out)}"
    probe = out / "probe"
    for rank in (0, 1):
        step, reason, got = (probe / f"stopped-0-{rank}").read_text().split(" ")
        assert (step, reason, got) == ("1", "signal", ""), got  # the ranks never got the signal themselves
        assert (probe / f"finished-{rank}").exists(), logs(out)
    assert (probe / "requeued").read_text() == "True"
    assert "got SIGUSR1" in batch_log.read_text()


@pytest.mark.data
@pytest.mark.skipif(not (XTREME.is_dir() and VOCAB.is_dir()), reason=f"WikiAnn xtreme data or mBERT vocabulary "
                                                                     f"not found under {DATA}")
def test_eval_array_and_merge_equal_one_eval_process(cluster, tmp_path, capsys):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from xdt.cli import main as eval_main

    torch.manual_seed(0)
    model = tmp_path / "model"
    config = BertConfig(vocab_size=119547, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, id2label=dict(enumerate(LABELS)),
                        label2id={x: i for i, x in enumerate(LABELS)})
    BertForTokenClassification(config).save_pretrained(model)
    AutoTokenizer.from_pretrained(str(VOCAB)).save_pretrained(model)
    langs, common = "af,hi,ms,tl,et", ["--max-sentences", "120", "--batch-size", "64"]

    code, printed = slurm_cli(["eval", "--model", str(model), "--data", str(XTREME), "--langs", langs, "--shards",
                               "4", "--out", str(tmp_path / "sharded"), "--cpus-per-task", "1", "--time", "00:10:00",
                               *common], capsys)
    assert code == 0
    ids = dict(line.split(" ") for line in printed.strip().splitlines())
    assert set(ids) == {"array", "merge"}
    # the single process runs here meanwhile
    assert eval_main(["eval", "--model", str(model), "--data", str(XTREME), "--langs", langs, "--out",
                      str(tmp_path / "single"), "--no-progress", "--threads", "1", *common]) == 0
    tasks = wait_job(ids["array"], 240)
    merge = wait_job(ids["merge"], 120)
    out = tmp_path / "sharded"
    assert len(tasks) == 4 and {t["JobState"] for t in tasks} == {"COMPLETED"}, f"{tasks}\n{logs(out)}"
    assert merge[0]["JobState"] == "COMPLETED", f"{merge}\n{logs(out)}"
    assert merge[0]["Dependency"] in ("(null)", "") or ids["array"] in merge[0]["Dependency"]

    single = json.loads((tmp_path / "single" / "report.json").read_text())
    merged = json.loads((out / "report" / "report.json").read_text())
    assert list(merged["languages"]) == list(single["languages"]) == langs.split(",")
    for lang, entry in single["languages"].items():
        got = merged["languages"][lang]
        for key in ("f1", "f1_strict", "precision", "recall", "words", "sentences"):
            assert got[key] == entry[key], f"{lang} {key}: {got[key]} != {entry[key]}"
    for key in ("mean_f1", "std_f1", "micro_f1"):
        assert merged[key] == single[key], key
    assert merged["timing"]["shards"] == 4
    for shard in range(4):
        assert json.loads((out / "shards" / str(shard) / "report.json").read_text())["shard"]["index"] == shard
    for lang in langs.split(","):
        assert (out / "report" / "predictions" / f"{lang}.conll").read_text() == \
            (tmp_path / "single" / "predictions" / f"{lang}.conll").read_text()


def test_submit_two_rank_distillation_completes_with_its_report(cluster, tmp_path, capsys):
    out = tmp_path / "run"
    code, printed = slurm_cli(["submit", QUICKSTART, *SMALL, f"output.dir={out}", "--cpus-per-task", "2",
                               "--time", "00:15:00", "--signal-seconds", "60"], capsys)
    assert code == 0
    job_id = printed.strip()
    assert job_id.isdigit()
    jobs = wait_job(job_id, 300)
    assert jobs[0]["JobState"] == "COMPLETED", f"{jobs}\n{logs(out)}"
    assert_learned(out)
    assert json.loads((out / "run.json").read_text())["config"]["output"]["dir"] == str(out)
    node_log = (out / "slurm" / "logs" / f"xdt-run-run-{job_id}.0.log").read_text()
    assert "[default0]:" in node_log and "[default1]:" in node_log  # two ranks, one node log
    # a CPU job builds DeepSpeed's op in a folder of its own (not the shared ~/.cache one), removed at the end
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"xdt-torch-extensions-{job_id}.*"))
    code, printed = slurm_cli(["status", job_id], capsys)
    assert code == 0 and f"job {job_id} (xdt-run-run): COMPLETED" in printed and f"output: {out}" in printed
    assert "checkpoint:" in printed and "accounting:" in printed


def test_preempted_run_requeues_and_resumes(cluster, tmp_path, capsys):
    """USR1 during distillation: the ranks save, the job requeues itself, the restart resumes from the checkpoint
    (output.resume=auto, passed by the script) and finishes with its report."""
    assert resume_supported(), "xdt.config.OutputConfig has no `resume` key: the rendered script cannot resume"
    out = tmp_path / "run"
    # the shared DeepSpeed op build of the test session (a CPU job builds its own by default: ~30 s per start)
    shared_ops = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    code, printed = slurm_cli(["submit", QUICKSTART, *SMALL, f"output.dir={out}", "--cpus-per-task", "2",
                               "--time", "00:15:00", "--signal-seconds", "60", "--job-name", "preempt",
                               "--env", f"TORCH_EXTENSIONS_DIR={shared_ops}"], capsys)
    assert code == 0
    job_id = printed.strip()
    metrics = out / "distill.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().strip()):  # distillation has taken a step
        assert time.monotonic() < deadline, f"distillation never started\n{logs(out)}"
        assert scontrol_jobs(job_id)[0]["JobState"] in ("PENDING", "RUNNING"), logs(out)
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    jobs = wait_job(job_id, 300)
    assert jobs[0]["JobState"] == "COMPLETED" and jobs[0]["Restarts"] == "1", f"{jobs}\n{logs(out)}"
    text = logs(out)
    assert "got SIGUSR1" in text and "(restart 1)" in text
    # whole logs: the restart's distillation pushes its "resuming" line out of the tails that logs() keeps
    node_log = (out / "slurm" / "logs" / f"preempt-{job_id}.0.log").read_text()
    stopped = re.search(r"stopping after step (\d+) \(signal", node_log)
    assert stopped and re.search(rf"resuming distillation from s\d+-p\d+-step{stopped[1]} ", node_log), node_log
    assert newest_checkpoint(out) is not None
    assert_learned(out)  # the resumed run learns as well as an uninterrupted one
