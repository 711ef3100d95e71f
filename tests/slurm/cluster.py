"""The local SLURM cluster the SLURM tests share (one per test session, brought up by the `cluster` fixture in
tests/conftest.py), and helpers to follow its jobs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from xdt.slurm.status import scontrol_jobs

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "slurm" / "local" / "cluster.sh"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED"}


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port < 65000:
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free pair of ports for slurmctld/slurmd")


def _cluster(action: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), action, *args], capture_output=True, text=True, env=env,
                          timeout=600)


def wait_job(job_id: str, timeout: float, until=FINAL) -> list[dict]:
    """Poll `scontrol show job` until every task (array tasks too) is in a state of `until`."""
    deadline = time.monotonic() + timeout
    jobs: list[dict] = []
    while time.monotonic() < deadline:
        jobs = scontrol_jobs(job_id)
        if jobs and all(j.get("JobState") in until for j in jobs):
            return jobs
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], capture_output=True)
    raise AssertionError(f"job {job_id} not in {sorted(until)} after {timeout:.0f} s: {jobs}")


def logs(folder: Path) -> str:
    """Every log of a run's slurm/logs, for assertion messages."""
    return "\n".join(f"==> {p} <==\n{p.read_text(errors='replace')[-4000:]}"
                     for p in sorted((folder / "slurm" / "logs").glob("*")) if p.is_file())


def slurm_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`xdt slurm ...` in this process, through the top-level CLI as a user runs it."""
    from xdt.cli import main

    capsys.readouterr()
    code = main(["slurm", *argv])
    return code, capsys.readouterr().out


# The session's cluster has this many nodes, each in network namespaces of its own, where the machine can make them;
# else one node, and the multi-node tests skip with the reason (env[NO_MULTINODE]).
NODES = 2
NO_MULTINODE = "XDT_TEST_NO_MULTINODE"


def need_nodes(env: dict, nodes: int = NODES) -> None:
    """Skip, saying why, when the session's cluster could not be made with `nodes` nodes."""
    if env.get(NO_MULTINODE):
        pytest.skip(f"the local cluster runs one node only: {env[NO_MULTINODE]}")
    assert int(env["XDT_TEST_NODES"]) >= nodes


def start_cluster(tmp_path_factory):
    """A fresh cluster in a session folder, on free ports (a developer's cluster may run beside it): NODES nodes in
    network namespaces, or one node where namespaces cannot be made."""
    # a crashed node is declared DOWN after 10 s without an answer (the script's default: 20 s)
    env = dict(os.environ, XDT_SLURM_DIR=str(tmp_path_factory.mktemp("slurm")), XDT_SLURM_PORT=str(_free_port_pair()),
               XDT_SLURM_NODE_TIMEOUT="10")
    if not shutil.which("sbatch", path=env["PATH"] + ":/usr/sbin") or not shutil.which("slurmctld",
                                                                                       path="/usr/sbin:/usr/bin"):
        done = _cluster("install", env)
        if done.returncode != 0:
            pytest.skip(f"SLURM binaries absent and `slurm/local/cluster.sh install` failed: {done.stderr.strip()}")
    up = _cluster("up", env, "--nodes", str(NODES))
    env["XDT_TEST_NODES"] = str(NODES)
    if up.returncode != 0 and os.geteuid() == 0:
        # no namespaces here, or the nodes in them did not come up (a sandbox that forbids a mount namespace): the
        # one-node cluster runs every other SLURM test, and each multi-node test skips naming this reason
        env[NO_MULTINODE] = up.stderr.strip().rpartition("error: ")[2] or f"exit code {up.returncode}"
        env["XDT_TEST_NODES"] = "1"
        _cluster("down", env)
        up = _cluster("up", env)
    if up.returncode != 0:
        _cluster("down", env)
        if os.geteuid() != 0:
            pytest.skip(f"the local SLURM cluster runs its daemons as root: {up.stderr.strip()}")
        raise RuntimeError(f"slurm/local/cluster.sh up failed:\n{up.stderr}")
    conf = up.stdout.strip().rpartition("export SLURM_CONF=")[2]
    assert Path(conf).is_file(), up.stdout
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield env
    finally:
        down = _cluster("down", env)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        assert down.returncode == 0, down.stderr
