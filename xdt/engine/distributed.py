"""Ranks: one process without a launcher, torchrun, the deepspeed launcher or srun, on one code path.

Without a launcher xdt sets the rendezvous variables itself (a single process otherwise makes DeepSpeed try MPI
discovery and fail on a missing mpi4py). Under `srun` without torchrun, SLURM's variables give rank and size.
"""

from __future__ import annotations

import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_rendezvous_env() -> bool:
    """Set RANK/WORLD_SIZE/... when no launcher did; True when xdt chose the port itself (a lone process)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        env.setdefault("LOCAL_RANK", "0")
        return False
    if "SLURM_PROCID" in env and "MASTER_ADDR" in env:  # srun tasks, one process per task
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_PORT", "29500")
        return False
    env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" in env:
        return False
    env["MASTER_PORT"] = str(_free_port())
    return True


def init_distributed() -> None:
    """The process group (gloo on CPU, nccl on GPUs), once per process."""
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    own_port = ensure_rendezvous_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    for attempt in range(5):
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
            return
        except torch.distributed.DistNetworkError:
            # the free port we picked was taken before the store bound it (another process on this machine)
            if not own_port or attempt == 4:
                raise
            os.environ["MASTER_PORT"] = str(_free_port())


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def shutdown() -> None:
    """barrier + destroy_process_group: without both, 2-rank gloo runs sometimes abort at exit."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        # DeepSpeed keeps its clone of the world group: left pointing at the destroyed one, the next engine made in
        # this process (a second command run in-process, as the tests do) fails "Group ... is not registered"
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None
