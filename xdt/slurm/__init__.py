"""SLURM: sbatch scripts rendered from the templates in slurm/, submission, status (`xdt slurm ...`).

    render.py     templates -> text; resources (nodes, GPUs, CPUs, time, signal) checked with errors naming the flag
    train_job.py  `xdt run|teacher train|distill|teacher cache` as a multi-node torchrun job that survives preemption
    eval_job.py   `xdt eval --shard i/N` as a job array, plus the `xdt eval merge` job that depends on it
    submit.py     sbatch --parsable, the record of submissions (OUTPUT/slurm/jobs.jsonl)
    status.py     scontrol / squeue / sacct and the newest checkpoint of the run
    cli.py        argparse wiring
The training side of preemption (signal flag, rank agreement, requeue) is xdt/engine/preemption.py.
"""
