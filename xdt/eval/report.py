"""The report contract: OUT/report.json, per_language.csv, report.md and predictions/<lang>.conll.

report.json (F1, precision, recall in percent):
  {"languages": {lang: {"precision", "recall", "f1", "precision_strict", "recall_strict", "f1_strict",
                        "sentences", "words", "support", "entities": {type: {"precision", "recall", "f1",
                        "support"}}, "counts": {"default"|"strict": {type: {"tp", "pred", "gold"}}},
                        "files", "seconds", ["teacher_f1", "retention"], ["paper": {column: F1}]}},
   "mean_f1", "std_f1", "mean_f1_strict", "micro_f1", "micro_precision", "micro_recall", "micro_f1_strict",
   "missing": [...], "requested": [...], "suite", "split", "shard", "model", "data", "teacher", "reference",
   "settings", "timing", "versions"}
Every aggregate is recomputed from the per-language entries by `finalize`, by a run and by `xdt eval merge` alike.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from xdt.errors import XdtError
from xdt.eval.scoring import MODES, Counts, Scores

STD_DDOF = 0  # population standard deviation over languages
PAPER_COLUMNS = {"xtremedistil_student_f1": "paper student", "mbert_joint_teacher_f1": "paper teacher",
                 "mbert_single_f1": "paper mBERT single", "mmner_f1": "paper MMNER"}


def pct(x: float) -> float:
    return 100.0 * x


def language_entry(scores: Scores, sentences: int, words: int, files: list[str], seconds: float) -> dict:
    p, r, f = scores.total("default").prf()
    ps, rs, fs = scores.total("strict").prf()
    entities = {}
    for name, counts in scores.by_type.get("default", {}).items():
        tp, tr, tf = counts.prf()
        entities[name] = {"precision": pct(tp), "recall": pct(tr), "f1": pct(tf), "support": counts.gold}
    return {
        "precision": pct(p), "recall": pct(r), "f1": pct(f),
        "precision_strict": pct(ps), "recall_strict": pct(rs), "f1_strict": pct(fs),
        "sentences": sentences, "words": words, "support": scores.total("default").gold,
        "entities": entities,
        "counts": {mode: {n: c.to_json() for n, c in scores.by_type.get(mode, {}).items()} for mode in MODES},
        "files": files, "seconds": round(seconds, 3),
    }


def scores_of(entry: dict) -> Scores:
    return Scores({mode: {n: Counts.from_json(c) for n, c in types.items()}
                   for mode, types in entry["counts"].items()})


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / max(len(values) - STD_DDOF, 1)
    return mean, math.sqrt(var)


def aggregate(languages: dict[str, dict]) -> dict:
    """Unweighted mean and std of per-language F1 (the paper's headline) and micro P/R/F1 over all entities."""
    mean, std = _mean_std([e["f1"] for e in languages.values()])
    mean_s, std_s = _mean_std([e["f1_strict"] for e in languages.values()])
    pooled = Scores()
    for entry in languages.values():
        pooled = pooled + scores_of(entry)
    p, r, f = pooled.total("default").prf()
    _, _, fs = pooled.total("strict").prf()
    return {"mean_f1": mean, "std_f1": std, "mean_f1_strict": mean_s, "std_f1_strict": std_s,
            "micro_precision": pct(p), "micro_recall": pct(r), "micro_f1": pct(f), "micro_f1_strict": pct(fs),
            "languages_scored": len(languages), "std_ddof": STD_DDOF}


def finalize(report: dict) -> dict:
    """Order languages as requested, attach teacher F1, retention and paper columns, recompute every aggregate."""
    order = {lang: i for i, lang in enumerate(report["requested"])}
    report["languages"] = dict(sorted(report["languages"].items(), key=lambda kv: order.get(kv[0], len(order))))
    report["missing"] = sorted(set(report["missing"]), key=lambda lang: order.get(lang, len(order)))
    report.update(aggregate(report["languages"]))
    teacher = report.get("teacher")
    if teacher is not None:
        teacher["languages"] = {k: teacher["languages"][k] for k in report["languages"] if k in teacher["languages"]}
        teacher.update(aggregate(teacher["languages"]))
        ratios = []
        for lang, entry in report["languages"].items():
            t = teacher["languages"].get(lang)
            entry["teacher_f1"] = t["f1"] if t else None
            entry["retention"] = pct(entry["f1"] / t["f1"]) if t and t["f1"] > 0 else None
            if entry["retention"] is not None:
                ratios.append(entry["retention"])
        report["mean_retention"] = math.fsum(ratios) / len(ratios) if ratios else None
        report["retention_of_mean"] = (pct(report["mean_f1"] / teacher["mean_f1"])
                                       if teacher.get("mean_f1") else None)
    reference = report.get("reference")
    if reference is not None:
        means = {}
        for col, values in reference["columns"].items():
            for lang, entry in report["languages"].items():
                if lang in values:
                    entry.setdefault("paper", {})[col] = values[lang]
            scored = [values[lang] for lang in report["languages"] if lang in values]
            means[col] = math.fsum(scored) / len(scored) if scored else None
        reference["mean_over_scored"] = means
    return report


# --------------------------------------------------------------------------------------------- predictions


def write_predictions(path: Path, words: Iterable[Sequence[str]], gold: Iterable[Sequence[str]],
                      pred: Iterable[Sequence[str]]) -> None:
    """`word<TAB>gold<TAB>pred` per line, a blank line between sentences, every word in data order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ws, gs, ps in zip(words, gold, pred):
            for w, g, p in zip(ws, gs, ps):
                f.write(f"{w}\t{g}\t{p}\n")
            f.write("\n")


def read_predictions(path: Path) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    words: list[list[str]] = []
    gold: list[list[str]] = []
    pred: list[list[str]] = []
    cur: tuple[list[str], list[str], list[str]] = ([], [], [])
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                if cur[0]:
                    words.append(cur[0]); gold.append(cur[1]); pred.append(cur[2])
                    cur = ([], [], [])
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise XdtError(f"{path}:{lineno}: expected word<TAB>gold<TAB>pred, got {len(fields)} field(s)")
            for part, value in zip(cur, fields):
                part.append(value)
    if cur[0]:
        words.append(cur[0]); gold.append(cur[1]); pred.append(cur[2])
    return words, gold, pred


# --------------------------------------------------------------------------------------------- files


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_json(report: dict, out: Path) -> Path:
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def csv_rows(report: dict) -> list[dict]:
    types = sorted({t for e in report["languages"].values() for t in e["entities"]})
    rows = []
    for lang, e in report["languages"].items():
        row = {"lang": lang, "f1": e["f1"], "precision": e["precision"], "recall": e["recall"],
               "f1_strict": e["f1_strict"], "precision_strict": e["precision_strict"],
               "recall_strict": e["recall_strict"], "sentences": e["sentences"], "words": e["words"],
               "support": e["support"]}
        row.update({f"f1_{t}": e["entities"].get(t, {}).get("f1") for t in types})
        if "teacher" in report:
            row.update({"teacher_f1": e.get("teacher_f1"), "retention": e.get("retention")})
        for col in (report.get("reference") or {}).get("columns", {}):
            row[f"paper_{col}"] = e.get("paper", {}).get(col)
        rows.append(row)
    return rows


def write_csv(report: dict, out: Path) -> Path:
    path = out / "per_language.csv"
    rows = csv_rows(report)
    with path.open("w", encoding="utf-8", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else "" if v is None else v)
                                 for k, v in row.items()})
        else:
            f.write("lang,f1\n")
    return path


def markdown(report: dict) -> str:
    teacher = report.get("teacher")
    ref_cols = [c for c in PAPER_COLUMNS if c in (report.get("reference") or {}).get("columns", {})]
    head = ["lang", "F1", "F1 strict", "P", "R"]
    if teacher:
        head += ["teacher F1", "retention %"]
    head += [PAPER_COLUMNS[c] for c in ref_cols] + ["sentences", "words", "entities"]
    lines = [f"# Per-language F1: {report['model']['path']}", "",
             f"Suite `{report['suite']['name']}`, split `{report['split']}`, "
             f"data {', '.join(report['data']['paths'])}. "
             "F1 in percent, seqeval default (conlleval) mode; strict = IOB2 strict mode.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def row(label: str, e: dict, bold: bool = False) -> str:
        cells = [label, _fmt(e.get("f1")), _fmt(e.get("f1_strict")), _fmt(e.get("precision")),
                 _fmt(e.get("recall"))]
        if teacher:
            cells += [_fmt(e.get("teacher_f1")), _fmt(e.get("retention"), 1)]
        cells += [_fmt(e.get("paper", {}).get(c), 1 if bold else 0) for c in ref_cols]
        cells += [_fmt(e.get("sentences")), _fmt(e.get("words")), _fmt(e.get("support"))]
        return "| " + " | ".join(f"**{c}**" if bold and c != "-" else c for c in cells) + " |"

    for lang, e in report["languages"].items():
        lines.append(row(lang, e))
    paper_means = (report.get("reference") or {}).get("mean_over_scored", {})
    mean_row = {"f1": report["mean_f1"], "f1_strict": report["mean_f1_strict"],
                "teacher_f1": teacher.get("mean_f1") if teacher else None,
                "retention": report.get("retention_of_mean"), "paper": paper_means,
                "sentences": sum(e["sentences"] for e in report["languages"].values()),
                "words": sum(e["words"] for e in report["languages"].values()),
                "support": sum(e["support"] for e in report["languages"].values())}
    lines.append(row("mean", mean_row, bold=True))
    lines.append(row("std", {"f1": report["std_f1"], "f1_strict": report["std_f1_strict"],
                             "teacher_f1": teacher.get("std_f1") if teacher else None}))
    lines.append(row("micro", {"f1": report["micro_f1"], "f1_strict": report["micro_f1_strict"],
                               "precision": report["micro_precision"], "recall": report["micro_recall"],
                               "teacher_f1": teacher.get("micro_f1") if teacher else None}))
    lines.append("")
    lines.append(f"Mean over {len(report['languages'])} language(s) (unweighted; std with ddof={report['std_ddof']}); "
                 "micro = all entities of all languages pooled.")
    if report["missing"]:
        lines.append(f"**Missing** (no {report['split']} files): {', '.join(report['missing'])}.")
    if report.get("reference"):
        lines.append(f"Paper columns: {report['reference']['source_name']} (mean over the languages scored here).")
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, out: Path) -> Path:
    path = out / "report.md"
    path.write_text(markdown(report), encoding="utf-8")
    return path


def summary_lines(report: dict) -> list[str]:
    lines = [f"{lang:>4}  F1 {e['f1']:6.2f}  strict {e['f1_strict']:6.2f}  words {e['words']:>8}"
             + (f"  teacher {_fmt(e.get('teacher_f1'))}  retention {_fmt(e.get('retention'), 1)}"
                if "teacher" in report else "")
             for lang, e in report["languages"].items()]
    mean = _fmt(report["mean_f1"])
    lines.append(f"mean F1 {mean} (std {_fmt(report['std_f1'])}) over {len(report['languages'])} language(s); "
                 f"micro F1 {_fmt(report['micro_f1'])}; strict mean {_fmt(report['mean_f1_strict'])}"
                 + (f"; teacher mean {_fmt(report['teacher'].get('mean_f1'))}" if report.get("teacher") else "")
                 + f"; missing: {', '.join(report['missing']) or 'none'}")
    return lines


def write_all(report: dict, out: Path) -> None:
    from xdt.eval.plots import plot_f1

    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out)
    write_csv(report, out)
    write_markdown(report, out)
    plot_f1(report, out / "f1_per_language.png")
