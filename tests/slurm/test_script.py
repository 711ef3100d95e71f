"""The rendered training script (slurm/train.sbatch) run by bash as a batch shell, with stand-ins for srun, scontrol
and the compute node's Python: what its steps see (signals, CPUs, addresses, ports, DeepSpeed's build folder). No
cluster needed; tests/slurm/test_jobs.py runs the same script on a real one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from xdt.slurm.render import PLACEHOLDER, Resources
from xdt.slurm.train_job import DEFAULT_PORT, build_train_job

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def train(tmp_path: Path, **res) -> str:
    job = build_train_job(QUICKSTART, [f"output.dir={tmp_path / 'run'}"], Resources(**res))
    assert not PLACEHOLDER.search(job.text)
    return job.text


FAKE_SRUN = """#!/bin/bash
echo "$*" > "$FAKE_OUT/srun.args"
while [[ "$1" == --* ]]; do shift; done  # srun's own options; then the task command, run here as the one task
exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
[[ "$1 $2" == "show hostnames" ]] && echo node1
"""
# stands for the Python of the compute node: reports what the task sees, builds "a DeepSpeed op", exits 75
FAKE_PYTHON = """#!/bin/bash
{ echo "args=$*"; echo "local_addr=$PET_LOCAL_ADDR"; echo "extensions=$TORCH_EXTENSIONS_DIR"
  echo "port=$MASTER_PORT"; echo "signal=$(cat "$XDT_SIGNAL_FILE" 2>/dev/null | tr '\\n' ' ')"
  echo "ignored=$(awk '/^SigIgn/ {print $2}' /proc/self/status)"; } > "$FAKE_OUT/task.$SLURM_RESTART_COUNT"
mkdir -p "$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm"
exit 75
"""


def _fake_job(tmp_path: Path, text: str, restart: int) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a rendered train script with bash as the batch shell of job 123456 on node1, with stand-ins for srun,
    scontrol and the compute node's Python; what the task saw."""
    bin_dir = tmp_path / "bin"
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_OUT=str(tmp_path), TMPDIR=str(tmp_path),
               SLURM_JOB_ID="123456", SLURM_JOB_NAME="job", SLURM_JOB_NODELIST="node1", SLURM_NNODES="1",
               SLURM_RESTART_COUNT=str(restart))
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    seen = dict(line.split("=", 1) for line in (tmp_path / f"task.{restart}").read_text().splitlines())
    return done, seen


def test_the_batch_shell_records_an_early_signal_and_the_step_gets_cpus_local_addr_port_and_own_extensions(
        tmp_path):
    """The rendered script run by bash (srun and python stand-ins): a USR1 during the set-up lines, before srun has
    started anything, is written to XDT_SIGNAL_FILE for the ranks, and a restart starts without it; srun repeats
    --cpus-per-task; torchrun gets this node's name as --local-addr (PET_LOCAL_ADDR), evaluated on the node; the
    rendezvous port is below the ephemeral range; a CPU job builds DeepSpeed ops in a folder of its own, removed at
    the end."""
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    text = train(tmp_path, cpus_per_task=2, python=str(python),
                 setup=['[[ "$SLURM_RESTART_COUNT" == 0 ]] && kill -USR1 $$  # the notice comes during set-up'])
    done, seen = _fake_job(tmp_path, text, restart=0)
    assert done.returncode == 75, done.stdout + done.stderr
    assert "got SIGUSR1" in done.stdout
    assert seen["signal"].split() == ["USR1"]
    assert "--cpus-per-task=2" in (tmp_path / "srun.args").read_text().split()
    assert seen["local_addr"] == socket.gethostname() and seen["local_addr"] not in ("localhost", "")
    assert "-m torch.distributed.run" in seen["args"]
    assert int(seen["ignored"], 16) & (1 << (signal.SIGUSR1 - 1))  # USR1 ignored in the task (torchrun's agent)
    assert seen["port"] == str(10000 + 123456 % 20000)
    assert seen["extensions"] == f"{tmp_path}/xdt-torch-extensions-123456.0"
    assert not Path(seen["extensions"]).exists()  # removed when the job ends
    done, seen = _fake_job(tmp_path, text, restart=1)
    assert done.returncode == 75 and seen["signal"] == ""  # the restart does not see the old signal
    assert seen["extensions"] == f"{tmp_path}/xdt-torch-extensions-123456.1"


def test_default_rendezvous_port_stays_below_the_ephemeral_range():
    low = 32768  # Linux's default ip_local_port_range starts here; this machine's may start elsewhere
    ports = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ports.exists():
        low = min(low, int(ports.read_text().split()[0]))
    for job_id in (1, 12345, 19999, 39999, 2**31 - 1):
        done = subprocess.run(["bash", "-c", f"echo {DEFAULT_PORT}"], capture_output=True, text=True,
                              env={"SLURM_JOB_ID": str(job_id), "PATH": os.environ["PATH"]})
        assert 1024 <= int(done.stdout) < low, (job_id, done.stdout)


def test_cpu_jobs_default_to_their_own_extensions_folder_gpu_jobs_and_env_choose(tmp_path):
    cpu = train(tmp_path)
    assert cpu.index('export TORCH_EXTENSIONS_DIR="$XDT_JOB_EXTENSIONS"') > cpu.index("export DS_ACCELERATOR=cpu")
    chosen = train(tmp_path, env=["TORCH_EXTENSIONS_DIR=/shared/ext"])  # --env comes after, so it wins
    assert chosen.index("export TORCH_EXTENSIONS_DIR=/shared/ext") > \
        chosen.index('export TORCH_EXTENSIONS_DIR="$XDT_JOB_EXTENSIONS"')
    assert "TORCH_EXTENSIONS_DIR" not in train(tmp_path, gpus_per_node=1)


# stands for a run that wrote its done marker and was then hit by a signal (torchrun exits 1)
FAKE_FINISHED_PYTHON = """#!/bin/bash
mkdir -p "$FAKE_OUT/run" && echo '{}' > "$FAKE_OUT/run/run.json"
exit 1
"""


def test_a_step_that_fails_after_this_job_wrote_the_done_marker_counts_as_finished(tmp_path):
    """A signal that reaches a rank after the run wrote its done marker (run.json for `xdt run`) makes torchrun exit
    1: the job ends COMPLETED, saying why. A marker an earlier job left does not count: the failure stands."""
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python"
    python.write_text(FAKE_FINISHED_PYTHON)
    python.chmod(0o755)
    text = train(tmp_path, python=str(python))
    assert f"DONE_MARKER={tmp_path / 'run' / 'run.json'}" in text
    (tmp_path / "task.0").write_text("")  # _fake_job reads what the task saw; this task records nothing
    done, _ = _fake_job(tmp_path, text, restart=0)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the step exited with 1 after this job wrote" in done.stdout and "finished" in done.stdout

    python.write_text("#!/bin/bash\nexit 1\n")  # fails without writing; the marker is the earlier job's
    os.utime(tmp_path / "run" / "run.json", (1, 1))
    done, _ = _fake_job(tmp_path, text, restart=0)
    assert done.returncode == 1 and "the step exited with 1 (under torchrun" in done.stdout


def test_the_cache_job_names_its_cache_folder(tmp_path):
    import pytest

    from xdt.errors import ConfigError

    with pytest.raises(ConfigError, match="distill.teacher_cache"):
        build_train_job(QUICKSTART, [f"output.dir={tmp_path / 'run'}"], Resources(), command="cache")
    job = build_train_job(QUICKSTART, [f"output.dir={tmp_path / 'run'}", f"distill.teacher_cache={tmp_path / 'c'}"],
                          Resources(), command="cache")
    assert f"DONE_MARKER={tmp_path / 'c' / 'manifest.json'}" in job.text
