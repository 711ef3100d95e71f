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

Signals that come before `install` are not lost (`record_early_signals`, XDT_SIGNAL_FILE); `touch OUTPUT/STOP` stops
a run by hand without requeueing. Where the signals come from and the exit-code convention: docs/internals.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_REQUEUE = 75  # checkpoint saved, run unfinished (requeued under SLURM): EX_TEMPFAIL
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

# What the ranks agree on, by all_reduce MAX: the largest code wins, so a signal anywhere means "requeue".
NONE, STOP_FILE, SIGNAL = 0, 1, 2
REASONS = {NONE: None, STOP_FILE: "stop file", SIGNAL: "signal"}
SIGNAL_FILE_ENV = "XDT_SIGNAL_FILE"  # set by slurm/train.sbatch: its batch shell writes each signal it forwards there

_early: list[int] = []  # signals recorded by `record_early_signals` before any Preemption was installed


def _record_early(signum: int, frame) -> None:
    _early.append(signum)


def record_early_signals(signals: tuple[signal.Signals, ...] = (signal.SIGUSR1,)) -> None:
    """Record `signals` from now on, for the first `Preemption.install` to pick up. Call it at process start:
    otherwise a USR1 before the training loop is ignored (the SLURM task wrapper ignores it so that torchrun's agent
    lives) or kills the process (the default action). Leaves alone a signal that already has a Python handler."""
    for sig in signals:
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(sig, _record_early)


class Preemption:
    """Flag set by signals or a stop file; `should_stop` makes the ranks agree; `requeue` asks SLURM again."""

    def __init__(self, stop_file: str | Path | None = None, every: int = 1,
                 signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS, signal_file: str | Path | None = None):
        if every < 1:
            raise ValueError(f"every: expected a positive number of steps, got {every}")
        self.stop_file = Path(stop_file) if stop_file else None
        # a file whose existence means "a signal came" (default: $XDT_SIGNAL_FILE, written by the batch shell)
        signal_file = signal_file or os.environ.get(SIGNAL_FILE_ENV)
        self.signal_file = Path(signal_file) if signal_file else None
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
        if _early:  # signals that came before this install, recorded since process start
            self.received.extend(_early)
            _early.clear()
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
        if self.received or (self.signal_file is not None and self.signal_file.exists()):
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
        import torch  # here, not at the top: record_early_signals must be importable within milliseconds

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
        here = f": {', '.join(signal.Signals(s).name for s in self.received)} here" if self.received else \
            f": recorded in {self.signal_file}" if self.signal_file is not None and self.signal_file.exists() else ""
        log.warning("stopping after step %d (%s%s)", step, self.reason, here)
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
        for _ in range(3):
            done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
            # srun forwards a signal to every process of the step, and scontrol (started with the default action
            # for USR1) can be killed by a delivery still under way: run it again (a requeue it already sent is
            # recognised below)
            if done.returncode >= 0:
                break
        if done.returncode != 0 and _requeued_already(scontrol, job):
            # `scontrol requeue` from outside (an admin, a user) sent the TERM that stopped us: SLURM refuses a
            # second requeue ("Job is pending execution"), and the job restarts all the same
            log.warning("SLURM job %s was already requeued from outside; it resumes from the checkpoint just saved",
                        job)
            self._requeued = True
            return True
        if done.returncode != 0:
            log.error("scontrol requeue %s failed (%d): %s (submitted with --no-requeue?)", job, done.returncode,
                      (done.stderr or done.stdout).strip())
            return False
        log.warning("SLURM job %s requeued; it resumes from the checkpoint just saved", job)
        self._requeued = True
        return True


def _requeued_already(scontrol: str, job: str) -> bool:
    """Whether SLURM has requeued `job` since this run started: its restart count went past the one this run was
    started with (SLURM_RESTART_COUNT), or it is back to pending."""
    try:
        done = subprocess.run([scontrol, "show", "job", "-o", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    fields = dict(word.split("=", 1) for word in done.stdout.split() if "=" in word)
    restarts, started_as = fields.get("Restarts", ""), os.environ.get("SLURM_RESTART_COUNT", "0")
    if restarts.isdigit() and started_as.isdigit() and int(restarts) > int(started_as):
        return True
    return fields.get("JobState", "") in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")
