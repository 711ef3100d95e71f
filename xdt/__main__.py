import sys

# Training commands record a USR1 from the first milliseconds (before torch is even imported), so that a SLURM
# preemption notice that comes while the run loads its data or compiles is acted on at the loop's first step.
if next((a for a in sys.argv[1:] if not a.startswith("-")), None) in ("run", "teacher", "distill"):
    from xdt.engine.preemption import record_early_signals

    record_early_signals()

from xdt.cli import main  # noqa: E402

raise SystemExit(main())
