"""sbatch scripts from the templates in slurm/: `{{name}}` placeholders filled with checked values.

Placeholders are double braces so that the templates keep ordinary bash (`${VAR}`, `$(...)`) untouched. A line that
is a placeholder alone and renders empty (an optional `#SBATCH` directive) is dropped, so the `#SBATCH` block stays
contiguous. Paths that go into `#SBATCH` lines cannot be quoted there: they are checked for characters that sbatch or
bash would split or expand, and refused with an error naming the option or config key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path

from xdt.assets import asset_path
from xdt.config import SlurmResources, slurm_flag, time_seconds
from xdt.errors import XdtError

PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_UNSAFE = re.compile(r"""[\s'"`$\\;&|<>()*?\[\]{}!#%~]""")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def render(template: str, values: dict[str, object]) -> str:
    """slurm/<template> with every `{{name}}` replaced by `values[name]`."""
    text = asset_path("slurm", template).read_text(encoding="utf-8")
    missing = sorted(set(PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise XdtError(f"slurm/{template}: no value for placeholder(s) {', '.join(missing)}")
    lines = []
    for line in text.splitlines():
        alone = PLACEHOLDER.fullmatch(line.strip())
        if alone and str(values[alone.group(1)]) == "":
            continue
        lines.append(PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), line))
    return "\n".join(lines) + "\n"


def safe_path(path: str | Path, what: str) -> str:
    """An absolute path that can stand unquoted in `#SBATCH` lines and bash; `what` names the flag or key."""
    text = os.path.abspath(path)  # absolute and normalized (no `..`): the job may run from another folder
    bad = _UNSAFE.search(text)
    if bad:
        raise XdtError(f"{what}: {text!r} contains {bad.group()!r}; SLURM scripts need paths without spaces, "
                       "quotes, %, $ or shell wildcards (#SBATCH lines cannot quote them)")
    return text


class Resources(SlurmResources):
    """What a job asks SLURM for (the fields: xdt.config.SlurmResources), checked and turned into script values."""

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value, least = getattr(self, f.name), f.metadata["minimum"]
            if least is not None and value is not None and value < least:
                expected = "a positive integer" if least == 1 else f"{least} or more"
                raise XdtError(f"{slurm_flag(f)}: expected {expected}, got {value}")
        if self.procs_per_node is not None and self.ntasks_per_node > 1:
            raise XdtError("--procs-per-node: only with --ntasks-per-node 1 (torchrun starts the processes); "
                           "with srun tasks each task is one process")
        if self.signal_seconds > 65535:
            raise XdtError(f"--signal-seconds: SLURM accepts at most 65535, got {self.signal_seconds}")
        if self.time is not None:
            limit = time_seconds(self.time)
            if limit is not None and limit <= self.signal_seconds:
                raise XdtError(f"--signal-seconds {self.signal_seconds}: not shorter than --time {self.time} "
                               f"({limit} s); the job would be told to save before it starts")
        if self.port is not None and not 1024 <= self.port <= 65535:
            raise XdtError(f"--port: expected 1024..65535, got {self.port}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if (f.metadata["sbatch"] or f.name == "job_name") and value is not None and (
                    not value or _UNSAFE.search(value)):
                raise XdtError(f"{slurm_flag(f)}: {value!r} is empty or contains spaces or shell characters")
        for item in self.env:
            name, eq, _ = item.partition("=")
            if not eq or not _ENV_NAME.match(name):
                raise XdtError(f"--env {item!r}: expected NAME=VALUE with NAME a shell variable name")
        for opt in self.sbatch_options:
            if not opt.startswith("--") or "\n" in opt:
                raise XdtError(f"--sbatch-option {opt!r}: expected one long sbatch option such as --qos=high")

    @property
    def nproc(self) -> int:
        """Processes per node."""
        if self.ntasks_per_node > 1:
            return self.ntasks_per_node
        if self.procs_per_node is not None:
            return self.procs_per_node
        return self.gpus_per_node or self.cpus_per_task

    def common_values(self, python: str, cpu_env: list[str] | tuple[str, ...] = ()) -> dict[str, object]:
        """Placeholders every template shares. `cpu_env`: shell lines for CPU-only jobs, before the --env ones."""
        optional = [f"#SBATCH {slurm_flag(f)}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                    if f.metadata["sbatch"] and getattr(self, f.name)]
        optional += [f"#SBATCH {opt}" for opt in self.sbatch_options]
        env = [] if self.gpus_per_node else ["export DS_ACCELERATOR=cpu", *cpu_env]
        for item in self.env:
            name, _, value = item.partition("=")
            env.append(f"export {name}={shlex.quote(value)}")
        return {
            "python": shlex.quote(python),
            "cpus_per_task": self.cpus_per_task,
            "gpu_directive": f"#SBATCH --gpus-per-node={self.gpus_per_node}" if self.gpus_per_node else "",
            "time": self.time or "",
            "optional_directives": "\n".join(line for line in optional if line),
            "env_lines": "\n".join(env),
            "setup_lines": "\n".join(self.setup),
        }


def join_lines(words: list[str], indent: str = "    ", width: int = 100) -> str:
    """Shell words joined with ` \\` line continuations, at most about `width` characters a line."""
    lines, line = [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent + word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return " \\\n".join(lines)
