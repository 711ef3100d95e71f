"""A stand-in for a training run, launched by the real slurm/train.sbatch in tests/slurm/test_jobs.py (no tests here).

    python -m tests.slurm.probe run CONFIG [overrides...]      (the arguments `xdt run` would get)

Each rank records USR1 from its start (as `python -m xdt run` does), joins the gloo group torchrun set up, installs
xdt's Preemption, and "trains" in 0.2 s steps, writing OUTPUT/probe/ready-<restart>-<rank> first (its pid and the
MASTER_ADDR torchrun gave it). When the ranks agree to stop, each writes stopped-<restart>-<rank>
(step, reason, signals it got itself), rank 0 runs `scontrol requeue`, and they exit 75 as xdt does. A requeued run
(SLURM_RESTART_COUNT > 0) takes 3 steps and writes finished-<rank>.
"""

from __future__ import annotations

if __name__ == "__main__":  # first, as xdt/__main__.py does (not when pytest collects this file)
    from xdt.engine.preemption import record_early_signals

    record_early_signals()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.distributed as dist  # noqa: E402

from xdt.config import load_config  # noqa: E402
from xdt.engine.preemption import EXIT_REQUEUE, Preemption  # noqa: E402


def main(argv: list[str]) -> int:
    cfg = load_config(argv[1], argv[2:])
    out = Path(cfg.output.dir) / "probe"
    out.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo")
    rank, restart = dist.get_rank(), int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    stop = Preemption(Path(cfg.output.dir) / cfg.output.stop_file)
    stop.install()
    (out / f"ready-{restart}-{rank}").write_text(json.dumps({"pid": os.getpid(),
                                                             "master_addr": os.environ.get("MASTER_ADDR")}))
    code = 0
    for step in range(1, 1500):
        time.sleep(0.2)
        if restart > 0 and step >= 3:
            (out / f"finished-{rank}").write_text(str(step))
            break
        if stop.should_stop(step):
            (out / f"stopped-{restart}-{rank}").write_text(
                f"{step} {stop.reason} {','.join(str(s) for s in stop.received)}")
            dist.barrier()  # "every rank saved"
            if rank == 0:
                (out / "requeued").write_text(str(stop.requeue()))
            code = EXIT_REQUEUE
            break
    else:
        code = 3  # no signal came
    dist.barrier()
    dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
