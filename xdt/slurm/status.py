"""`xdt slurm status JOBID`: the job's state (scontrol show job, squeue's reason; sacct when slurmctld has forgotten
the job and accounting exists) and the newest checkpoint in the run's output folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from xdt.errors import XdtError
from xdt.slurm.submit import client_error, find_tool

_FIELD = re.compile(r"(\S+?)=(.*?)(?=\s+\S+?=|$)")
KEEP = ("JobId", "ArrayJobId", "ArrayTaskId", "JobName", "JobState", "Reason", "Restarts", "ExitCode", "RunTime",
        "TimeLimit", "SubmitTime", "StartTime", "EndTime", "NodeList", "NumNodes", "NumTasks", "Command", "WorkDir",
        "StdOut", "Requeue", "Dependency", "BatchHost")
OUTPUT_MARK = "# xdt-output:"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise XdtError(f"{' '.join(cmd)}: no answer in 60 s (is slurmctld up?)") from None


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """`scontrol -o show job` output: one dict per line (one per array task)."""
    jobs = []
    for line in text.splitlines():
        if line.strip():
            fields = dict(_FIELD.findall(line.strip()))
            jobs.append({k: fields[k] for k in KEEP if k in fields})
    return jobs


def scontrol_jobs(job_id: str) -> list[dict[str, str]]:
    done = _run([find_tool("scontrol"), "-o", "show", "job", job_id])
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return []
        raise client_error(f"scontrol show job {job_id}", done.stderr, done.returncode)
    return parse_scontrol(done.stdout)


def sacct_jobs(job_id: str) -> tuple[list[dict[str, str]], str | None]:
    """(rows, None) from sacct, or ([], why it is not available)."""
    exe = shutil.which("sacct")
    if exe is None:
        return [], "sacct is not installed"
    done = _run([exe, "-n", "-P", "-X", "-j", job_id, "-o", "JobID,JobName,State,ExitCode,Elapsed,NodeList"])
    if done.returncode != 0 or "disabled" in done.stderr + done.stdout:
        why = (done.stderr or done.stdout).strip().splitlines()
        return [], f"sacct: {why[0] if why else f'exit code {done.returncode}'}"
    rows = []
    for line in done.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 6:
            rows.append(dict(zip(("JobId", "JobName", "JobState", "ExitCode", "RunTime", "NodeList"), parts)))
    return rows, None


def output_dir_of(jobs: list[dict[str, str]]) -> Path | None:
    """The run folder named in the job's script (`# xdt-output: DIR`, written by xdt slurm)."""
    for job in jobs:
        script = job.get("Command")
        if not script or not Path(script).is_file():
            continue
        for line in Path(script).read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
            if line.startswith(OUTPUT_MARK):
                return Path(line[len(OUTPUT_MARK):].strip())
    return None


def newest_checkpoint(output_dir: Path, part: str | None = None) -> dict | None:
    """The newest DeepSpeed checkpoint under OUTPUT/checkpoints (`part`: under OUTPUT/checkpoints/<part> only, e.g.
    teacher or distill): a `latest` file naming an existing tag folder."""
    root = output_dir / "checkpoints" / (part or "")
    found = []
    for latest in root.rglob("latest") if root.is_dir() else []:
        if not latest.is_file():
            continue
        tag = latest.read_text(encoding="utf-8", errors="replace").strip()
        folder = latest.parent / tag
        if tag and folder.is_dir():
            found.append((latest.stat().st_mtime, tag, folder))
    if not found:
        return None
    mtime, tag, folder = max(found)
    return {"path": str(folder), "tag": tag, "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime))}


def job_status(job_id: str, output_dir: str | Path | None = None) -> dict:
    if not re.fullmatch(r"\d+(_\d+)?", job_id):
        raise XdtError(f"JOBID {job_id!r}: expected a SLURM job id such as 1234 (or 1234_5 for an array task)")
    jobs = scontrol_jobs(job_id)
    source = "scontrol" if jobs else None
    rows, sacct_note = sacct_jobs(job_id)
    if not jobs and rows:
        jobs, source = rows, "sacct"
    out = Path(output_dir) if output_dir else output_dir_of(jobs)
    status = {"job_id": job_id, "source": source, "jobs": jobs, "sacct": sacct_note or "available",
              "output_dir": str(out) if out else None,
              "checkpoint": newest_checkpoint(out) if out else None}
    if not jobs:
        status["note"] = (f"job {job_id} is not known to slurmctld (unknown, or finished longer than MinJobAge ago)"
                          + (f" and accounting is unavailable ({sacct_note})" if sacct_note else ""))
    return status


def format_status(status: dict) -> str:
    lines = []
    for job in status["jobs"]:
        name = job.get("JobId", status["job_id"])
        if job.get("ArrayTaskId"):
            name = f"{job.get('ArrayJobId', name)}_{job['ArrayTaskId']}"
        line = f"job {name} ({job.get('JobName', '?')}): {job.get('JobState', '?')}"
        details = [f"{k.lower()} {job[k]}" for k in ("Reason", "RunTime", "TimeLimit", "Restarts", "ExitCode",
                                                     "NodeList")
                   if job.get(k) not in (None, "", "None", "(null)")]
        lines.append(line + (f"  [{', '.join(details)}]" if details else ""))
    if status.get("note"):
        lines.append(status["note"])
    if status["source"] != "sacct":
        lines.append(f"accounting: {status['sacct']}" if status["sacct"] != "available" else "accounting: sacct")
    if status["output_dir"]:
        ckpt = status["checkpoint"]
        lines.append(f"output: {status['output_dir']}")
        lines.append(f"checkpoint: {ckpt['path']} (tag {ckpt['tag']}, written {ckpt['modified']})" if ckpt else
                     f"checkpoint: none under {Path(status['output_dir']) / 'checkpoints'}")
    else:
        lines.append("output: unknown (not a job script of xdt slurm; pass --output-dir DIR)")
    return "\n".join(lines)
