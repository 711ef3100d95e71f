"""`xdt eval merge OUT1 OUT2 ... --out DIR`: shard reports -> the report one run over all languages gives.

Per-language entries (with their entity counts) and predictions files are taken as they are; the mean, std and
micro F1 are recomputed from them by `report.finalize`, as a single run computes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from xdt.errors import XdtError
from xdt.eval.report import aggregate, finalize, write_all
from xdt.outputs import check_out, staged_folder

# Keys every shard must agree on (a merge of different models or data would be meaningless).
_SAME = ("requested", "suite", "split", "model", "data", "settings", "reference")
_DERIVED = {"mean_over_scored"}  # recomputed by finalize from the languages a report holds
# A model is the hash of its weight files and its tokenizer's fingerprint, not where it was read from: one path
# may hold two models (retrained in place), one model two paths (relative and absolute).
_WHERE = {"path", "tokenizer"}


def _model_identity(model: dict | None, where: Path) -> dict | None:
    if model is None:
        return None
    if "weights_sha256" not in model:
        raise XdtError(f"{where}: the report names its model by path only (no weights_sha256, an older xdt); "
                       "re-run this shard to merge it")
    return {k: v for k, v in model.items() if k not in _WHERE}


def _identity(report: dict, key: str, where: Path):
    value = report[key]
    if key == "model":
        return _model_identity(value, where)
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in _DERIVED}
    return value


def _teacher_identity(report: dict, where: Path) -> dict | None:
    teacher = report.get("teacher")
    if teacher is None:
        return None
    recomputed = {"languages", "model", *aggregate({})}  # finalize recomputes them over the merged languages
    out = {k: v for k, v in teacher.items() if k not in recomputed}
    if teacher.get("source") == "evaluated":
        out["model"] = _model_identity(teacher.get("model"), where / "report.json (teacher)")
    return out


def _load(given: Path) -> dict:
    """The report of one shard, `given` as its --out folder or as its report.json: an error names what the user
    gave (a file that is not a report is named itself, never a report.json beside it)."""
    path = given if given.is_file() else given / "report.json"
    expected = "expected the --out folder of an `xdt eval --shard` run, or its report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XdtError(f"{path if given.is_dir() else given}: not found; {expected}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise XdtError(f"{path}: not a report (not valid JSON: {err}); {expected}") from None
    if not isinstance(report, dict):
        raise XdtError(f"{path}: not a report (a JSON {type(report).__name__}); {expected}")
    for key in ("languages", "missing", "requested", "timing") + _SAME:
        if key not in report:
            raise XdtError(f"{path}: no `{key}` key; {expected}")
    return report


def _describe_difference(key: str, a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f"{key}.{diff[0]}: {a.get(diff[0])!r} vs {b.get(diff[0])!r}" if diff else key
    return f"{key}: {a!r} vs {b!r}"


def _merge_timing(timings: list[dict]) -> dict:
    out: dict = {}
    for timing in timings:
        for key, value in timing.items():
            if isinstance(value, dict):
                out[key] = _merge_timing([out.get(key, {}), value])
            elif key == "threads":
                out[key] = max(out.get(key, 0), value)
            elif isinstance(value, (int, float)) and key != "inference_words_per_s":
                out[key] = round(out.get(key, 0) + value, 3)
    if out.get("inference_s"):
        out["inference_words_per_s"] = round(out["words"] / out["inference_s"], 1)
    return out


def merge_reports(folders: list[str | Path], out: str | Path, allow_partial: bool = False,
                  overwrite: bool = False) -> dict:
    if not folders:
        raise XdtError("xdt eval merge: expected the output folders of the shard runs")
    given = [Path(f) for f in folders]
    folders = [f.parent if f.is_file() else f for f in given]  # report.json -> its folder
    check_out(out, overwrite, folders)  # `--out <a shard>` would replace the shard being merged
    reports = [_load(f) for f in given]
    first = reports[0]
    for key in _SAME:
        _identity(first, key, folders[0])
    _teacher_identity(first, folders[0])
    for folder, report in zip(folders[1:], reports[1:]):
        windows = [r["settings"].get("max_seq_length") if isinstance(r["settings"], dict) else None
                   for r in (first, report)]
        if windows[0] != windows[1]:  # scores of one model differ with the window: never one report
            raise XdtError(f"{folder}: scored with windows of {windows[1]} sub-words, {folders[0]} with {windows[0]} "
                           "(settings.max_seq_length); only shards of one evaluation, with one window, merge: "
                           "re-run the odd shard with --max-seq-length")
        for key in _SAME:
            mine, theirs = _identity(report, key, folder), _identity(first, key, folders[0])
            if mine != theirs:
                difference = _describe_difference(key, theirs, mine)
                raise XdtError(f"{folder}: differs from {folders[0]} in {difference}; "
                               "only shards of one evaluation can be merged")
        if ("teacher" in report) != ("teacher" in first):
            raise XdtError(f"{folder}: has {'a' if 'teacher' in report else 'no'} teacher column, {folders[0]} "
                           f"{'has' if 'teacher' in first else 'has not'}; only shards of one evaluation merge")
        mine, theirs = _teacher_identity(report, folder), _teacher_identity(first, folders[0])
        if mine != theirs:
            raise XdtError(f"{folder}: differs from {folders[0]} in "
                           f"{_describe_difference('teacher', theirs, mine)}; only shards of one evaluation merge")

    shards = [r.get("shard") for r in reports]
    counts = {s["count"] for s in shards if s}
    if len(counts) > 1 or (counts and None in shards):
        names = ", ".join(f"{s['index']}/{s['count']}" if s else "unsharded" for s in shards)
        raise XdtError(f"shard reports of different splits ({names}); merge the shards of one --shard i/n run")
    if counts:
        count = counts.pop()
        seen: dict[int, Path] = {}
        for folder, s in zip(folders, shards):
            if s["index"] in seen:
                raise XdtError(f"{folder}: shard {s['index']}/{count} also in {seen[s['index']]}")
            seen[s["index"]] = folder
        absent = sorted(set(range(count)) - set(seen))
        if absent and not allow_partial:
            raise XdtError(f"shard(s) {', '.join(f'{i}/{count}' for i in absent)} not given; merge all {count} "
                           "shards (or pass --allow-partial)")

    merged = {k: first[k] for k in first if k not in ("languages", "missing", "timing", "teacher")}
    merged["shard"] = None
    merged["languages"], merged["missing"] = {}, []
    teacher = {k: v for k, v in first["teacher"].items() if k != "languages"} if "teacher" in first else None
    if teacher is not None:
        teacher["languages"] = {}
    copies: list[tuple[Path, str]] = []  # (shard's predictions file, its path under OUT)
    for folder, report in zip(folders, reports):
        for lang, entry in report["languages"].items():
            if lang in merged["languages"]:
                raise XdtError(f"{folder}: language {lang} is in two shard reports")
            merged["languages"][lang] = entry
            for sub in ("predictions", "teacher/predictions"):
                source = folder / sub / f"{lang}.conll"
                if sub == "teacher/predictions" and not (teacher and teacher.get("source") == "evaluated"):
                    continue
                if not source.is_file():
                    raise XdtError(f"{source}: predictions file of {lang} not found; the shard folder is incomplete")
                copies.append((source, f"{sub}/{source.name}"))
        merged["missing"] += report["missing"]
        if teacher is not None:
            teacher["languages"].update(report["teacher"]["languages"])
    if teacher is not None:
        merged["teacher"] = teacher
    finalize(merged)
    merged["timing"] = _merge_timing([r["timing"] for r in reports])
    merged["timing"]["shards"] = len(reports)
    with staged_folder(out, overwrite, folders) as tmp:
        for source, name in copies:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp / name)
        write_all(merged, tmp)
    return merged
