"""Sequence classification scores: per-language accuracy and macro-F1 of a classifier, for model selection (mean
dev accuracy, percent) and the final report of a `data.task: sequence` run (the task-agnostic route of
XtremeDistilTransformers: a teacher fine-tuned on a source task such as MNLI, distilled through the stages).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score  # a dependency of seqeval
from torch import nn

from xdt.config import RunConfig
from xdt.data.align import IGNORE_INDEX
from xdt.data.classification import (ClassificationBatcher, ClassificationFeatures, ClassificationSplit, model_inputs,
                                     per_language_split)
from xdt.engine.distributed import device, is_main
from xdt.errors import XdtError
from xdt.models.teacher import load_teacher_model

# --------------------------------------------------------------------------------------------- dev scores


@torch.inference_mode()
def predict_classes(model: nn.Module, features: ClassificationFeatures, batch_size: int, pad_id: int,
                    device: torch.device | None = None) -> np.ndarray:
    """The argmax class id of every example, in example order (batches sorted by length: little padding)."""
    device = device or next(model.parameters()).device
    batcher = ClassificationBatcher(features, pad_id)
    out = np.full(features.num_windows, -1, np.int64)
    for batch in batcher.epoch(batch_size, seed=0, epoch=0, shuffle=False):
        logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits
        out[batch["window"].numpy()] = logits.argmax(-1).cpu().numpy()
    return out


@dataclass
class DevAccuracy:
    accuracy: float  # percent, mean over languages: the selection metric
    macro_f1: float  # percent, mean over languages
    per_language: dict[str, dict[str, float]]  # lang -> {"accuracy", "macro_f1", "examples"}


def scores(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over the labels in gold or predictions, sklearn's default), in percent.

    `num_labels` checks the predictions: an id outside the model's labels is a bug, not a score."""
    keep = gold != IGNORE_INDEX
    gold, pred = gold[keep], pred[keep]
    if not len(gold):
        raise XdtError("dev split has no labeled examples")
    if ((pred < 0) | (pred >= num_labels)).any() or (gold >= num_labels).any():
        raise XdtError(f"class ids outside 0..{num_labels - 1}: the model's head and the data's labels differ")
    return {"accuracy": 100.0 * float((gold == pred).mean()),
            "macro_f1": 100.0 * float(f1_score(gold, pred, average="macro", zero_division=0)),
            "examples": int(len(gold))}


def dev_accuracy(model: nn.Module, dev: dict[str, ClassificationSplit], num_labels: int, pad_id: int,
                 batch_size: int = 64) -> DevAccuracy:
    was_training = model.training
    model.eval()
    try:
        per_language = {lang: scores(split.features.labels, predict_classes(model, split.features, batch_size,
                                                                             pad_id), num_labels)
                        for lang, split in dev.items()}
    finally:
        model.train(was_training)
    mean = lambda key: sum(s[key] for s in per_language.values()) / len(per_language)  # noqa: E731
    return DevAccuracy(mean("accuracy"), mean("macro_f1"), per_language)


def load_classifier(path: str | Path, labels: list[str], eager: bool = False) -> nn.Module:
    """A fine-tuned sequence classifier folder for inference; its label order must be the run's."""
    return load_teacher_model(path, labels, eager, task="sequence")


# --------------------------------------------------------------------------------------------- evaluation


def evaluate_classifiers(cfg: RunConfig, models: dict[str, str | Path], data_path: str | Path, tokenizer,
                         labels: list[str], out_dir: str | Path | None = None, split: str | None = None) -> dict:
    """Per-language accuracy and macro-F1 of each named model folder on `split` (default `cfg.eval.split`);
    with `out_dir`, written to `out_dir/report.json` and `report.md`. Retention = student / teacher mean accuracy
    when both are named."""
    split = split or cfg.eval.split
    parts = per_language_split(cfg, data_path, tokenizer, labels, split, limit=0)
    report: dict = {"split": split, "labels": list(labels), "languages": sorted(parts)}
    for name, path in models.items():
        model = load_classifier(path, labels).to(device())
        result = dev_accuracy(model, parts, len(labels), tokenizer.pad_token_id, cfg.eval.batch_size)
        report[name] = {"path": str(path), "mean_accuracy": result.accuracy, "mean_macro_f1": result.macro_f1,
                        "per_language": result.per_language}
        del model
    if "student" in report and "teacher" in report and report["teacher"]["mean_accuracy"] > 0:
        report["retention"] = report["student"]["mean_accuracy"] / report["teacher"]["mean_accuracy"]
    if out_dir is not None and is_main():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=2))
        (Path(out_dir) / "report.md").write_text(f"# {split}: accuracy (macro-F1), percent\n\n```\n"
                                                 + "\n".join(report_lines(report)) + "\n```\n")
    return report


def report_lines(report: dict) -> list[str]:
    """A per-language table of accuracy (macro-F1) for each model of an `evaluate_classifiers` report."""
    names = [k for k in report if isinstance(report[k], dict) and "per_language" in report[k]]
    lines = [f"{'lang':<8}" + "".join(f"{n + ' acc (F1)':>24}" for n in names)]
    for lang in report["languages"]:
        cells = [report[n]["per_language"][lang] for n in names]
        lines.append(f"{lang:<8}" + "".join(f"{c['accuracy']:>14.2f} ({c['macro_f1']:6.2f})" for c in cells))
    lines.append(f"{'mean':<8}" + "".join(f"{report[n]['mean_accuracy']:>14.2f} ({report[n]['mean_macro_f1']:6.2f})"
                                        for n in names))
    if "retention" in report:
        lines.append(f"retention (student / teacher accuracy): {100 * report['retention']:.1f}%")
    return lines
