"""f1_per_language.png: student vs teacher vs the paper, per language (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_f1(report: dict, path: Path) -> Path:
    langs = list(report["languages"])
    series: list[tuple[str, list[float]]] = [("model", [report["languages"][x]["f1"] for x in langs])]
    if report.get("teacher"):
        series.append(("teacher", [report["languages"][x].get("teacher_f1") for x in langs]))
    for col, label in (("xtremedistil_student_f1", "paper student"), ("mbert_joint_teacher_f1", "paper teacher")):
        values = [report["languages"][x].get("paper", {}).get(col) for x in langs]
        if any(v is not None for v in values):
            series.append((label, values))
    fig, ax = plt.subplots(figsize=(min(20.0, max(6.0, 0.4 * len(langs) + 2)), 4.5))
    x = np.arange(len(langs))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=label)
    if report.get("mean_f1") is not None:
        ax.axhline(report["mean_f1"], color="black", linewidth=0.8, linestyle="--",
                   label=f"model mean {report['mean_f1']:.2f}")
    ax.set_xticks(x, langs, rotation=90 if len(langs) > 12 else 0)
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"WikiAnn per-language F1 ({report['split']}): {Path(report['model']['path']).name}", pad=26)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series) + 1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
