"""The training recipe as the papers run it: dropout on while any model trains (loaded from a folder or not),
distillation terms on every real token, Transformer-student learning rates, and restore-to-best between unfreeze
steps, checked on real DeepSpeed engines (ZeRO-2 and ZeRO-3) and on what the checkpoints hold."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from xdt.config import DistillConfig, StageConfig, load_config
from xdt.distill.losses import DistillLoss, masked_mse
from xdt.recipes.teacher import train_teacher
from xdt.distill.step import DistillStep
from xdt.recipes.distill import distill
from xdt.engine.checkpoint import Checkpointer
from xdt.models.student import build_student
from xdt.models.teacher import build_teacher

from .conftest import SMALL

pytestmark = pytest.mark.distributed  # DeepSpeed engines (one gloo rank)

def _teacher(cfg, data):
    torch.manual_seed(0)
    return build_teacher(cfg.teacher, vocab_size=len(data.tokenizer), labels=data.labels)


def _record_dropout_modes(model: nn.Module) -> list[bool]:
    """`training` of every dropout module in each forward that builds a graph (training, not dev scoring)."""
    seen: list[bool] = []
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.register_forward_hook(lambda mod, *_: seen.append(mod.training) if torch.is_grad_enabled() else None)
    return seen


# --------------------------------------------------------------------------------------------- defect 1: dropout


@pytest.mark.slow
def test_a_teacher_loaded_from_a_folder_fine_tunes_with_dropout_on(mock_task, tmp_path):
    from transformers import AutoModelForTokenClassification

    cfg, data = mock_task
    _teacher(cfg, data).save_pretrained(tmp_path / "pretrained")
    loaded = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "pretrained"))
    assert not loaded.training  # what transformers hands over: the reason the loop must switch it
    seen = _record_dropout_modes(loaded)
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", "teacher.epochs=1"])
    train_teacher(cfg, data, tmp_path / "run", model=loaded)
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} dropout calls ran in eval mode"


@pytest.mark.slow
def test_a_student_loaded_from_a_folder_distils_with_dropout_on(mock_task, tmp_path):
    cfg, data = mock_task
    teacher = _teacher(cfg, data)
    build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels,
                  teacher=teacher).save_pretrained(tmp_path / "student0")
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", f"student.init_from={tmp_path / 'student0'}",
                             "distill.strategy=D4.1", "distill.steps=2"])
    student = build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels, teacher=teacher)
    assert not student.training
    seen = _record_dropout_modes(student)
    distill(cfg, data, teacher, student, tmp_path / "run")
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} dropout calls ran in eval mode"


# --------------------------------------------------------------------------------------------- defect 3: rates


def test_student_rates_default_to_the_transformer_recipe():
    assert (DistillConfig().lr, DistillConfig().schedule) == (1e-4, "linear")
    assert (StageConfig().lr, StageConfig().schedule) == (1e-4, "linear")
    for name in ("l6-h256", "l6-h384", "l12-h384"):  # the shipped paper-scale configs inherit them
        cfg = load_config(f"configs/wikiann41-{name}.yaml", check=False)
        assert (cfg.distill.lr, cfg.distill.schedule) == (1e-4, "linear")


# --------------------------------------------------------------------------------------------- defect 4: positions


def test_distillation_terms_count_every_real_token_by_default(mock_task):
    cfg, data = mock_task
    assert DistillConfig().positions == "tokens"
    teacher = _teacher(cfg, data)
    student = build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels, teacher=teacher).eval()
    from xdt.data.batching import WindowBatcher

    batch = next(WindowBatcher(data.transfer.features, data.tokenizer.pad_token_id).epoch(16, 0, 0))
    words, tokens = batch["word_index"] >= 0, batch["attention_mask"] > 0
    assert tokens.sum() > words.sum()  # sub-word continuations, [CLS] and [SEP] exist in this batch
    with torch.no_grad():
        t_logits = teacher.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = DistillLoss.from_config(cfg.distill, {"logits": 1.0}, student_layers=2, teacher_layers=2,
                                   student_hidden=16, teacher_hidden=32)
    for every_token, mask in ((True, tokens), (False, words)):
        module = DistillStep(student, None, every_token=every_token)
        module.set_losses(loss, None)
        with torch.no_grad():
            total, _ = module(batch, {"logits": t_logits})
        assert torch.allclose(total, masked_mse(s_logits, t_logits, mask)), every_token


# --------------------------------------------------------------------------------------------- defect 5: restore


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_each_unfreeze_step_ends_on_the_best_dev_weights(mock_task, tmp_path, zero):
    """Dev scores are scripted (up, down, up, down ...): after every unfreeze step the weights, as the step's
    checkpoint holds them (module and ZeRO's fp32 master copies), are those of the best dev evaluation so far."""
    import deepspeed

    cfg, data = mock_task
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", "distill.strategy=D4.2", "distill.steps=2",
                             f"deepspeed.config=ds_configs/zero{zero}.json", "output.keep_last=0"])
    teacher = _teacher(cfg, data)
    student = build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels, teacher=teacher)
    scripted = itertools.cycle([30.0, 20.0, 40.0, 35.0, 10.0, 50.0, 45.0])
    seen: list[tuple[float, dict]] = []

    def score_fn(model):
        with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=zero == 3):
            weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen.append((next(scripted), weights))
        return seen[-1][0]

    result = distill(cfg, data, teacher, student, tmp_path / "run", score_fn=score_fn)
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints" / "distill", keep_last=0)
    scored = [(i, h) for i, h in enumerate(result.history) if "dev_f1" in h]
    assert len(scored) == len(seen) and len(seen) >= 8
    restored = 0
    for k, (i, h) in enumerate(scored):
        best_k = max(range(k + 1), key=lambda j: (seen[j][0], j))  # ties: the later one
        state = ckpt.consolidated(f"s{h['stage']}-p{i - _first_phase(result.history, h['stage'])}-done")
        for name, value in seen[best_k][1].items():
            assert torch.equal(state[f"student.{name}"], value), (h["group"], name)
        restored += "restored_dev_f1" in h
        assert ("restored_dev_f1" in h) == (best_k != k)
    assert restored >= 3
    assert result.best_dev_f1 == 50.0


def _first_phase(history: list[dict], stage: int) -> int:
    return next(i for i, h in enumerate(history) if h["stage"] == stage)
