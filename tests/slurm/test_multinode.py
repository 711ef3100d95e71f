"""Two nodes for real: on the session's local cluster (two slurmd, each in network namespaces of its own), a
distillation submitted with `xdt slurm submit --nodes 2 --procs-per-node 1` runs torchrun on both nodes through the
c10d rendezvous of slurm/train.sbatch, and

- trains exactly as one node with the same world size (2 ranks) and global batch, under ZeRO-2 and ZeRO-3;
- survives a node crash: every process of one node is killed (`cluster.sh kill-node`), SLURM declares the node
  DOWN (SlurmdTimeout), kills the job on the other node and requeues it (NODE_FAIL with --requeue: SLURM's own
  node-failure requeue, not the template's); once the node is back the job resumes from the newest complete
  checkpoint (output.resume=auto) and ends with the uninterrupted run's curve and weights;
- survives a preemption signal: USR1 to the batch shell reaches the ranks on both nodes, they save, requeue and the
  restart resumes to the same curve and weights.

Runs train with the shipped dropout (0.1) and a checkpoint every step (tests/recipes/test_resume.py's EVERY_STEP). Skipped,
with the reason, where the machine cannot make network namespaces (the cluster then runs one node).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.slurm.cluster import _cluster, logs, need_nodes, slurm_cli, wait_job
from tests.conftest import EVERY_STEP, command, curve, final_weights
from xdt.slurm.status import scontrol_jobs

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]


def submit(workdir: Path, name: str, capsys, nodes: int, zero: int, extra: tuple[str, ...] = EVERY_STEP) -> tuple:
    """`xdt slurm submit --command distill` of test_resume's tiny distillation: `nodes` nodes, 2 ranks in all."""
    out = workdir / name
    overrides = command(workdir, out, 1, zero, list(extra))[4:]  # the `xdt distill` arguments, launcher left out
    config = workdir / "tiny.yaml"
    config.write_text("seed: 3\n")
    code, printed = slurm_cli(["submit", str(config), *overrides, "--command", "distill", "--job-name", name,
                               "--nodes", str(nodes), "--procs-per-node", str(2 // nodes),
                               "--cpus-per-task", str(2 // nodes), "--time", "00:15:00", "--signal-seconds", "60",
                               "--env", f"TORCH_EXTENSIONS_DIR={workdir / 'torch_extensions'}"], capsys)
    assert code == 0
    return printed.strip(), out


_runs: dict[tuple, Path] = {}


def finished(workdir: Path, capsys, nodes: int, zero: int) -> Path:
    """An uninterrupted run (once per module): its folder."""
    key = (nodes, zero)
    if key not in _runs:
        job_id, out = submit(workdir, f"n{nodes}-z{zero}", capsys, nodes, zero)
        jobs = wait_job(job_id, 600)
        assert jobs[0]["JobState"] == "COMPLETED" and jobs[0]["Restarts"] == "0", f"{jobs}\n{logs(out)}"
        _runs[key] = out
    return _runs[key]


def assert_same_run(a: Path, b: Path) -> None:
    assert curve(a) == curve(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    differ = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"
    assert (a / "student_best" / "model.safetensors").read_bytes() == \
        (b / "student_best" / "model.safetensors").read_bytes()


def wait_records(out: Path, job_id: str, lines: int, timeout: float = 300) -> None:
    """Until the run has logged `lines` records (steps)."""
    log = out / "distill.jsonl"
    deadline = time.monotonic() + timeout
    while not (log.exists() and len(log.read_text().splitlines()) >= lines):
        assert time.monotonic() < deadline, f"no {lines} records after {timeout:.0f} s\n{logs(out)}"
        assert scontrol_jobs(job_id)[0]["JobState"] in ("PENDING", "RUNNING"), logs(out)
        time.sleep(0.1)


def wait_agent_queue_empty(timeout: float) -> None:
    """Until `sdiag` reports no RPC waiting for a retry in slurmctld's agent queue."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
        size = next(int(line.split(":")[1]) for line in out.splitlines() if line.strip().startswith("Agent queue size"))
        if size == 0:
            return
        assert time.monotonic() < deadline, f"slurmctld's agent queue still holds {size} RPCs:\n{out}"
        time.sleep(0.5)


@pytest.mark.parametrize("zero", [2, 3])
def test_two_nodes_train_as_one_node_with_the_same_ranks(cluster, workdir, capsys, monkeypatch, zero):
    need_nodes(cluster)
    monkeypatch.chdir(ROOT)
    two = finished(workdir, capsys, 2, zero)
    one = finished(workdir, capsys, 1, zero)
    # the two-node job ran one torchrun per node, each with one rank, the rendezvous on the first node
    job_log = next((two / "slurm" / "logs").glob("n2-*.out")).read_text()
    assert "on node[1-2]," in job_log and "rendezvous node1:" in job_log, job_log
    for task in (0, 1):
        node_log = next((two / "slurm" / "logs").glob(f"n2-*.{task}.log")).read_text()
        assert "[default0]:" in node_log and "[default1]:" not in node_log, node_log[-2000:]
    # bit-identical: the same ranks reduce in the same order whether they share a node or not
    assert_same_run(two, one)


def test_a_node_crash_requeues_the_job_and_it_resumes_to_the_same_weights(cluster, workdir, capsys, monkeypatch):
    need_nodes(cluster)
    monkeypatch.chdir(ROOT)
    ref = finished(workdir, capsys, 2, 2)
    total = len(curve(ref))
    job_id, out = submit(workdir, "crash", capsys, 2, 2)
    wait_records(out, job_id, total // 2)
    job = scontrol_jobs(job_id)[0]
    crashed = "node2" if job["BatchHost"] == "node1" else "node1"  # not the batch host: the job's shell lives on
    done = _cluster("kill-node", cluster, crashed)
    assert done.returncode == 0, done.stderr
    assert len(curve(out)) < total, "the run finished before the node crashed"
    # SLURM notices (SlurmdTimeout), ends the job on the other node and requeues it: NODE_FAIL, then PENDING
    deadline = time.monotonic() + 180
    while (job := scontrol_jobs(job_id)[0])["Restarts"] == "0":
        assert time.monotonic() < deadline, f"not requeued after the crash: {job}\n{logs(out)}"
        time.sleep(0.5)
    # (its state may still read COMPLETING while the other node cleans up; it waits for two nodes either way)
    # slurmctld retries the kill of the crashed allocation from its agent queue until the node answers again, and
    # delivers it ~45 s after the node is back. A node back within seconds (here; a real one reboots for minutes)
    # can get that stale kill after the requeued job, same job and step id, started on it: SIGTERM 45 s after the
    # node's return, 9-16 s into the relaunch (CI: a second requeue; here once in 3 runs: a FAILED job). Hold the
    # job until the agent queue is empty (45 s, sdiag), as a rebooting node would.
    subprocess.run(["scontrol", "hold", job_id], check=True, capture_output=True)
    up = _cluster("up", cluster)  # the node reboots: its slurmd registers again and the job starts on both nodes
    assert up.returncode == 0, f"{up.stderr}\n{scontrol_jobs(job_id)}"
    wait_agent_queue_empty(120)
    subprocess.run(["scontrol", "release", job_id], check=True, capture_output=True)
    jobs = wait_job(job_id, 600)
    assert jobs[0]["JobState"] == "COMPLETED" and jobs[0]["Restarts"] == "1", f"{jobs}\n{logs(out)}"
    node_logs = "".join(p.read_text() for p in (out / "slurm" / "logs").glob("crash-*.log"))
    assert "resuming distillation from" in node_logs, logs(out)
    assert_same_run(out, ref)


def test_a_preempted_two_node_job_resumes_to_the_same_weights(cluster, workdir, capsys, monkeypatch):
    need_nodes(cluster)
    monkeypatch.chdir(ROOT)
    ref = finished(workdir, capsys, 2, 2)
    job_id, out = submit(workdir, "preempt2", capsys, 2, 2)
    wait_records(out, job_id, len(curve(ref)) // 3)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    jobs = wait_job(job_id, 600)
    assert jobs[0]["JobState"] == "COMPLETED" and jobs[0]["Restarts"] == "1", f"{jobs}\n{logs(out)}"
    for task in (0, 1):  # the signal reached the rank on each node, both stopped at the same step
        node_log = next((out / "slurm" / "logs").glob(f"preempt2-*.{task}.log")).read_text()
        assert "stopping after step" in node_log and "(signal" in node_log, node_log[-3000:]
    assert_same_run(out, ref)
