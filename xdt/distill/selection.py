"""Model selection on dev (never on test): mean over languages of the per-language entity F1, as the paper."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xdt.data.task import SplitData
from xdt.eval.predict import predict_label_ids, to_label_names
from xdt.eval.scoring import score


@dataclass
class DevScore:
    mean_f1: float  # percent
    per_language: dict[str, float]


def dev_score(model: torch.nn.Module, dev: dict[str, SplitData], labels: list[str], pad_id: int,
              batch_size: int = 64) -> DevScore:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    id2label = dict(enumerate(labels))
    per_language = {}
    try:
        for lang, split in dev.items():
            flat = predict_label_ids(model, split.features, batch_size, pad_id, device)
            pred = to_label_names(flat, split.sentences, id2label)
            gold = [list(s.tags) for s in split.sentences]
            per_language[lang] = 100.0 * score(gold, pred).total("default").prf()[2]
    finally:
        model.train(was_training)
    return DevScore(sum(per_language.values()) / len(per_language), per_language)
