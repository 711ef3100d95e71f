"""Evaluation as a SLURM job array (one share of the languages per task) and a merge job that depends on it."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from xdt.errors import XdtError
from xdt.languages import parse_langs
from xdt.slurm.render import Resources, join_lines, render, safe_path


@dataclass
class EvalSpec:
    """The `xdt eval` arguments every shard runs (all but --shard, --out, --threads)."""

    model: str
    data: list[str]
    out: str
    shards: int
    suite: str | None = None
    langs: str | None = None
    split: str | None = None
    format: str | None = None
    teacher: str | None = None
    tokenizer: str | None = None
    batch_size: int | None = None
    max_seq_length: int | None = None
    max_sentences: int | None = None
    allow_missing: bool = False
    device: str | None = None
    extra: list[str] = field(default_factory=list)

    def languages(self) -> list[str] | None:
        """The requested languages, when known before reading the data (from --langs or --suite)."""
        langs = parse_langs(self.langs)
        if langs is not None:
            return langs
        if self.suite:
            from xdt.eval.suites import load_suite

            return list(load_suite(self.suite).languages)
        return None

    def check(self, pending: tuple[str, ...] = ()) -> None:
        """`pending`: model folders that jobs this one waits on will write (not there yet)."""
        if self.shards < 1:
            raise XdtError(f"--shards: expected a positive integer, got {self.shards}")
        langs = self.languages()
        if langs is not None and self.shards > len(langs):
            raise XdtError(f"--shards {self.shards}: more shards than the {len(langs)} language(s) requested; "
                           f"use --shards {len(langs)} or fewer")
        if self.model not in pending and not Path(self.model).exists():
            raise XdtError(f"--model {self.model}: not found")
        if self.teacher and self.teacher not in pending and not Path(self.teacher).exists():
            raise XdtError(f"--teacher {self.teacher}: not found")
        for path in self.data:
            if not path.startswith("hf:") and not Path(path).exists():
                raise XdtError(f"--data {path}: not found")

    def argv(self) -> list[str]:
        args = ["--model", safe_path(self.model, "--model")]
        for path in self.data:
            args += ["--data", path if path.startswith("hf:") else safe_path(path, "--data")]
        for flag, value in (("--suite", self.suite), ("--langs", self.langs), ("--split", self.split),
                            ("--format", self.format), ("--device", self.device),
                            ("--teacher", self.teacher and safe_path(self.teacher, "--teacher")),
                            ("--tokenizer", self.tokenizer and safe_path(self.tokenizer, "--tokenizer")),
                            ("--batch-size", self.batch_size), ("--max-seq-length", self.max_seq_length),
                            ("--max-sentences", self.max_sentences)):
            if value is not None:
                args += [flag, str(value)]
        if self.allow_missing:
            args.append("--allow-missing")
        return args + list(self.extra)


@dataclass
class EvalJobs:
    out: Path
    array_script: Path
    array_text: str
    merge_script: Path
    merge_text: str
    job_name: str

    @staticmethod
    def merge_options(array_job_id: str) -> list[str]:
        """sbatch options of the merge job: after every array task succeeded, cancelled when one failed. On the
        command line, since the array's id is known only once it is submitted."""
        return [f"--dependency=afterok:{array_job_id}", "--kill-on-invalid-dep=yes"]


def build_eval_jobs(spec: EvalSpec, res: Resources, pending: tuple[str, ...] = (),
                    stale_ok: bool = False) -> EvalJobs:
    """`pending`: as EvalSpec.check. `stale_ok`: the caller clears OUT/shards and OUT/report before submitting
    (`xdt slurm pipeline` redoing an evaluation of its own that did not finish)."""
    res.check()
    if res.nodes != 1 or res.ntasks_per_node != 1:
        raise XdtError("--nodes/--ntasks-per-node: each evaluation shard is one process on one node; "
                       "spread the work with --shards")
    spec.check(pending)
    out = Path(safe_path(spec.out, "--out"))
    for sub in ("shards", "report") if not stale_ok else ():  # the merge writes OUT/report, never over the shards
        if (out / sub).is_dir() and any((out / sub).iterdir()):
            raise XdtError(f"--out {out}: {sub}/ holds an earlier evaluation; choose another --out")
    job_name = res.job_name or f"xdt-eval-{out.name}"
    python = res.python or sys.executable
    log_dir = out / "slurm" / "logs"
    shard_dirs = [str(out / "shards" / str(i)) for i in range(spec.shards)]
    values = {
        **res.common_values(python),
        "description": f"{spec.model} on {', '.join(spec.data)}",
        "job_name": job_name,
        "out": out,
        "shards": spec.shards,
        "last_shard": spec.shards - 1,
        "log_dir": log_dir,
        "workdir": safe_path(Path.cwd(), "the current directory (the job's --chdir)"),
        "eval_args": join_lines([shlex.quote(a) for a in spec.argv()], indent="    "),
        "shard_dirs": join_lines(shard_dirs, indent="    "),
    }
    array = render("eval-array.sbatch", values)
    merge_script = out / "slurm" / f"{job_name}-merge.sbatch"
    merge = render("eval-merge.sbatch", {**values, "job_name": f"{job_name}-merge", "script": merge_script})
    return EvalJobs(out, out / "slurm" / f"{job_name}-array.sbatch", array, merge_script, merge, job_name)
