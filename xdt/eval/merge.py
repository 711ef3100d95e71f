"""`xdt eval merge OUT1 OUT2 ... --out DIR`: shard reports -> the report one run over all languages gives.

Per-language entries (with their entity counts) and predictions files are taken as they are; the mean, std and
micro F1 are recomputed from them by `report.finalize`, as a single run computes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from xdt.errors import XdtError
from xdt.eval.report import finalize, write_all

# Keys every shard must agree on (a merge of different models or data would be meaningless).
_SAME = ("requested", "suite", "split", "model", "data", "settings", "reference")
_DERIVED = {"mean_over_scored"}  # recomputed by finalize from the languages a report holds


def _identity(report: dict, key: str):
    value = report[key]
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in _DERIVED}
    return value


def _load(folder: Path) -> dict:
    path = folder / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XdtError(f"{path}: not found; expected the --out folder of an `xdt eval --shard` run") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise XdtError(f"{path}: not valid JSON: {err}") from None
    for key in ("languages", "missing", "requested", "timing") + _SAME:
        if key not in report:
            raise XdtError(f"{path}: no `{key}` key; expected a report.json written by `xdt eval`")
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


def merge_reports(folders: list[str | Path], out: str | Path, allow_partial: bool = False) -> dict:
    if not folders:
        raise XdtError("xdt eval merge: expected the output folders of the shard runs")
    folders = [Path(f).parent if Path(f).is_file() else Path(f) for f in folders]  # report.json -> its folder
    reports = [_load(f) for f in folders]
    first = reports[0]
    for folder, report in zip(folders[1:], reports[1:]):
        for key in _SAME:
            if _identity(report, key) != _identity(first, key):
                difference = _describe_difference(key, _identity(first, key), _identity(report, key))
                raise XdtError(f"{folder}: differs from {folders[0]} in {difference}; "
                               "only shards of one evaluation can be merged")
        if ("teacher" in report) != ("teacher" in first):
            raise XdtError(f"{folder}: has {'a' if 'teacher' in report else 'no'} teacher column, {folders[0]} "
                           f"{'has' if 'teacher' in first else 'has not'}; only shards of one evaluation merge")

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
    out = Path(out)
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
                (out / sub).mkdir(parents=True, exist_ok=True)
                if source.resolve() != (out / sub / source.name).resolve():
                    shutil.copyfile(source, out / sub / source.name)
        merged["missing"] += report["missing"]
        if teacher is not None:
            teacher["languages"].update(report["teacher"]["languages"])
    if teacher is not None:
        merged["teacher"] = teacher
    finalize(merged)
    merged["timing"] = _merge_timing([r["timing"] for r in reports])
    merged["timing"]["shards"] = len(reports)
    write_all(merged, out)
    return merged
