"""What xdt writes, and how: nothing a user already has is lost, and no half-written result is left behind.

- A command that writes a result folder (`xdt export`, `trim`, `eval`, `eval merge`, `transfer build`) checks its
  `--out` before any work (`check_out`) and writes into a hidden sibling that is renamed into place only when
  everything succeeded (`staged_folder`). A non-empty `--out` is refused unless `--overwrite`, and `--overwrite`
  is refused when the output is, contains or lies inside one of the command's inputs.
- A training run folder (`xdt run`, `teacher train`, `distill`) cannot be staged: it is written in place so that
  `--resume auto` can continue it. `check_run_folder` accepts an empty folder, or one that holds a run of the same
  config (recorded in `xdt_run.json` per part: teacher, distill); anything else needs `--overwrite`, under the same
  rule about inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from xdt.errors import SYMLINK_LOOP, ConfigError, XdtError, is_symlink_loop

RUN_RECORD = "xdt_run.json"
# Completion notes in a run folder, written after everything else of their step (`xdt slurm pipeline` reads them)
TEACHER_DONE, DISTILL_DONE, RUN_DONE = "teacher_done.json", "distill_done.json", "run.json"
CACHE_MANIFEST = "manifest.json"  # a teacher cache's, in distill.teacher_cache
# A run folder may hold these before its run starts: `xdt slurm submit` writes the job script and its logs there.
RUN_FOLDER_EXTRAS = {"slurm"}
# Config keys that may change between attempts of one run: where it is, how it checkpoints, what it evaluates.
VOLATILE_KEYS = ("output.dir", "output.resume", "output.checkpoint_every", "output.keep_last", "output.stop_file",
                 "output.tensorboard", "data.cache_dir", "eval.", "slurm.")


def overlap(out: str | Path, inputs) -> tuple[str, str] | None:
    """(how, input) when `out` is, contains or lies inside one of `inputs` (paths; None, '', 'mock', 'hf:...'
    skipped), else None. Symbolic links and relative paths are resolved."""
    target = Path(out).resolve()
    for given in inputs:
        if not given or str(given) == "mock" or str(given).startswith("hf:"):
            continue
        path = Path(given).resolve()
        if path == target:
            return "is", str(given)
        if path.is_relative_to(target):
            return "contains", str(given)
        if target.is_relative_to(path):
            return "lies inside", str(given)
    return None


def check_out(out: str | Path, overwrite: bool = False, inputs=(), flag: str = "--out") -> Path:
    """Refuse, before any work starts: an `out` that is a file, a non-empty `out` (unless `overwrite`), and with
    `overwrite` an `out` that is, contains or lies inside an input (replacing it would destroy the input)."""
    out = Path(out)
    if is_symlink_loop(out):
        raise XdtError(f"{flag} {out}: {SYMLINK_LOOP}; expected a folder to write")
    if out.exists() and not out.is_dir():
        raise XdtError(f"{flag} {out}: exists and is not a folder; choose another {flag}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise XdtError(f"{out}: exists and is not empty; choose another {flag} or pass --overwrite")
    if overwrite and (hit := overlap(out, inputs)):
        raise XdtError(f"{flag} {out}: {hit[0]} the input {hit[1]}; --overwrite would destroy it, choose another "
                       f"{flag}")
    return out


def _created_parents(out: Path) -> list[Path]:
    """The folders above `out` that do not exist yet, deepest first (removed again when the command fails)."""
    missing = []
    for parent in out.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False, inputs=(), flag: str = "--out"):
    """Yield a hidden temporary sibling of `out` to write into. On success it becomes `out` (an old `out` is
    replaced only with `overwrite`, and removed only after the new one is in place); on any error it is removed
    with the parent folders it needed, and `out` is as it was."""
    out = check_out(out, overwrite, inputs, flag)
    made = _created_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the result gets the usual permissions
        _replace(tmp, out, overwrite, flag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in made:
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def _replace(tmp: Path, out: Path, overwrite: bool, flag: str) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        tmp.rename(out)
        return
    if not overwrite:  # appeared while the command ran
        raise XdtError(f"{out}: was created by something else while this command ran; choose another {flag}")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    out.rename(old / out.name)
    try:
        tmp.rename(out)
    except BaseException:
        (old / out.name).rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def folder_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- run folders


def run_identity(config: dict) -> dict:
    """The dotted keys of a run config (a nested dict) that decide what the run computes."""
    flat: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif not any(prefix == k or (k.endswith(".") and prefix.startswith(k)) for k in VOLATILE_KEYS):
            flat[prefix] = node

    walk(config, "")
    return json.loads(json.dumps(flat, default=str))  # as it reads back from the record (tuples are lists)


def _first_difference(old: dict, new: dict) -> str:
    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {short(old.get(key))} there, {short(new.get(key))} now"
    return "none"


def read_run_record(out: Path) -> dict:
    """{part: identity} of the runs recorded in `out`, {} when none; an older xdt's finished run (run.json with
    its config) counts for both parts."""
    path = out / RUN_RECORD
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise XdtError(f"{path}: not a run record written by xdt ({err}); choose another output.dir or pass "
                           "--overwrite") from None
        if not isinstance(record, dict) or not all(isinstance(v, dict) for v in record.values()):
            raise XdtError(f"{path}: not a run record written by xdt; choose another output.dir or pass --overwrite")
        return record
    legacy = out / "run.json"
    if legacy.is_file():
        try:
            config = json.loads(legacy.read_text(encoding="utf-8")).get("config")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            config = None
        if isinstance(config, dict):
            identity = run_identity(config)
            return {"teacher": identity, "distill": identity}
    return {}


def _is_older_run(out: Path) -> bool:
    """A run folder of an xdt from before run records: checkpoints or the teacher's completion note."""
    return (out / "checkpoints").is_dir() or (out / "teacher_done.json").is_file()


def check_run_folder(out: str | Path, parts: list[str], identity: dict, overwrite: bool = False,
                     inputs: dict[str, str | None] | None = None, extras=()) -> None:
    """Read-only (every rank may call it): may a run of `parts` with config `identity` write into `out`?
    `extras`: names a user may put there before the run (its stop file), ignored like RUN_FOLDER_EXTRAS."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir: {out} exists and is not a folder; expected the run's folder")
    keep = RUN_FOLDER_EXTRAS | set(extras)
    entries = [e for e in out.iterdir() if e.name not in keep] if out.is_dir() else []
    if overwrite:
        for key, path in (inputs or {}).items():
            if hit := overlap(out, [path]):
                raise ConfigError(f"output.dir: {out} {hit[0]} {key} {path}; --overwrite would delete it, choose "
                                  "another output.dir")
        return
    if not entries:
        return
    record = read_run_record(out)
    if not record and not _is_older_run(out):
        raise ConfigError(f"output.dir: {out} is not empty and holds no xdt run (no {RUN_RECORD}); choose another "
                          "output.dir or pass --overwrite to replace its contents")
    for part in parts:
        if part in record and record[part] != identity:
            raise ConfigError(f"output.dir: {out} holds a {part} run of another config "
                              f"({_first_difference(record[part], identity)}); continue it with its own config, "
                              "choose another output.dir, or pass --overwrite to start over")


def claim_run_folder(out: str | Path, parts: list[str], identity: dict, overwrite: bool = False,
                     extras=()) -> None:
    """After `check_run_folder`, on one rank: clear the folder (`overwrite`; `extras` stay) and record this run's
    config."""
    out = Path(out)
    if overwrite and out.is_dir():
        for entry in out.iterdir():
            if entry.name in RUN_FOLDER_EXTRAS or entry.name in extras:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    record = {} if overwrite else read_run_record(out)
    record.update({part: identity for part in parts})
    tmp = out / f".{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out / RUN_RECORD)
