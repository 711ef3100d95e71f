"""xdt.engine.preemption with real signals (os.kill to this process) and two real gloo ranks where only one rank
gets the signal. The requeue through a real `scontrol requeue` is in tests/slurm/test_jobs.py (needs the cluster)."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xdt.engine.preemption import EXIT_REQUEUE, Preemption

ROOT = Path(__file__).resolve().parents[2]


def test_sigusr1_sets_the_flag_and_the_process_lives():
    before = signal.getsignal(signal.SIGUSR1)
    with Preemption() as stop:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == [signal.SIGUSR1]
        assert stop.should_stop(2) and stop.reason == "signal" and stop.stop_step == 2
        assert stop.should_stop(3) and stop.stop_step == 2  # stays stopped, at the step it first agreed on
    assert signal.getsignal(signal.SIGUSR1) is before


def test_sigterm_too_and_several_signals_are_all_recorded():
    with Preemption() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == [signal.SIGTERM, signal.SIGUSR1]
        assert stop.should_stop(1)


def test_every_k_steps_checks_only_on_multiples():
    with Preemption(every=3) as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert not stop.should_stop(1) and not stop.should_stop(2)
        assert stop.should_stop(3) and stop.stop_step == 3
    with pytest.raises(ValueError, match="every"):
        Preemption(every=0)


def test_stop_file_stops_without_requeue(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    with Preemption(stop_file=tmp_path / "STOP") as stop:
        assert not stop.should_stop(1)
        (tmp_path / "STOP").touch()
        assert stop.should_stop(2) and stop.reason == "stop file"
        assert stop.requeue() is False  # a manual stop is not a preemption


def test_requeue_only_inside_slurm_after_a_signal(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with Preemption() as stop:
        assert stop.requeue() is False  # no stop agreed (e.g. a finished run)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.should_stop(1)
        assert stop.requeue() is False  # not a SLURM job
        monkeypatch.setenv("SLURM_JOB_ID", "123")
        monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
        assert stop.requeue() is False


EARLY = """
import os, runpy, signal, sys
import xdt.cli
from xdt.engine.preemption import Preemption
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # as the SLURM task wrapper starts every process (`trap "" USR1`)

def main():  # stands for the command: the signal comes while it loads, before its loop installs the handlers
    os.kill(os.getpid(), signal.SIGUSR1)
    stop = Preemption().install()
    print(stop.received, stop.should_stop(1))
    return 0

xdt.cli.main = main
sys.argv = ["xdt", *sys.argv[1:]]
runpy.run_module("xdt", run_name="__main__")
"""


@pytest.mark.parametrize("command, expected", [("run", f"[{int(signal.SIGUSR1)}] True"),
                                               ("eval", "[] False")])  # not a training command: left alone
def test_python_m_xdt_records_a_usr1_that_comes_before_the_loop(command, expected):
    done = subprocess.run([sys.executable, "-c", EARLY, command], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_signal_file_written_by_the_batch_shell_stops_the_run(tmp_path, monkeypatch):
    marker = tmp_path / "job.signal"
    monkeypatch.setenv("XDT_SIGNAL_FILE", str(marker))
    with Preemption() as stop:
        assert not stop.should_stop(1)
        marker.write_text("USR1\n")  # the ranks themselves never got it (it came before they were started)
        assert stop.should_stop(2) and stop.reason == "signal" and stop.received == []


def _fake_scontrol(folder: Path, requeue_rc: int, requeue_err: str, show: str) -> None:
    folder.mkdir(exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f"""#!/bin/bash
echo "$*" >> {folder}/calls
case "$1" in
  requeue) echo {shlex.quote(requeue_err)} >&2; exit {requeue_rc} ;;
  show) echo {shlex.quote(show)} ;;
esac
""")
    script.chmod(0o755)


def test_a_job_requeued_from_outside_is_not_a_failed_requeue(tmp_path, monkeypatch, caplog):
    """`scontrol requeue JOB` by someone else sends the TERM that stops the run; rank 0's own requeue is then
    refused (what Slurm 22.05 answers, measured) although the job restarts: no error, and requeue() says True."""
    bin_dir = tmp_path / "bin"
    _fake_scontrol(bin_dir, 1, "Job is pending execution for job 123",
                   "JobId=123 JobName=x JobState=COMPLETING Reason=None Requeue=1 Restarts=1 BatchFlag=1")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with Preemption() as stop, caplog.at_level(logging.WARNING, logger="xdt.engine.preemption"):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop(1)
        assert stop.requeue() is True
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "already requeued from outside" in caplog.text
    # a refusal for another reason (submitted with --no-requeue: the job still runs as started) stays an error
    caplog.clear()
    _fake_scontrol(bin_dir, 1, "Requested operation is presently disabled for job 123",
                   "JobId=123 JobName=x JobState=RUNNING Reason=None Requeue=0 Restarts=0 BatchFlag=1")
    with Preemption() as stop, caplog.at_level(logging.WARNING, logger="xdt.engine.preemption"):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.should_stop(1)
        assert stop.requeue() is False
    assert "scontrol requeue 123 failed" in caplog.text


def test_a_requeue_killed_by_a_signal_still_under_delivery_is_run_again(tmp_path, monkeypatch):
    """srun forwards USR1 to every process of the step; an scontrol started while that delivery is under way dies
    of it (seen on the loaded test cluster: returncode -10) and the job was not requeued: requeue() runs it again."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f"""#!/bin/bash
echo "$*" >> {bin_dir}/calls
if [[ ! -e {bin_dir}/killed ]]; then touch {bin_dir}/killed; kill -USR1 $$; fi
exit 0
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    with Preemption() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.should_stop(1)
        assert stop.requeue() is True
    assert (bin_dir / "calls").read_text().splitlines() == ["requeue 123", "requeue 123"]


def test_exit_code_convention():
    assert EXIT_REQUEUE == 75  # EX_TEMPFAIL: saved, not finished; documented in the module and the README


# --------------------------------------------------------------------------------------------- two gloo ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, every: int, signal_at: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    stop = Preemption(every=every).install()
    stopped_at = None
    for step in range(1, 41):
        x = torch.ones(1)
        dist.all_reduce(x)  # the training step's own collectives go on as usual
        if rank == 1 and step == signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        if stop.should_stop(step):
            stopped_at = step
            break
    Path(out, f"rank{rank}").write_text(f"{stopped_at} {stop.reason} {','.join(map(str, stop.received))}")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("every, signal_at, expected", [(1, 5, 5), (4, 5, 8)])
def test_two_gloo_ranks_agree_when_only_one_got_the_signal(tmp_path, every, signal_at, expected):
    mp.spawn(_rank, args=(2, _free_port(), every, signal_at, str(tmp_path)), nprocs=2, join=True)
    r0 = (tmp_path / "rank0").read_text().split(" ")
    r1 = (tmp_path / "rank1").read_text().split(" ")
    assert r0 == [str(expected), "signal", ""]  # never signalled itself, stopped at the same step
    assert r1 == [str(expected), "signal", str(int(signal.SIGUSR1))]
