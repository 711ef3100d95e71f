"""Gradual unfreezing: each step trains exactly its groups through a real AdamW step (xdt.distill.unfreeze)."""

from __future__ import annotations

import pytest
import torch

from xdt.config import DistillConfig, StudentConfig, TeacherConfig
from xdt.distill import DistillLoss, UnfreezePlan, keep_frozen_names, unfreeze_groups
from xdt.models import build_student, build_teacher

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCES = [["Angela", "Merkel", "besuchte", "Paris", "."], ["Москва", "—", "столица", "России"],
             ["東京", "は", "日本", "の", "首都"]]


def _student(vocab: int, embedding_size: int | None = 8, freeze: bool = False, task: str = "token"):
    torch.manual_seed(0)
    cfg = StudentConfig(num_layers=2, hidden_size=16, num_heads=2, intermediate_size=32,
                        embedding_size=embedding_size, embedding_init="random", freeze_embeddings=freeze)
    return build_student(cfg, vocab_size=vocab, labels=LABELS, task=task), cfg


def test_group_order_is_top_down():
    student, _ = _student(50)
    loss = DistillLoss.from_config(DistillConfig(), {"hidden": 1.0}, student_layers=2, teacher_layers=2,
                                   student_hidden=16, teacher_hidden=24)
    names = [g.name for g in unfreeze_groups(student, loss.projector)]
    assert names == ["head", "projector", "encoder.layer.1", "encoder.layer.0", "embeddings_project",
                     "embeddings"]
    bert, _ = _student(50, embedding_size=None, task="sequence")
    groups = unfreeze_groups(bert)
    assert [g.name for g in groups] == ["head", "encoder.layer.1", "encoder.layer.0", "embeddings"]
    assert set(groups[0].names) == {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight",
                                    "bert.pooler.dense.bias"}
    assert "bert.embeddings.LayerNorm.weight" in groups[-1].names


def test_keep_frozen_and_step_bounds():
    student, cfg = _student(50, embedding_size=None, freeze=True)
    plan = UnfreezePlan(student, keep_frozen=keep_frozen_names(student, cfg))
    assert plan.keep_frozen == {"bert.embeddings.word_embeddings.weight"}
    assert plan.group_names[-1] == "embeddings"  # positions, types, LayerNorm still unfreeze
    everything = plan.apply(plan.num_steps + 5)
    assert everything == plan.trainable_names(plan.num_steps - 1) == plan.apply_all()
    assert "bert.embeddings.word_embeddings.weight" not in everything
    assert not student.get_input_embeddings().weight.requires_grad
    assert {n for n, p in student.named_parameters() if p.requires_grad} == set(everything)
    with pytest.raises(ValueError, match="non-negative"):
        plan.apply(-1)
    with pytest.raises(ValueError, match="keep_frozen names no parameter"):
        UnfreezePlan(student, keep_frozen=["bert.nonexistent.weight"])
    assert keep_frozen_names(student, StudentConfig()) == []


def _input_ids(vocab: int, tok=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and first-sub-word labels: from the real mBERT tokenizer when given."""
    if tok is not None:
        enc = tok(SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
        labels = torch.full_like(enc["input_ids"], -100)
        for b in range(len(SENTENCES)):
            seen = set()
            for pos, word in enumerate(enc.word_ids(b)):
                if word is not None and word not in seen:
                    seen.add(word)
                    labels[b, pos] = word % len(LABELS)
        return enc["input_ids"], enc["attention_mask"], labels
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return ids, mask, torch.randint(0, len(LABELS), (3, 8), generator=g).masked_fill(mask == 0, -100)


@pytest.mark.parametrize("vocab", [64, pytest.param(119_547, marks=pytest.mark.data)])
@pytest.mark.parametrize("freeze", [False, True])
def test_each_step_trains_exactly_its_groups(vocab, freeze, request):
    tok = request.getfixturevalue("mbert_tokenizer") if vocab == 119_547 else None
    assert tok is None or len(tok) == vocab
    student, cfg = _student(vocab, freeze=freeze)
    teacher = build_teacher(TeacherConfig(num_layers=2, hidden_size=24, num_heads=2, intermediate_size=48),
                            vocab_size=vocab, labels=LABELS).eval()
    loss_fn = DistillLoss.from_config(DistillConfig(projection_dropout=0.0),
                                      {"hidden": 1.0, "logits": 1.0, "labels": 1.0}, student_layers=2,
                                      teacher_layers=2, student_hidden=16, teacher_hidden=24)
    plan = UnfreezePlan(student, projector=loss_fn.projector, keep_frozen=keep_frozen_names(student, cfg))
    assert plan.num_steps == 6  # head, projector, layer 1, layer 0, embeddings_project, embeddings
    named = dict(student.named_parameters()) | {f"projector.{n}": p for n, p in loss_fn.projector.named_parameters()}
    optimizer = torch.optim.AdamW(named.values(), lr=1e-2, weight_decay=0.01)
    ids, attention_mask, labels = _input_ids(vocab, tok)
    with torch.no_grad():
        t_out = teacher(ids, attention_mask=attention_mask, output_hidden_states=True)
    for step in range(plan.num_steps):
        trainable = set(plan.apply(step))
        assert trainable == {n for n, p in named.items() if p.requires_grad}
        before = {n: p.detach().clone() for n, p in named.items()}
        s_out = student(ids, attention_mask=attention_mask, output_hidden_states=True)
        total, _ = loss_fn(s_out, t_out, mask=attention_mask.bool(), labels=labels)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
        assert changed == trainable, (step, plan.group_names[step])
        expected = {n for g in plan.groups[: step + 1] for n in g.names}
        assert trainable == expected
    word = "electra.embeddings.word_embeddings.weight"
    assert (word in changed) is not freeze
