"""Preemption: a signal sets a flag, the ranks agree at the next step, save, requeue and exit with code 75.

    stop = Preemption(stop_file=out / "STOP", every=1)
    stop.install()                          # SIGUSR1 / SIGTERM handlers that only set a flag
    for step in ...:
        ...engine.step()...
        if stop.should_stop(step):           # collective: every rank calls it at the same steps
            engine.save_checkpoint(...)      # every rank
            if is_main():
                stop.requeue()               # `scontrol requeue $SLURM_JOB_ID` inside a SLURM job
            shutdown()
            sys.exit(EXIT_REQUEUE)           # 75: checkpoint saved, run not finished

Signals: SLURM sends SIGUSR1 to the batch shell `--signal=B:USR1@S` seconds before the time limit, the
rendered script (slurm/train.sbatch) forwards it to every process of the training step; SIGTERM comes with
`scancel`, preemption by a higher-priority job, or the time limit itself (then only KillWait seconds remain).
A handler only sets a flag: saving from inside a signal handler would run in the middle of a collective.

The stop file (default OUTPUT/STOP) is the manual kill-switch: `touch OUTPUT/STOP` and the run saves and exits
75 at its next check, without requeueing. Delete the file before resuming, or the resumed run stops again.

Exit code convention: EXIT_REQUEUE (75, EX_TEMPFAIL of sysexits.h, "try again later") = a checkpoint was saved
and the run is not finished; under SLURM the job has been requeued (after a signal) and `output.resume=auto`
continues it. torchrun reports any non-zero worker exit as its own exit code 1, so under torchrun the requeue
itself (`scontrol show job`: Restarts=N) is the signal of success, not the code.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EXIT_REQUEUE = 75  # checkpoint saved, run unfinished (requeued under SLURM): EX_TEMPFAIL
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

# What the ranks agree on, by all_reduce MAX: the largest code wins, so a signal anywhere means "requeue".
NONE, STOP_FILE, SIGNAL = 0, 1, 2
REASONS = {NONE: None, STOP_FILE: "stop file", SIGNAL: "signal"}


class Preemption:
    """Flag set by signals or a stop file; `should_stop` makes the ranks agree; `requeue` asks SLURM again."""

    def __init__(self, stop_file: str | Path | None = None, every: int = 1,
                 signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS):
        if every < 1:
            raise ValueError(f"every: expected a positive number of steps, got {every}")
        self.stop_file = Path(stop_file) if stop_file else None
        self.every = every
        self.signals = tuple(signals)
        self.received: list[int] = []  # signal numbers this process got, in order
        self.reason: str | None = None  # agreed: None, "stop file" or "signal"
        self.stop_step: int | None = None
        self._previous: dict[int, object] = {}
        self._requeued = False

    # ---- signals
    def _handle(self, signum: int, frame) -> None:  # only records: nothing else is safe here
        self.received.append(signum)

    def install(self) -> "Preemption":
        """Register the handlers (main thread only). Idempotent."""
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
        if self.stop_file is not None and self.stop_file.exists():
            log.warning("%s exists: the run will save and stop at its first check; delete it to train on",
                        self.stop_file)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "Preemption":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    @property
    def local_code(self) -> int:
        if self.received:
            return SIGNAL
        if self.stop_file is not None and self.stop_file.exists():
            return STOP_FILE
        return NONE

    # ---- agreement
    def should_stop(self, step: int) -> bool:
        """Whether every rank stops after `step`. A collective when torch.distributed is initialized: call it on
        every rank at every step (it only communicates when `step % every == 0`). Once true, stays true."""
        if self.reason is not None:
            return True
        if step % self.every:
            return False
        code = self.local_code
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            device = torch.device("cpu")
            if torch.distributed.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            flag = torch.tensor([code], dtype=torch.int32, device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            code = int(flag.item())
        if code == NONE:
            return False
        self.reason, self.stop_step = REASONS[code], step
        log.warning("stopping after step %d (%s%s)", step, self.reason,
                    f": {', '.join(signal.Signals(s).name for s in self.received)} here" if self.received else "")
        return True

    # ---- SLURM
    def requeue(self) -> bool:
        """`scontrol requeue $SLURM_JOB_ID` when inside a SLURM job and the ranks stopped for a signal (not for the
        stop file, not for a finished run). Call it from one rank (rank 0) after every rank saved. True when the job
        was requeued (now or by an earlier call)."""
        if self._requeued:
            return True
        job = os.environ.get("SLURM_JOB_ID")
        if self.reason != "signal" or not job:
            return False
        scontrol = shutil.which("scontrol")
        if scontrol is None:
            log.error("SLURM job %s: scontrol not on PATH, cannot requeue", job)
            return False
        done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log.error("scontrol requeue %s failed (%d): %s (submitted with --no-requeue?)", job, done.returncode,
                      (done.stderr or done.stdout).strip())
            return False
        log.warning("SLURM job %s requeued; it resumes from the checkpoint just saved", job)
        self._requeued = True
        return True
