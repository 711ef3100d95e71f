"""The training job (`xdt run`, `xdt teacher train`, `xdt distill`, `xdt teacher cache`) as an sbatch script.

One SLURM task per node; on each node torchrun (c10d rendezvous on the first node of the allocation) starts
`procs_per_node` ranks: one per GPU, or `cpus_per_task` single-threaded gloo ranks on CPU-only clusters. With
`--ntasks-per-node N > 1`, srun starts the N ranks itself and xdt reads SLURM_PROCID (xdt/engine/distributed.py).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from xdt.config import OutputConfig, RunConfig, load_config
from xdt.errors import ConfigError, XdtError
from xdt.outputs import CACHE_MANIFEST, DISTILL_DONE, RUN_DONE, TEACHER_DONE
from xdt.slurm.render import Resources, join_lines, render, safe_path

# xdt subcommand per `--command`
COMMANDS: dict[str, list[str]] = {
    "run": ["run"],
    "teacher": ["teacher", "train"],
    "distill": ["distill"],
    "cache": ["teacher", "cache"],
}
DESCRIPTIONS = {"run": "teacher, distillation, export and eval (xdt run)", "teacher": "teacher fine-tuning",
                "distill": "distillation", "cache": "teacher-output caching"}

# A requeued job must continue, not start over: the job passes this override to xdt.
RESUME_KEY, RESUME_VALUE = "output.resume", "auto"

# The rendezvous port when --port is not given: 10000-29999 by job id, below Linux's ephemeral range (32768-60999 by
# default), so that no outgoing connection on the first node holds it already.
DEFAULT_PORT = "$((10000 + SLURM_JOB_ID % 20000))"

# CPU jobs: DeepSpeed JIT-compiles its shared-memory comm op on first use, under a lock in TORCH_EXTENSIONS_DIR.
# The default, ~/.cache/torch_extensions, is shared by every job of the user: jobs wait on each other's ~30 s builds,
# and one killed while building leaves a lock the next ones wait on forever. Each job (and restart) builds into a
# folder of its own on the node's local disk, removed at the end; `--env TORCH_EXTENSIONS_DIR=...` chooses another.
JOB_EXTENSIONS = ['XDT_JOB_EXTENSIONS="${TMPDIR:-/tmp}/xdt-torch-extensions-$SLURM_JOB_ID.${SLURM_RESTART_COUNT:-0}"',
                  'export TORCH_EXTENSIONS_DIR="$XDT_JOB_EXTENSIONS"']


def done_marker(cfg: RunConfig, command: str, output_dir: Path) -> Path:
    """The file a command writes after everything else: the step marker of `xdt slurm pipeline`, and in the job
    script, once this job has written it, the run is finished whatever the step's exit status (a signal that reaches
    a rank after its last step makes torchrun exit 1)."""
    if command == "cache":
        if not cfg.distill.teacher_cache:
            raise ConfigError("distill.teacher_cache: `--command cache` writes the teacher's outputs there; set it")
        return Path(safe_path(cfg.distill.teacher_cache, "distill.teacher_cache")) / CACHE_MANIFEST
    return output_dir / {"run": RUN_DONE, "teacher": TEACHER_DONE, "distill": DISTILL_DONE}[command]


def resume_supported() -> bool:
    """Whether this xdt's run config has the resume key (OutputConfig.resume)."""
    return RESUME_KEY.split(".")[1] in {f.name for f in dataclasses.fields(OutputConfig)}


@dataclass
class TrainJob:
    script: Path  # where the rendered script is written: OUTPUT/slurm/<job name>.sbatch
    text: str
    job_name: str
    output_dir: Path
    argv: list[str]  # the xdt arguments every rank runs


def load_job_config(config: str, overrides: list[str], command: str) -> RunConfig:
    if command not in COMMANDS:
        raise XdtError(f"--command {command!r}: expected one of {', '.join(COMMANDS)}")
    cfg = load_config(config, overrides)
    if command == "distill" and not cfg.teacher.model:
        raise ConfigError("teacher.model: `--command distill` needs a fine-tuned teacher folder "
                          "(from `xdt teacher train`), or submit `--command run` to do both")
    return cfg


def build_train_job(config: str, overrides: list[str], res: Resources, command: str = "run",
                    resume: bool = True, module: str = "xdt", cfg: RunConfig | None = None) -> TrainJob:
    """Check the config and the resources, and render slurm/train.sbatch for them. `module`: what every rank runs
    with `python -m` (xdt; the tests run a probe with the same arguments). `cfg`: the config already checked by the
    caller (`xdt slurm pipeline`: overrides may name folders that earlier jobs of the pipeline will write)."""
    res.check()
    if cfg is None:
        cfg = load_job_config(config, overrides, command)
    output_dir = Path(safe_path(cfg.output.dir, "output.dir"))
    config_path = safe_path(config, "CONFIG")
    workdir = safe_path(Path.cwd(), "the current directory (the job's --chdir)")
    python = res.python or sys.executable
    job_name = res.job_name or f"xdt-{command}-{output_dir.name}"
    log_dir = output_dir / "slurm" / "logs"
    script = output_dir / "slurm" / f"{job_name}.sbatch"

    argv = [*COMMANDS[command], config_path, *overrides]
    resume_on = resume and resume_supported()
    if resume_on and not any(o.partition("=")[0].strip() == RESUME_KEY for o in overrides):
        argv.append(f"{RESUME_KEY}={RESUME_VALUE}")
    words = ['"$PYTHON"']
    if res.ntasks_per_node == 1:
        launcher = "torchrun, c10d rendezvous"
        words += ["-m torch.distributed.run", '--nnodes "$SLURM_NNODES"', f"--nproc_per_node {res.nproc}",
                  "--rdzv_backend c10d", '--rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"', '--rdzv_id "$SLURM_JOB_ID"',
                  "--max_restarts 0", "--tee 3"]
    else:
        launcher = "srun tasks, rank = SLURM_PROCID"
    words += [f"-m {module}", *(shlex.quote(a) for a in argv)]

    if not resume:
        resume_note = "starts over (submitted with --no-resume)"
    elif resume_on:
        resume_note = f"continues from the newest complete checkpoint ({RESUME_KEY}={RESUME_VALUE})"
    else:
        resume_note = f"starts over (this xdt has no {RESUME_KEY} key yet)"
    nproc = res.nproc
    values = {
        **res.common_values(python, cpu_env=JOB_EXTENSIONS),
        "description": DESCRIPTIONS[command],
        "script": script,
        "output_dir": output_dir,
        "done_marker": done_marker(cfg, command, output_dir),
        "job_name": job_name,
        "nodes": res.nodes,
        "ntasks_per_node": res.ntasks_per_node,
        "procs_per_node": nproc,
        "launcher": launcher,
        "backend": f"nccl on {res.gpus_per_node} GPU(s) per node" if res.gpus_per_node else "gloo on CPU",
        "signal_seconds": res.signal_seconds,
        "resume_note": resume_note,
        "log_dir": log_dir,
        "workdir": workdir,
        "master_port": res.port or DEFAULT_PORT,
        "omp_threads": res.cpus_per_task if res.ntasks_per_node > 1 else max(1, res.cpus_per_task // nproc),
        "launch": join_lines(words, indent="        "),
    }
    return TrainJob(script, render("train.sbatch", values), job_name, output_dir, argv)
