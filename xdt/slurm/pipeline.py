"""`xdt slurm pipeline`: what `xdt run` does, as separate SLURM jobs chained with `--dependency=afterok`.

    step     job                                  writes                         done when this exists
    teacher  xdt teacher train                    OUTPUT/teacher                 OUTPUT/teacher_done.json
    cache    xdt teacher cache (teacher_cache)    distill.teacher_cache          its manifest.json
    distill  xdt distill, teacher.model=teacher   OUTPUT/student_best            OUTPUT/distill_done.json
    eval     xdt eval array + merge               OUTPUT/slurm/eval/report       its report.json

Each marker is written last by its step, so a step that has one is finished and is not submitted again; a step
whose job from an earlier submission is still pending or running (OUTPUT/slurm/pipeline.json) is not submitted
twice, and later steps wait on that job. Resubmitting a half-done pipeline therefore continues it. Every dependency
is submitted with `--kill-on-invalid-dep=yes`: when a step fails, SLURM cancels the steps that wait on it.

The teacher step is left out when teacher.model is a fine-tuned teacher used as it is (teacher.epochs 0), the
cache step when distill.teacher_cache is null. The evaluation scores OUTPUT/student_best, the run's best dev model
(what `xdt run` exports to OUTPUT/student and scores), with the teacher beside it, on data.langs or eval.suite: the
report `xdt run` prints. Its folder lies under OUTPUT/slurm because the teacher job claims OUTPUT as a run folder,
which must hold nothing but slurm/ before it starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from xdt.config import SLURM_STEPS, RunConfig, SlurmStepConfig, load_config
from xdt.errors import ConfigError, XdtError
from xdt.slurm.eval_job import EvalJobs, EvalSpec, build_eval_jobs
from xdt.slurm.render import Resources, safe_path
from xdt.slurm.train_job import TrainJob, build_train_job, done_marker

STEPS = SLURM_STEPS  # in submission order; the training steps are named as train_job's commands
RECORD = "pipeline.json"
STEP_KEYS = tuple(f.name for f in dataclasses.fields(SlurmStepConfig))
INT_KEYS = tuple(f.name for f in dataclasses.fields(SlurmStepConfig) if f.type.startswith("int"))
EVAL_ONE_PROCESS = ("nodes", "ntasks_per_node", "procs_per_node")  # each shard: one process on one node
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


# --------------------------------------------------------------------------------------------- resources


def parse_step_resources(items: list[str]) -> dict[str, dict[str, object]]:
    """`--step-resources teacher:nodes=2,gpus_per_node=4,time=04:00:00` (repeatable) -> {step: {key: value}}."""
    found: dict[str, dict[str, object]] = {}
    for item in items:
        step, colon, rest = item.partition(":")
        if step not in STEPS or not colon or not rest.strip():
            raise XdtError(f"--step-resources {item!r}: expected STEP:KEY=VALUE[,KEY=VALUE...] with STEP one of "
                           f"{', '.join(STEPS)}")
        for pair in rest.split(","):
            key, eq, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in STEP_KEYS:
                raise XdtError(f"--step-resources {item!r}: unknown key {key!r}; expected KEY=VALUE with KEY one of "
                               f"{', '.join(STEP_KEYS)}")
            if key in INT_KEYS:
                try:
                    found.setdefault(step, {})[key] = int(value)
                except ValueError:
                    raise XdtError(f"--step-resources {item!r}: {key}: expected an integer, got {value!r}") from None
            else:
                found.setdefault(step, {})[key] = value.strip()
    return found


def step_resources(step: str, cfg: RunConfig, common: dict, per_step: dict[str, dict], shared: dict) -> Resources:
    """The resources of one step, later layers winning: xdt slurm's defaults, `slurm.partition/account`,
    `slurm.<step>`, the command line's common flags, `--step-resources <step>:...`. The common --nodes,
    --ntasks-per-node and --procs-per-node are for the training steps: an evaluation shard is one process."""
    values: dict[str, object] = {}
    layers = [("config", {"partition": cfg.slurm.partition, "account": cfg.slurm.account}),
              ("config", dataclasses.asdict(getattr(cfg.slurm, step))), ("common", common),
              ("step", per_step.get(step, {}))]
    for source, layer in layers:
        for key, value in layer.items():
            if value is None or (step == "eval" and source == "common" and key in EVAL_ONE_PROCESS):
                continue
            values[key] = value
    res = Resources(**values, **shared)
    if step == "eval":
        res.signal_seconds = 1  # no preemption handling in an evaluation shard: its --time alone applies
        res.port = None
    return res


def _going(state: str) -> bool:
    """A job state of a job still pending or running (not finished, not forgotten by slurmctld)."""
    return state not in FINAL_STATES and state != "UNKNOWN"


def report_path(out: Path) -> Path:
    """The report the pipeline's evaluation writes last (its marker)."""
    return out / "slurm" / "eval" / "report" / "report.json"


# --------------------------------------------------------------------------------------------- the plan


@dataclass
class Step:
    name: str
    what: str  # the xdt command it runs, for the plan
    after: list[str]  # steps of this pipeline it waits on
    marker: Path | None  # exists: the step finished
    res: Resources
    overrides: list[str] = field(default_factory=list)
    state: str = "submit"  # submit | done | active (a job of an earlier submission) | given (teacher as it is)
    jobs: dict[str, str] = field(default_factory=dict)  # role (job, or array and merge) -> job id
    job_states: dict[str, str] = field(default_factory=dict)
    waits_on: list[str] = field(default_factory=list)  # job ids in its --dependency
    train: TrainJob | None = None
    evals: EvalJobs | None = None

    def main_job(self) -> str | None:
        """The job id later steps wait on."""
        return self.jobs.get("job") or self.jobs.get("merge")


@dataclass
class Pipeline:
    config: str
    overrides: list[str]
    output_dir: Path
    steps: dict[str, Step]
    submission: int | None = None  # its entry in the record's submissions, once written

    @property
    def slurm_dir(self) -> Path:
        return self.output_dir / "slurm"

    @property
    def report(self) -> Path:
        return report_path(self.output_dir)

    def to_submit(self) -> list[Step]:
        return [s for s in self.steps.values() if s.state == "submit"]


def eval_data_dir(cfg: RunConfig) -> Path:
    """The data folder the run evaluates on: generated now when it is mock data (as every job of the pipeline would
    find it under $XDT_CACHE), without training the mock tokenizer, which the jobs do."""
    from xdt.data.mock import materialize_mock

    data_only = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path="(the jobs')"))
    return materialize_mock(data_only)[0]


def plan(config: str, overrides: list[str], common: dict | None = None, per_step: dict[str, dict] | None = None,
         shared: dict | None = None, eval_shards: int | None = None, job_prefix: str | None = None,
         job_states=None) -> Pipeline:
    """Check the config and every step's resources, decide what each step does (submit, done, active) and render
    the scripts of the steps to submit. `job_states(ids) -> {id: state}` (None: ask scontrol)."""
    from xdt.data.mock import _configured

    common, per_step, shared = common or {}, per_step or {}, shared or {}
    cfg = load_config(config, overrides)
    if cfg.data.task != "token":
        raise ConfigError("data.task: xdt slurm pipeline evaluates NER runs (token) with xdt eval; submit a "
                          "sequence run as one job with `xdt slurm submit`")
    out = Path(safe_path(cfg.output.dir, "output.dir"))
    config_path = safe_path(config, "CONFIG")
    given = bool(cfg.teacher.model) and cfg.teacher.epochs == 0
    teacher_dir = _configured(cfg.teacher.model).absolute() if given else out / "teacher"
    with_teacher = overrides if given else [*overrides, f"teacher.model={teacher_dir}"]

    def res(step: str) -> Resources:
        named = {"job_name": f"{job_prefix}-{step}"} if job_prefix else {}
        return step_resources(step, cfg, common, per_step, {**shared, **named})

    steps = {"teacher": Step("teacher", "xdt teacher train", [], done_marker(cfg, "teacher", out), res("teacher"),
                             list(overrides), state="given" if given else "submit")}
    if cfg.distill.teacher_cache:
        steps["cache"] = Step("cache", "xdt teacher cache", ["teacher"], done_marker(cfg, "cache", out), res("cache"),
                              with_teacher)
    steps["distill"] = Step("distill", "xdt distill", [s for s in ("teacher", "cache") if s in steps],
                            done_marker(cfg, "distill", out), res("distill"), with_teacher)
    eval_job = f"{job_prefix}-eval" if job_prefix else f"xdt-eval-{out.name}"
    steps["eval"] = Step("eval", "xdt eval (array) + xdt eval merge", ["distill"],
                         report_path(out), dataclasses.replace(res("eval"), job_name=eval_job))
    pipe = Pipeline(config_path, list(overrides), out, steps)

    earlier = read_record(out).get("steps", {})
    for step in steps.values():
        if step.state == "given":
            continue
        jobs = dict(earlier.get(step.name, {}).get("jobs", {}))
        if step.marker.exists():
            step.state, step.jobs = "done", jobs
        elif jobs:
            states = (job_states or scontrol_states)(list(jobs.values()))
            if any(_going(s) for s in states.values()):
                step.state, step.jobs, step.job_states = "active", jobs, states

    data_dir = eval_data_dir(cfg)
    for step in pipe.to_submit():
        if step.name == "eval":
            langs = None if cfg.eval.suite else (",".join(cfg.data.langs) if cfg.data.langs else None)
            spec = EvalSpec(model=str(out / "student_best"), teacher=str(teacher_dir), data=[str(data_dir)],
                            out=str(out / "slurm" / "eval"), shards=eval_shards or cfg.slurm.eval_shards,
                            suite=cfg.eval.suite, langs=langs, split=cfg.eval.split, format=cfg.data.format,
                            batch_size=cfg.eval.batch_size, max_seq_length=cfg.data.max_seq_length,
                            allow_missing=cfg.eval.suite is not None)
            pending = (spec.model,) + (() if given else (spec.teacher,))
            step.evals = build_eval_jobs(spec, step.res, pending=pending, stale_ok=True)
        else:
            step.train = build_train_job(config_path, step.overrides, step.res, step.name, cfg=cfg)
    return pipe


def scontrol_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} from scontrol; an array's id gets the state of a task still going, else of its first task;
    UNKNOWN when slurmctld has forgotten the job."""
    from xdt.slurm.status import scontrol_jobs

    states = {}
    for job_id in job_ids:
        tasks = scontrol_jobs(job_id)
        going = [t.get("JobState", "UNKNOWN") for t in tasks if t.get("JobState") not in FINAL_STATES]
        states[job_id] = going[0] if going else tasks[0].get("JobState", "UNKNOWN") if tasks else "UNKNOWN"
    return states


# --------------------------------------------------------------------------------------------- submission


def read_record(out: Path) -> dict:
    path = out / "slurm" / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise XdtError(f"{path}: not a pipeline record written by xdt ({err}); move it away to start the record "
                       "anew") from None
    if not isinstance(record, dict) or not isinstance(record.get("steps", {}), dict):
        raise XdtError(f"{path}: not a pipeline record written by xdt; move it away to start the record anew")
    return record


def write_record(pipe: Pipeline, submitted: list[str]) -> None:
    path = pipe.slurm_dir / RECORD
    record = read_record(pipe.output_dir)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    steps = record.get("steps", {})
    for step in pipe.steps.values():
        entry = steps.get(step.name, {}) if step.state in ("done", "active") else {}
        entry.update({"state": "submitted" if step.name in submitted else step.state, "command": step.what,
                      "after": step.after, "marker": str(step.marker) if step.state != "given" else None})
        if step.name in submitted:
            entry.update({"jobs": step.jobs, "waits_on": step.waits_on, "submitted": now,
                          "scripts": [str(p) for p in _scripts(step)]})
        steps[step.name] = entry
    record.update({"config": pipe.config, "overrides": pipe.overrides, "output_dir": str(pipe.output_dir),
                   "report": str(pipe.report), "steps": steps})
    entry = {"submitted": now, "jobs": {s: pipe.steps[s].jobs for s in submitted}}
    submissions = record.setdefault("submissions", [])
    if pipe.submission is None:  # this submission's first step: a new entry; its later steps update it
        pipe.submission = len(submissions)
        submissions.append(entry)
    else:
        submissions[pipe.submission] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _rendered(step: Step) -> list[tuple[Path, str]]:
    """(script, text) of each script of a step to submit, in submission order."""
    if step.train:
        return [(step.train.script, step.train.text)]
    if step.evals:
        return [(step.evals.array_script, step.evals.array_text), (step.evals.merge_script, step.evals.merge_text)]
    return []


def _scripts(step: Step) -> list[Path]:
    return [script for script, _ in _rendered(step)]


def _dependencies(pipe: Pipeline, step: Step) -> list[str]:
    """Job ids of the steps it waits on that are not finished: submitted now, or still going from earlier."""
    return [pipe.steps[name].main_job() for name in step.after
            if pipe.steps[name].state in ("submit", "active") and pipe.steps[name].main_job()]


def dependency_options(job_ids: list[str]) -> list[str]:
    return [f"--dependency=afterok:{':'.join(job_ids)}", "--kill-on-invalid-dep=yes"] if job_ids else []


def write_scripts(pipe: Pipeline) -> None:
    from xdt.slurm.submit import write_script

    for step in pipe.to_submit():
        for script, text in _rendered(step):
            write_script(script, text)


def submit(pipe: Pipeline) -> list[str]:
    """sbatch every step to submit, in order, each after the jobs it waits on; the record is written after each
    step, so a failure part way leaves what was submitted on record (a resubmission continues from there)."""
    from xdt.slurm.submit import record, sbatch

    submitted: list[str] = []
    write_scripts(pipe)
    for step in pipe.to_submit():
        step.waits_on = _dependencies(pipe, step)
        options = dependency_options(step.waits_on)
        try:
            if step.train:
                step.jobs = {"job": sbatch(step.train.script, options)}
            else:
                for sub in ("shards", "report"):  # an evaluation of this pipeline that did not finish
                    shutil.rmtree(step.evals.out / sub, ignore_errors=True)
                array = sbatch(step.evals.array_script, options)
                step.jobs = {"array": array, "merge": sbatch(step.evals.merge_script, step.evals.merge_options(array))}
        except XdtError as err:
            if step.jobs:  # the array went in, its merge did not
                submitted.append(step.name)
            if submitted:
                write_record(pipe, submitted)
                raise XdtError(f"{err} (submitted before it: {', '.join(submitted)}, recorded in "
                               f"{pipe.slurm_dir / RECORD}; resubmit to continue)") from None
            raise
        submitted.append(step.name)
        for role, job_id in step.jobs.items():
            record(pipe.slurm_dir, job_id=job_id, kind=f"pipeline-{step.name}" + ("" if role == "job" else f"-{role}"),
                   script=_scripts(step)[0 if role != "merge" else 1], after=step.waits_on if role != "merge"
                   else [step.jobs["array"]])
        write_record(pipe, submitted)
    return submitted


# --------------------------------------------------------------------------------------------- what to print


def plan_lines(pipe: Pipeline, dry_run: bool = False) -> list[str]:
    """One line per step: `STEP STATE details`, STATE one of submit (dry run), submitted, active, done, given."""
    lines = []
    for step in pipe.steps.values():
        if step.state == "submit":
            if dry_run:
                after = [name for name in step.after if pipe.steps[name].state in ("submit", "active")]
                active = [f"{n} (job {pipe.steps[n].main_job()})" if pipe.steps[n].state == "active" else n
                          for n in after]
                detail = f"{step.what}; waits on: {', '.join(active) or 'nothing'}"
                lines.append(f"{step.name:<8} submit     {detail}")
            else:
                jobs = ", ".join(f"{role} {i}" for role, i in step.jobs.items())
                lines.append(f"{step.name:<8} submitted  {jobs}; after: {':'.join(step.waits_on) or 'nothing'}")
        elif step.state == "active":
            states = ", ".join(f"{role} {i} {step.job_states.get(i, '?')}" for role, i in step.jobs.items())
            lines.append(f"{step.name:<8} active     {states} (submitted earlier; not submitted again)")
        elif step.state == "done":
            lines.append(f"{step.name:<8} done       {step.marker}")
        else:
            lines.append(f"{step.name:<8} given      teacher.model, used as it is (teacher.epochs 0)")
    return lines


def dry_run_text(pipe: Pipeline) -> str:
    parts = []
    for step in pipe.to_submit():
        for script, text in _rendered(step):
            parts.append(f"# ---- step {step.name}: {script}\n{text}")
    parts.append("# ---- dependency graph (afterok, --kill-on-invalid-dep=yes; the merge waits on its array)\n"
                 + "\n".join(plan_lines(pipe, dry_run=True)) + "\n")
    return "".join(parts)


def print_submission(pipe: Pipeline, dry_run: bool) -> None:
    if dry_run:
        print(dry_run_text(pipe), end="")
        print(f"# scripts written under {pipe.slurm_dir}; nothing submitted", file=sys.stderr)
        return
    print("\n".join(plan_lines(pipe)))
    print(f"record {pipe.slurm_dir / RECORD}; report when done: {pipe.report}; follow with: "
          f"xdt slurm status --pipeline {pipe.output_dir}", file=sys.stderr)


# --------------------------------------------------------------------------------------------- status


def pipeline_status(output_dir: str | Path) -> dict:
    """Each recorded step: done (its marker), its jobs and their states, its newest checkpoint; the report."""
    from xdt.slurm.status import newest_checkpoint

    out = Path(output_dir).absolute()
    record = read_record(out)
    if not record:
        raise XdtError(f"--pipeline {out}: no slurm/{RECORD} there (submit with `xdt slurm pipeline`)")
    steps, scheduler = {}, None
    for name, entry in record["steps"].items():
        jobs = entry.get("jobs") or {}
        states = {}
        if jobs and scheduler is None:
            try:
                states = scontrol_states(list(jobs.values()))
            except XdtError as err:  # no SLURM here (a copied output folder) or slurmctld down: markers still tell
                scheduler = f"job states unknown: {err}"
        marker = entry.get("marker")
        done = bool(marker and Path(marker).exists())
        going = [s for s in states.values() if _going(s)]
        state = ("given" if entry.get("state") == "given" else "done" if done else going[0].lower() if going else
                 "not done" + (f" ({', '.join(sorted(set(states.values())))})" if states else
                               " (job states unknown)" if scheduler and jobs else ""))
        steps[name] = {"state": state, "jobs": {role: {"id": i, "state": states.get(i)} for role, i in jobs.items()},
                       "marker": marker,
                       "checkpoint": newest_checkpoint(out, name) if name in ("teacher", "distill") else None}
    report_file = Path(record.get("report") or report_path(out))
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else None
    return {"output_dir": str(out), "config": record.get("config"), "steps": steps, "report_path": str(report_file),
            "report": report, "scheduler": scheduler}


def format_pipeline_status(status: dict) -> str:
    from xdt.eval.report import summary_lines

    lines = [f"pipeline {status['output_dir']} ({status['config']})"]
    if status.get("scheduler"):
        lines.append(status["scheduler"])
    for name, step in status["steps"].items():
        jobs = ", ".join(f"{role} {j['id']} {j['state'] or '?'}" for role, j in step["jobs"].items())
        lines.append(f"{name:<8} {step['state']}: {jobs or 'no job'}")
        ckpt = step["checkpoint"]
        if ckpt:
            lines.append(f"{'':<8} checkpoint {ckpt['path']} (tag {ckpt['tag']}, written {ckpt['modified']})")
    if status["report"]:
        lines.append(f"report: {status['report_path']}")
        lines += summary_lines(status["report"])
    else:
        lines.append(f"report: not yet ({status['report_path']})")
    return "\n".join(lines)
