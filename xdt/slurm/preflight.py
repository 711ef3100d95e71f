"""What a job asks for, checked against the cluster before anything is submitted (`xdt slurm submit|eval|pipeline`).

sbatch itself refuses some of these, but only for the job in hand: a pipeline whose third job asks for 99 nodes would
leave its first two submitted. And a partition that exists but is smaller than asked may take the job and leave it
pending forever. One `scontrol show partition` and one `scontrol show node` answer every check.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from xdt.errors import XdtError
from xdt.slurm.render import Resources
from xdt.slurm.submit import client_error, find_tool

_GPU_GRES = re.compile(r"^gpu(?::[^:(,]+)?:(\d+)")  # gpu:4, gpu:a100:4, gpu:a100:4(S:0-1)


@dataclass
class Partition:
    name: str
    nodes: list[str]
    default: bool
    max_nodes: int | None  # None: UNLIMITED
    cpus_per_node: int  # the largest node's
    gpus_per_node: int  # the largest node's


def _scontrol(*args: str) -> list[dict[str, str]]:
    cmd = [find_tool("scontrol"), "-o", "show", *args]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise XdtError(f"scontrol show {' '.join(args)}: no answer in 60 s (is slurmctld up?)") from None
    if done.returncode != 0:
        raise client_error(f"scontrol show {' '.join(args)}", done.stderr or done.stdout, done.returncode)
    # `-o`: one record a line, KEY=VALUE words (values with spaces, such as a node's Reason, are not read here)
    return [dict(w.split("=", 1) for w in line.split() if "=" in w)
            for line in done.stdout.splitlines() if line.strip()]


def _gpus(gres: str) -> int:
    return sum(int(m.group(1)) for part in gres.split(",") if (m := _GPU_GRES.match(part)))


def cluster_partitions() -> dict[str, Partition]:
    nodes = {n["NodeName"]: n for n in _scontrol("node") if "NodeName" in n}
    found = {}
    for p in _scontrol("partition"):
        name = p.get("PartitionName")
        if not name:
            continue
        members = [n for n in nodes.values() if name in n.get("Partitions", "").split(",")]
        max_nodes = p.get("MaxNodes", "UNLIMITED")
        found[name] = Partition(
            name=name, nodes=[n["NodeName"] for n in members], default=p.get("Default") == "YES",
            max_nodes=int(max_nodes) if max_nodes.isdigit() else None,
            cpus_per_node=max((int(n.get("CPUTot", 0)) for n in members), default=0),
            gpus_per_node=max((_gpus(n.get("Gres", "")) for n in members), default=0))
    return found


def check_job(res: Resources, partitions: dict[str, Partition], what: str = "") -> None:
    """Refuse `res` when no node of its partition could run it. `what`: prefix of the message (the pipeline's step)."""
    if res.partition is None:
        default = [p for p in partitions.values() if p.default]
        if not default:
            raise XdtError(f"{what}--partition: the cluster has no default partition; name one of "
                           f"{', '.join(sorted(partitions)) or '(none)'}")
        part = default[0]
    elif res.partition not in partitions:
        raise XdtError(f"{what}--partition {res.partition}: no such partition; the cluster has "
                       f"{', '.join(sorted(partitions)) or 'none'}")
    else:
        part = partitions[res.partition]
    if res.nodes > len(part.nodes):
        raise XdtError(f"{what}--nodes {res.nodes}: partition {part.name} has {len(part.nodes)} node(s)")
    if part.max_nodes is not None and res.nodes > part.max_nodes:
        raise XdtError(f"{what}--nodes {res.nodes}: partition {part.name} allows {part.max_nodes} node(s) per job "
                       "(MaxNodes)")
    cpus = res.cpus_per_task * res.ntasks_per_node
    if cpus > part.cpus_per_node:
        raise XdtError(f"{what}--cpus-per-task {res.cpus_per_task}" +
                       (f" x --ntasks-per-node {res.ntasks_per_node}" if res.ntasks_per_node > 1 else "") +
                       f": the nodes of partition {part.name} have at most {part.cpus_per_node} CPUs")
    if res.gpus_per_node > part.gpus_per_node:
        raise XdtError(f"{what}--gpus-per-node {res.gpus_per_node}: the nodes of partition {part.name} have "
                       + (f"at most {part.gpus_per_node} GPU(s)" if part.gpus_per_node else "no GPUs (Gres)"))


def preflight(jobs: list[tuple[str, Resources]], required: bool = True) -> str | None:
    """Check every (message prefix, resources) against the cluster; XdtError at the first problem. With
    `required=False` (a dry run) a cluster that cannot be asked is not an error: returns why it was skipped."""
    try:
        partitions = cluster_partitions()
    except XdtError as err:
        if required:
            raise
        return f"cluster checks skipped ({err})"
    for what, res in jobs:
        check_job(res, partitions, what)
    return None
