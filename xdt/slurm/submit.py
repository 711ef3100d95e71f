"""`sbatch --parsable`, with errors that say what to do, and a record of each submission (OUTPUT/slurm/jobs.jsonl)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from xdt.errors import XdtError

LOCAL_CLUSTER = "slurm/local/cluster.sh up"


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise XdtError(f"{name}: not found on PATH; run on a SLURM login node (on one machine, `{LOCAL_CLUSTER}` "
                       "starts a local cluster and prints the SLURM_CONF to export)")
    return path


def client_error(command: str, stderr: str, returncode: int) -> XdtError:
    """One line for a failed SLURM client command, with what to do when it found no cluster."""
    if "configuration source" in stderr or "Unable to contact slurm controller" in stderr:
        return XdtError(f"{command}: no SLURM cluster answers (no slurm.conf found, or slurmctld down); on a login "
                        f"node check SLURM_CONF, on one machine run `{LOCAL_CLUSTER}` and export what it prints")
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return XdtError(f"{command}: {'; '.join(lines) or f'exit code {returncode}'}")


def write_script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "logs").mkdir(exist_ok=True)  # SLURM does not create the folder of --output
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def sbatch(script: Path, options: list[str] | None = None) -> str:
    """Submit `script`; the job id (for an array: the array's job id)."""
    cmd = [find_tool("sbatch"), "--parsable", *(options or []), str(script)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise XdtError(f"sbatch {script}: no answer from slurmctld in 120 s") from None
    if done.returncode != 0:
        raise client_error(f"sbatch {script}", done.stderr or done.stdout, done.returncode)
    job_id = done.stdout.strip().split(";")[0]  # --parsable: jobid[;cluster]
    if not job_id.isdigit():
        raise XdtError(f"sbatch {script}: unexpected answer {done.stdout.strip()!r} (expected a job id)")
    return job_id


def record(folder: Path, **entry) -> None:
    """Append one submission to folder/jobs.jsonl (what `xdt slurm status` and people read back)."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **{k: str(v) if isinstance(v, Path) else v
                                                                    for k, v in entry.items()}}
    with open(folder / "jobs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
