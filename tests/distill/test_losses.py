"""Distillation losses against hand-computed values; masking; the weighted combination (xdt.distill.losses)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xdt.config import DistillConfig, StudentConfig, TeacherConfig
from xdt.distill.losses import (DistillLoss, HiddenProjector, attention_loss, hidden_loss, label_loss, logit_loss,
                                masked_mse)
from xdt.errors import ConfigError
from xdt.models import build_student, build_teacher

T = torch.tensor


# --------------------------------------------------------------------------------------------- MSE


def test_masked_mse_by_hand():
    pred = T([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    target = torch.zeros(1, 3, 2)
    mask = T([[True, True, False]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 4 + 9 + 16) / (2 * 2))
    assert masked_mse(pred, target, mask, mask_padding=False).item() == pytest.approx((30 + 2e4) / 6)
    assert masked_mse(pred, target).item() == pytest.approx(F.mse_loss(pred, target).item())
    weights = T([[1.0, 0.5, 0.0]])  # float masks weight positions
    assert masked_mse(pred, target, weights).item() == pytest.approx((1 + 4 + 0.5 * (9 + 16)) / (1.5 * 2))


def test_nothing_counted_gives_zero_and_a_gradient():
    pred = torch.ones(2, 3, 4, requires_grad=True)
    loss = masked_mse(pred, torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_hidden_loss_by_hand():
    """Two student states of width 2 projected to width 3 by known matrices, one padded position."""
    s0, s1 = T([[[1.0, 0.0], [0.0, 1.0]]]), T([[[1.0, 1.0], [5.0, 5.0]]])
    t = [torch.zeros(1, 2, 3), T([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]), T([[[0.0, 2.0, 0.0], [9.0, 9.0, 9.0]]])]
    projector = HiddenProjector([(0, 1), (1, 2)], 2, 3, dropout=0.0)
    w0, w1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    with torch.no_grad():
        projector.proj["0"].weight.copy_(torch.from_numpy(w0))
        projector.proj["1"].weight.copy_(torch.from_numpy(w1))
        projector.proj["0"].bias.fill_(0.5)
        projector.proj["1"].bias.zero_()
    mask = T([[1, 0]])
    # pair (0,1), position 0: W0 @ [1,0] + 0.5 = [1.5, 0.5, 1.5] vs [1,1,1] -> 0.25 * 3 = 0.75 / 3 dims = 0.25
    # pair (1,2), position 0: W1 @ [1,1] = [2, 1, 0] vs [0,2,0] -> 4 + 1 + 0 = 5 / 3 dims
    expected = (0.25 + 5 / 3) / 2
    assert hidden_loss([s0, s1], t, projector, mask).item() == pytest.approx(expected)
    s1_changed, t2_changed = s1.clone(), t[2].clone()
    s1_changed[0, 1], t2_changed[0, 1] = -7.0, 3.0  # padded position: no effect
    assert hidden_loss([s0, s1_changed], [t[0], t[1], t2_changed], projector, mask).item() == pytest.approx(expected)


# --------------------------------------------------------------------------------------------- attention


def _softmax_rows(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    z = np.where(valid, x, -np.inf)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_mse_and_kl_by_hand():
    # one sequence of 3 tokens, the last one padding; one head each
    valid = np.array([True, True, False])
    s = _softmax_rows(np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), valid)
    t = _softmax_rows(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 1.0, 0.0]]), valid)
    a_s, a_t = torch.from_numpy(s)[None, None].float(), torch.from_numpy(t)[None, None].float()
    q = T([[True, True, False]])
    k = T([[1, 1, 0]])
    # MSE over the 2 counted query rows x 2 counted keys
    expected_mse = ((s[:2, :2] - t[:2, :2]) ** 2).sum() / 4
    got = attention_loss([a_s], [a_t], [(0, 0), (1, 1)], "mse", q, k).item()
    assert got == pytest.approx(expected_mse, rel=1e-5)
    expected_kl = sum((t[i, :2] * np.log(t[i, :2] / s[i, :2])).sum() for i in range(2)) / 2
    assert attention_loss([a_s], [a_t], [(1, 1)], "kl", q, k).item() == pytest.approx(expected_kl, rel=1e-5)
    # padded query rows and key columns do not count
    a_s2, a_t2 = a_s.clone(), a_t.clone()
    a_s2[..., 2, :], a_t2[..., :, 2] = 0.3, 0.9
    assert attention_loss([a_s2], [a_t2], [(1, 1)], "mse", q, k).item() == pytest.approx(got, rel=1e-6)
    # mask_padding=False: every element
    everything = ((s - t) ** 2).mean()
    assert attention_loss([a_s], [a_t], [(1, 1)], "mse", q, k, mask_padding=False).item() == pytest.approx(
        everything, rel=1e-5)


def test_attention_head_average_when_head_counts_differ():
    torch.manual_seed(0)
    a_s = torch.softmax(torch.randn(2, 4, 5, 5), -1)  # 4 student heads
    a_t = torch.softmax(torch.randn(2, 2, 5, 5), -1)  # 2 teacher heads
    got = attention_loss([a_s], [a_t], [(1, 1)], "mse")
    expected = ((a_s.mean(1) - a_t.mean(1)) ** 2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    same_heads = attention_loss([a_s[:, :2]], [a_t], [(1, 1)], "mse")  # equal counts: per head
    assert same_heads.item() == pytest.approx(((a_s[:, :2] - a_t) ** 2).mean().item(), rel=1e-5)


def test_attention_needs_eager_maps():
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        attention_loss((), (), [(1, 1)], "mse")


# --------------------------------------------------------------------------------------------- logits, labels


def test_logit_mse_by_hand():
    s = T([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    t = T([[[1.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    mask = T([[1, 0]])
    assert logit_loss(s, t, mask).item() == pytest.approx((0 + 4 + 9) / 3)
    assert logit_loss(s, t, mask, mask_padding=False).item() == pytest.approx((13 + 75) / 6)


def test_logit_kl_with_temperature_by_hand():
    s, t = np.array([1.0, 2.0, 0.5]), np.array([3.0, -1.0, 0.0])
    temp = 2.0

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    p, r = softmax(t / temp), softmax(s / temp)
    expected = temp ** 2 * (p * np.log(p / r)).sum()
    student = torch.from_numpy(np.stack([s, s * 9])).float()[None]  # second position is padding
    teacher = torch.from_numpy(np.stack([t, -t])).float()[None]
    got = logit_loss(student, teacher, T([[True, False]]), "kl", temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="^distill.temperature"):
        logit_loss(student, teacher, None, "kl", 0.0)
    with pytest.raises(ConfigError, match="^distill.logit_loss"):
        logit_loss(student, teacher, None, "l1")


def test_label_cross_entropy_by_hand():
    logits = T([[[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]]])
    labels = T([[0, -100, 1]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    assert label_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    logits[0, 1] = 50.0  # an ignored position
    assert label_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert label_loss(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits.view(-1, 2), labels.view(-1)).item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- padding


def _outputs(seed: int, batch: int = 2, length: int = 6, width: int = 8, layers: int = 2, heads: int = 2,
             labels: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": [torch.randn(batch, length, width, generator=g) for _ in range(layers + 1)],
            "attentions": [torch.softmax(torch.randn(batch, heads, length, length, generator=g), -1)
                           for _ in range(layers)],
            "logits": torch.randn(batch, length, labels, generator=g)}


@pytest.mark.parametrize("logit_kind, attention_kind", [("mse", "mse"), ("kl", "kl")])
def test_changing_padded_positions_does_not_change_any_term(logit_kind, attention_kind):
    torch.manual_seed(0)
    projector = HiddenProjector([(0, 0), (1, 2), (2, 4)], 8, 12, dropout=0.0)
    loss = DistillLoss({"hidden": 1.0, "attention": 0.5, "logits": 2.0, "labels": 1.0}, projector=projector,
                       logit_loss=logit_kind, temperature=2.0, attention_loss=attention_kind)
    student = _outputs(1)
    teacher = _outputs(2, width=12, layers=4)
    attention_mask = T([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = T([[0, 1, -100, 2, 3, 4], [4, -100, 1, -100, -100, -100]])
    total, terms = loss(student, teacher, mask=attention_mask.bool(), attention_mask=attention_mask, labels=labels)
    for out in (student, teacher):  # scribble over sequence 1's padding (positions 3..5)
        for h in out["hidden_states"]:
            h[1, 3:] = 1e3
        for a in out["attentions"]:
            a[1, :, 3:, :] = 0.5
            a[1, :, :, 3:] = 0.25
        out["logits"][1, 3:] = -1e3
    total2, terms2 = loss(student, teacher, mask=attention_mask.bool(), attention_mask=attention_mask, labels=labels)
    assert set(terms) == {"hidden", "attention", "logits", "labels"}
    for name in terms:
        assert terms2[name].item() == pytest.approx(terms[name].item(), rel=1e-6), name
    assert total2.item() == pytest.approx(total.item(), rel=1e-6)
    quirk = DistillLoss({"logits": 1.0}, logit_loss=logit_kind, temperature=2.0, mask_padding=False)
    assert quirk(student, teacher, mask=attention_mask.bool())[0].item() != pytest.approx(terms["logits"].item())


# --------------------------------------------------------------------------------------------- combination


def test_distill_loss_total_is_the_weighted_sum():
    torch.manual_seed(0)
    student, teacher = _outputs(1), _outputs(2)
    mask = torch.ones(2, 6, dtype=torch.bool)
    labels = torch.randint(0, 5, (2, 6))
    loss = DistillLoss({"logits": 2.0, "labels": 0.5, "attention": 0.0})
    total, terms = loss(student, teacher, mask=mask, labels=labels)
    assert set(terms) == {"logits", "labels"}  # weight 0: not computed, no attention maps needed
    assert not terms["logits"].requires_grad
    expected = 2.0 * F.mse_loss(student["logits"], teacher["logits"]) + 0.5 * F.cross_entropy(
        student["logits"].reshape(-1, 5), labels.reshape(-1))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not loss.needs_hidden_states and not loss.needs_attentions and loss.needs_teacher
    assert not DistillLoss({"labels": 1.0}).needs_teacher


def test_distill_loss_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^stages.1.losses: unknown loss term 'hiden'"):
        DistillLoss({"hiden": 1.0}, key="stages.1.losses")
    with pytest.raises(ConfigError, match=r"^losses.logits: expected a non-negative weight"):
        DistillLoss({"logits": -1.0})
    with pytest.raises(ConfigError, match=r"^losses: no loss term"):
        DistillLoss({"logits": 0.0})
    with pytest.raises(ConfigError, match=r"^distill.attention_loss"):
        DistillLoss({"attention": 1.0}, attention_loss="none", layer_map=[(1, 1)])
    with pytest.raises(ConfigError, match=r"^distill.layer_map"):
        DistillLoss.from_config(DistillConfig(layer_map=[0, 1, 9]), {"hidden": 1.0}, student_layers=2,
                                teacher_layers=4, student_hidden=8, teacher_hidden=16)


def test_sequence_logits_use_every_row():
    student = {"logits": T([[1.0, 0.0], [0.0, 0.0]])}
    teacher = {"logits": T([[0.0, 0.0], [0.0, 2.0]])}
    cls_mask = T([[True, False, False], [True, False, False]])  # the [CLS] mask of the hidden terms
    total, _ = DistillLoss({"logits": 1.0})(student, teacher, mask=cls_mask)
    assert total.item() == pytest.approx((1 + 4) / 4)


def test_distill_loss_on_real_models_trains_student_and_projector():
    """from_config with the paper's top-aligned map, on a tiny eager BERT teacher and a factorized student."""
    labels = ["O", "B-PER", "I-PER"]
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(num_layers=4, hidden_size=32, num_heads=4, intermediate_size=64),
                            vocab_size=100, labels=labels, attn_implementation="eager").eval()
    student = build_student(StudentConfig(num_layers=2, hidden_size=16, num_heads=2, intermediate_size=32,
                                          embedding_size=8), vocab_size=100, labels=labels, teacher=teacher,
                            attn_implementation="eager")
    loss = DistillLoss.from_config(DistillConfig(attention_loss="kl", projection_dropout=0.1),
                                   {"hidden": 1.0, "attention": 1.0, "logits": 1.0, "labels": 1.0},
                                   student_layers=2, teacher_layers=4, student_hidden=16, teacher_hidden=32)
    assert loss.projector.layer_map == [(0, 2), (1, 3), (2, 4)]
    ids = torch.randint(1, 100, (2, 7))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 4:] = 0
    gold = torch.randint(0, 3, (2, 7)).masked_fill(attention_mask == 0, -100)
    flags = {"output_hidden_states": loss.needs_hidden_states, "output_attentions": loss.needs_attentions}
    with torch.no_grad():
        t_out = teacher(ids, attention_mask=attention_mask, **flags)
    s_out = student(ids, attention_mask=attention_mask, **flags)
    total, terms = loss(s_out, t_out, mask=attention_mask.bool(), attention_mask=attention_mask, labels=gold)
    total.backward()
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    assert all(p.grad is not None for p in loss.projector.parameters())
    assert student.electra.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_stages_without_layer_terms_ignore_the_layer_map():
    """A logits/labels stage of a 6-layer student under a 4-layer teacher must not trip over 'top'."""
    loss = DistillLoss.from_config(DistillConfig(layer_map="top"), {"logits": 1.0, "labels": 1.0},
                                   student_layers=6, teacher_layers=4, student_hidden=8, teacher_hidden=16)
    assert loss.projector is None and loss.layer_map is None
    with pytest.raises(ConfigError, match="^distill.layer_map: 'top' needs"):
        DistillLoss.from_config(DistillConfig(layer_map="top"), {"hidden": 1.0}, student_layers=6,
                                teacher_layers=4, student_hidden=8, teacher_hidden=16)
