"""The stage schedule on DeepSpeed: every Table 3 strategy runs and its losses fall; unfreeze steps train exactly
what they say; frozen parameters stay bit-identical across a real DeepSpeed step."""

from __future__ import annotations

import statistics
from collections import defaultdict

import deepspeed
import pytest
import torch

from xdt.config import load_config
from xdt.distill.losses import DistillLoss
from xdt.distill.strategies import STRATEGIES, resolve_stages
from xdt.distill.train import DistillStep, distill
from xdt.distill.unfreeze import UnfreezePlan
from xdt.engine.ds_config import build_ds_config
from xdt.engine.metrics import read_metrics
from xdt.models.student import build_student
from xdt.models.teacher import build_teacher

pytestmark = pytest.mark.distributed  # DeepSpeed engines (one gloo rank)

SMALL = ["data.mock.train_sentences=60", "data.mock.dev_sentences=20", "data.mock.test_sentences=20",
         "data.mock.langs=[en,ru]", "data.max_seq_length=32", "teacher.num_layers=2", "teacher.hidden_size=32",
         "teacher.num_heads=2", "teacher.intermediate_size=64", "student.num_layers=2", "student.hidden_size=16",
         "student.num_heads=2", "student.intermediate_size=32", "student.embedding_size=8", "distill.batch_size=8",
         "distill.lr=3e-3", "tokenizer.mock_vocab_size=600", "output.tensorboard=false"]


@pytest.fixture(scope="module")
def mock_task(tmp_path_factory):
    from xdt.run import prepare

    root = tmp_path_factory.mktemp("mock")
    cfg = load_config(None, [*SMALL, f"data.cache_dir={root}"])
    _, tokenizer, data = prepare(cfg)
    return cfg, data


def _models(cfg, data):
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, vocab_size=len(data.tokenizer), labels=data.labels)
    student = build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels, teacher=teacher)
    return teacher, student


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_table3_strategy_runs_and_its_losses_fall(mock_task, strategy, tmp_path):
    base, data = mock_task
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", f"distill.strategy={strategy}",
                             "distill.steps=12"])
    teacher, student = _models(cfg, data)
    result = distill(cfg, data, teacher, student, tmp_path)
    stages = resolve_stages(cfg)
    assert sorted({h["stage"] for h in result.history}) == list(range(len(stages)))
    losses = defaultdict(list)
    for record in read_metrics(tmp_path / "distill.jsonl"):
        if "distill/loss" in record:
            losses[int(record["distill/stage"])].append(record["distill/loss"])
    for stage, values in losses.items():
        first, last = statistics.mean(values[:3]), statistics.mean(values[-3:])
        assert last < first, f"{strategy} stage {stage} ({stages[stage].name}): loss {first:.4f} -> {last:.4f}"
    assert (result.path / "model.safetensors").exists()
    assert result.best_dev_f1 >= 0


def test_gradual_stages_have_one_phase_per_unfreeze_group(mock_task, tmp_path):
    base, data = mock_task
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", "distill.strategy=D4.2", "distill.steps=2"])
    teacher, student = _models(cfg, data)
    result = distill(cfg, data, teacher, student, tmp_path)
    groups = [h["group"] for h in result.history]
    assert groups == ["representations",
                      "logits [head]", "logits [encoder.layer.1]", "logits [encoder.layer.0]",
                      "logits [embeddings_project]", "logits [embeddings]",
                      "labels [head]", "labels [encoder.layer.1]", "labels [encoder.layer.0]",
                      "labels [embeddings_project]", "labels [embeddings]"]
    # selection on dev happens only where the output trains, never in the representation stage
    assert "dev_f1" not in result.history[0] and all("dev_f1" in h for h in result.history[1:])


def test_each_unfreeze_step_on_deepspeed_changes_exactly_its_parameters(mock_task):
    """One real ZeRO-2 step per unfreeze step: trained groups change, every other parameter is bit-identical."""
    cfg, data = mock_task
    teacher, student = _models(cfg, data)
    loss = DistillLoss.from_config(cfg.distill, {"logits": 1.0}, student_layers=2, teacher_layers=2,
                                   student_hidden=16, teacher_hidden=32)
    module = DistillStep(student, None)
    module.set_losses(loss, None)
    plan = UnfreezePlan(student)
    from xdt.data.batching import WindowBatcher

    batch = next(WindowBatcher(data.transfer.features, data.tokenizer.pad_token_id).epoch(8, 0, 0))
    with torch.no_grad():
        t_out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ds_config = build_ds_config(cfg.deepspeed, 8, 1)
    for step in range(plan.num_steps):
        trainable = set(plan.apply(step))
        params = [p for p in module.parameters() if p.requires_grad]
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        engine, *_ = deepspeed.initialize(model=module, optimizer=torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
                                          model_parameters=params, config=ds_config)
        total, _ = engine(batch, {"logits": t_out.logits})
        engine.backward(total)
        engine.step()
        engine.destroy()
        changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
        assert changed == {n for n in trainable if n in before}, f"unfreeze step {step} ({plan.group_names[step]})"
