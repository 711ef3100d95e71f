"""argparse wiring of `xdt slurm submit|status|eval|pipeline`. `xdt/cli.py` calls `add_slurm_parser(sub)`.

Each `func` returns an int exit code: 0 success; bad input (a flag, a config key, sbatch refusing the job) raises
XdtError, which xdt.cli.main prints as one line and turns into exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from xdt.config import LABELED_FORMATS, SLURM_STEPS, SlurmResources, SlurmStepConfig, slurm_flag
from xdt.errors import XdtError


def _resources(args: argparse.Namespace):
    from xdt.slurm.render import Resources

    # a flag not given (or, like the training-only ones, not a flag of this command) keeps the field's default
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(SlurmResources)}
    return Resources(**{name: value for name, value in given.items() if value is not None})


def _submit(args: argparse.Namespace) -> int:
    from xdt.slurm.submit import record, sbatch, write_script
    from xdt.slurm.train_job import RESUME_KEY, build_train_job, resume_supported

    res = _resources(args)
    job = build_train_job(args.config, args.overrides, res, args.job_command, resume=not args.no_resume)
    _preflight([("", res)], args.dry_run)
    write_script(job.script, job.text)
    if not args.no_resume and not resume_supported():
        print(f"xdt: warning: this xdt has no {RESUME_KEY} key: a requeued job starts over", file=sys.stderr)
    if args.dry_run:
        print(job.text, end="")
        print(f"# written to {job.script}; submit with: sbatch --parsable {job.script}", file=sys.stderr)
        return 0
    job_id = sbatch(job.script)
    record(job.script.parent, job_id=job_id, kind=args.job_command, script=job.script, argv=job.argv)
    print(job_id)
    print(f"script {job.script}; logs {job.output_dir / 'slurm' / 'logs'}; follow with: xdt slurm status {job_id}",
          file=sys.stderr)
    return 0


def _preflight(jobs, dry_run: bool) -> None:
    """The cluster checks of xdt/slurm/preflight.py; a dry run without a cluster to ask says so and goes on."""
    from xdt.slurm.preflight import preflight

    skipped = preflight(jobs, required=not dry_run)
    if skipped:
        print(f"xdt: note: {skipped}", file=sys.stderr)


def _pipeline(args: argparse.Namespace) -> int:
    from xdt.slurm import pipeline as pl

    common = {key: getattr(args, key) for key in pl.STEP_KEYS}
    # the rest of the flags go to every job as given; --job-name is the prefix of the steps' own names
    shared = {f.name: getattr(args, f.name) for f in dataclasses.fields(SlurmResources)
              if f.name not in pl.STEP_KEYS and f.name != "job_name" and getattr(args, f.name) is not None}
    states = None
    if args.dry_run:  # a dry run away from the cluster still prints the plan
        def states(ids):
            try:
                return pl.scontrol_states(ids)
            except XdtError:
                return {}
    pipe = pl.plan(args.config, args.overrides, common, pl.parse_step_resources(args.step_resources or []),
                   shared, eval_shards=args.eval_shards, job_prefix=args.job_name, job_states=states)
    _preflight([(f"step {s.name}: ", s.res) for s in pipe.to_submit()], args.dry_run)
    if args.dry_run:
        pl.write_scripts(pipe)
    else:
        pl.submit(pipe)
    pl.print_submission(pipe, args.dry_run)
    return 0


def _status(args: argparse.Namespace) -> int:
    from xdt.slurm.status import format_status, job_status

    if args.pipeline:
        from xdt.slurm.pipeline import format_pipeline_status, pipeline_status

        if args.job_id:
            raise XdtError("xdt slurm status: give JOBID or --pipeline OUTPUT_DIR, not both")
        status = pipeline_status(args.pipeline)
        print(json.dumps(status, indent=2) if args.json else format_pipeline_status(status))
        return 0
    if not args.job_id:
        raise XdtError("xdt slurm status: JOBID or --pipeline OUTPUT_DIR required")
    status = job_status(args.job_id, args.output_dir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from xdt.slurm.eval_job import EvalSpec, build_eval_jobs
    from xdt.slurm.submit import record, sbatch, write_script

    if not args.data:
        raise XdtError("xdt slurm eval: --data PATH required (repeat it for several folders)")
    spec = EvalSpec(model=args.model, data=args.data, out=args.out, shards=args.shards, suite=args.suite,
                    langs=args.langs, split=args.split, format=args.format, teacher=args.teacher,
                    tokenizer=args.tokenizer, batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                    max_sentences=args.max_sentences, allow_missing=args.allow_missing, device=args.device)
    res = _resources(args)
    jobs = build_eval_jobs(spec, res)
    _preflight([("", res)], args.dry_run)
    write_script(jobs.array_script, jobs.array_text)
    write_script(jobs.merge_script, jobs.merge_text)
    if args.dry_run:
        print(f"# ---- {jobs.array_script}\n{jobs.array_text}# ---- {jobs.merge_script}\n{jobs.merge_text}", end="")
        print(f"# submit with: ARRAY_JOB_ID=$(sbatch --parsable {jobs.array_script}) && sbatch "
              f"{' '.join(jobs.merge_options('$ARRAY_JOB_ID'))} {jobs.merge_script}", file=sys.stderr)
        return 0
    array_id = sbatch(jobs.array_script)
    merge_id = sbatch(jobs.merge_script, jobs.merge_options(array_id))
    record(jobs.out / "slurm", job_id=array_id, kind="eval-array", script=jobs.array_script, shards=args.shards)
    record(jobs.out / "slurm", job_id=merge_id, kind="eval-merge", script=jobs.merge_script, after=array_id)
    print(f"array {array_id}")
    print(f"merge {merge_id}")
    print(f"report when done: {jobs.out / 'report' / 'report.json'}", file=sys.stderr)
    return 0


def _add_resource_args(p: argparse.ArgumentParser, training: bool) -> None:
    """One flag per field of xdt.config.SlurmResources (help from its metadata); `training`: with the training-only
    ones."""
    g = p.add_argument_group("SLURM resources")
    for f in dataclasses.fields(SlurmResources):
        if f.metadata["training"] and not training:
            continue
        if f.type.startswith("list"):
            kind = {"action": "append"}
        else:
            kind = {"type": int if f.type.startswith("int") else str, "default": f.default}
        g.add_argument(slurm_flag(f), dest=f.name, metavar=f.metadata["metavar"], help=f.metadata["help"], **kind)
    p.add_argument("--dry-run", action="store_true", help="print the script(s) (still written), submit nothing")


def add_slurm_parser(subparsers) -> None:
    """Register `slurm` (submit, status, eval) on the top-level subparsers of `xdt`."""
    slurm = subparsers.add_parser("slurm", help="submit and follow SLURM jobs (training, sharded evaluation)",
                                  description="Render sbatch scripts from slurm/ templates and submit them.")
    actions = slurm.add_subparsers(dest="slurm_action", metavar="ACTION", required=True)

    submit = actions.add_parser(
        "submit", help="submit a run config as a multi-node, preemption-safe training job",
        description="Render slurm/train.sbatch for CONFIG (written to OUTPUT/slurm/<job name>.sbatch), submit it "
                    "with sbatch --parsable and print the job id. The job requeues itself when preempted and "
                    "resumes from its newest checkpoint.")
    submit.add_argument("config", help="run config YAML")
    submit.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as for `xdt run`")
    submit.add_argument("--command", dest="job_command", choices=["run", "teacher", "distill", "cache"],
                        default="run",
                        help="run: xdt run (default); teacher: xdt teacher train; distill: xdt distill; "
                             "cache: xdt teacher cache")
    submit.add_argument("--no-resume", action="store_true", help="a requeued job starts over instead of resuming")
    _add_resource_args(submit, training=True)
    submit.set_defaults(func=_submit)

    status = actions.add_parser("status", help="a job's state and the newest checkpoint of its run; or each step "
                                               "of a pipeline (--pipeline)")
    status.add_argument("job_id", metavar="JOBID", nargs="?")
    status.add_argument("--pipeline", metavar="OUTPUT_DIR",
                        help="every step of the pipeline submitted for this run folder: state, jobs, checkpoint, "
                             "and the report once it is there")
    status.add_argument("--output-dir", help="run folder (default: the one named in the job's script)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)

    ev = actions.add_parser(
        "eval", help="sharded evaluation: a job array (one share of the languages per task) and a merge job",
        description="Submit `xdt eval --shard i/N` as an array of N tasks and `xdt eval merge` as a job that "
                    "starts after all of them succeeded (--dependency=afterok). Prints both job ids.")
    ev.add_argument("--model", required=True, help="model folder")
    ev.add_argument("--data", action="append", metavar="PATH", help="WikiAnn folder or file (repeatable)")
    ev.add_argument("--suite", help="suite name in eval/ or a suite YAML file")
    ev.add_argument("--langs", help="comma-separated languages (a subset of --suite when both are given)")
    ev.add_argument("--split", help="train, dev or test (default: the suite's, else test)")
    ev.add_argument("--format", choices=LABELED_FORMATS, help="default: detected")
    ev.add_argument("--teacher", help="teacher model folder, evaluated beside the model")
    ev.add_argument("--tokenizer", help="tokenizer folder when the model folder has none")
    ev.add_argument("--batch-size", type=int, help="windows per batch (xdt eval's default)")
    ev.add_argument("--max-seq-length", type=int, help="sub-words per window (xdt eval's default)")
    ev.add_argument("--max-sentences", type=int, help="first N sentences per language (quick checks)")
    ev.add_argument("--allow-missing", action="store_true", help="list languages without data instead of failing")
    ev.add_argument("--device", help="auto, cpu, cuda (xdt eval's default: auto)")
    ev.add_argument("--shards", type=int, required=True, help="array tasks; each takes every N-th language")
    ev.add_argument("--out", required=True, help="the job's folder: merged report in OUT/report, shards in "
                                                 "OUT/shards/<i>, scripts and logs in OUT/slurm")
    _add_resource_args(ev, training=False)
    ev.set_defaults(func=_eval)

    pipe = actions.add_parser(
        "pipeline", help="the whole reproduction as chained jobs: teacher, teacher cache, distillation, evaluation",
        description="Submit `xdt teacher train`, `xdt teacher cache` (when distill.teacher_cache is set), `xdt "
                    "distill` (teacher.model: the fine-tuned teacher) and the evaluation array + merge (the "
                    "student beside the teacher, as `xdt run` reports), each after the one before "
                    "(--dependency=afterok, --kill-on-invalid-dep=yes: a failed step cancels the rest). A step "
                    "already finished, or whose job from an earlier submission is still queued or running, is not "
                    "submitted again: resubmitting continues a half-done pipeline. Record: "
                    "OUTPUT/slurm/pipeline.json; follow with `xdt slurm status --pipeline OUTPUT`. Resources, "
                    "later winning: the defaults, the config's slurm: section (slurm.<step>), the flags below "
                    "(every training step; an evaluation shard is one process on one node), --step-resources.")
    pipe.add_argument("config", help="run config YAML")
    pipe.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as for `xdt run`")
    pipe.add_argument("--step-resources", action="append", metavar="STEP:KEY=VALUE[,KEY=VALUE]",
                      help=f"resources of one step ({', '.join(SLURM_STEPS)}), keys as in slurm.<step>: "
                           f"{', '.join(f.name for f in dataclasses.fields(SlurmStepConfig))}; e.g. "
                           "teacher:nodes=2,gpus_per_node=4,time=04:00:00 (repeatable)")
    pipe.add_argument("--eval-shards", type=int, help="evaluation array tasks (default: slurm.eval_shards, 1)")
    _add_resource_args(pipe, training=True)
    # no defaults here: a flag not given leaves each step to its config keys and then to SlurmResources' defaults
    pipe.set_defaults(func=_pipeline, **{f.name: None for f in dataclasses.fields(SlurmResources)})
