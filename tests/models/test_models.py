"""Students, teachers, SVD embedding compression, layer maps (xdt.models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForTokenClassification, BertForTokenClassification, ElectraForTokenClassification

from xdt.config import STUDENT_PRESETS, StudentConfig, TeacherConfig
from xdt.errors import ConfigError
from xdt.models import (build_student, build_teacher, count_parameters, parameter_breakdown, resolve_layer_map,
                        student_shape, svd_components, svd_compress, teacher_layers_to_copy)

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
MBERT_VOCAB = 119_547


def _matrix(rows: int, cols: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """A matrix with well separated singular values (so the top-E subspace is unique)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, cols)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    s = 2.0 ** -np.arange(cols, dtype=np.float64) * 10
    return (u * s) @ v.T + shift


def _tiny_teacher(vocab: int = 300, layers: int = 4, hidden: int = 64, heads: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = TeacherConfig(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=2 * hidden)
    return build_teacher(cfg, vocab_size=vocab, labels=LABELS)


# --------------------------------------------------------------------------------------------- SVD


@pytest.mark.parametrize("center", [False, True])
def test_svd_compress_keeps_exactly_the_top_directions(center):
    w = _matrix(120, 24, shift=0.7 if center else 0.0)
    e = 6
    comp = svd_compress(torch.from_numpy(w), e, center=center).numpy()
    mean, basis = (t.numpy() for t in svd_components(torch.from_numpy(w), e, center=center))
    # independent truncated SVD with numpy
    ref_mean = w.mean(0) if center else np.zeros(w.shape[1])
    u, s, vt = np.linalg.svd(w - ref_mean, full_matrices=False)
    truncated = (u[:, :e] * s[:e]) @ vt[:e]
    np.testing.assert_allclose(mean, ref_mean, atol=1e-12)
    assert comp.shape == (120, e)
    np.testing.assert_allclose(basis.T @ basis, np.eye(e), atol=1e-10)  # orthonormal
    np.testing.assert_allclose(comp @ basis.T, truncated, atol=1e-9)  # the best rank-E approximation
    np.testing.assert_allclose(np.abs(comp), np.abs(u[:, :e] * s[:e]), atol=1e-9)  # = U_E S_E up to sign
    np.testing.assert_allclose(comp.T @ comp, np.diag(s[:e] ** 2), atol=1e-9)  # ordered singular values
    residual = (w - ref_mean) - comp @ basis.T
    np.testing.assert_allclose(residual @ basis, 0.0, atol=1e-9)  # residual orthogonal to the kept directions
    np.testing.assert_allclose(np.linalg.norm(residual), np.linalg.norm(s[e:]), rtol=1e-9)


def test_svd_compress_float32_and_deterministic_signs():
    w = torch.from_numpy(_matrix(200, 16, seed=3)).float()
    a, b = svd_compress(w, 4), svd_compress(w.clone(), 4)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    _, basis = svd_components(w, 4)
    assert (basis.gather(0, basis.abs().argmax(0, keepdim=True)) > 0).all()


def test_svd_rejects_more_directions_than_the_width():
    with pytest.raises(ConfigError, match="^student.embedding_size"):
        svd_compress(torch.zeros(10, 4), 5)


@pytest.mark.parametrize("embedding_size", [32, 16])
def test_student_word_embeddings_start_from_teacher_svd(embedding_size):
    teacher = _tiny_teacher()
    cfg = StudentConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                        embedding_size=embedding_size, freeze_embeddings=True)
    student = build_student(cfg, vocab_size=300, labels=LABELS, teacher=teacher)
    expected = svd_compress(teacher.get_input_embeddings().weight.detach(), embedding_size)
    weight = student.get_input_embeddings().weight
    assert torch.allclose(weight, expected, atol=1e-6)
    assert not weight.requires_grad
    assert sum(not p.requires_grad for p in student.parameters()) == 1
    expected_cls = ElectraForTokenClassification if embedding_size < 32 else BertForTokenClassification
    assert type(student) is expected_cls


# --------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("preset, published", [("l6-h256", 12.75e6), ("l6-h384", 22.71e6),
                                               ("l12-h384", 33.36e6)])
def test_presets_have_the_published_shapes(preset, published):
    with torch.device("meta"):  # shapes and counts only: no memory, no init time
        model = build_student(StudentConfig(preset=preset, embedding_init="random"), vocab_size=30_522,
                              labels=LABELS, task="sequence")
    shape = STUDENT_PRESETS[preset]
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        shape["num_layers"], shape["hidden_size"], shape["num_heads"], shape["intermediate_size"])
    h, i = shape["hidden_size"], shape["intermediate_size"]
    assert len(model.bert.encoder.layer) == shape["num_layers"]
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (h, h)
    assert layer.intermediate.dense.weight.shape == (i, h)
    # the released (uncased, 30,522-piece) checkpoints: BertModel with pooler
    assert round(count_parameters(model.base_model) / 1e4) == round(published / 1e4)


def test_l6_h384_with_the_mbert_vocabulary_is_mostly_word_embeddings():
    with torch.device("meta"):
        seq = build_student(StudentConfig(preset="l6-h384", embedding_init="random"), vocab_size=MBERT_VOCAB,
                            labels=LABELS, task="sequence")
        tok = build_student(StudentConfig(preset="l6-h384", embedding_init="random"), vocab_size=MBERT_VOCAB,
                            labels=LABELS)
    assert round(count_parameters(seq.base_model) / 1e5) == 569  # 56.9M, as the reference README
    parts = parameter_breakdown(tok)
    assert round(parts["word_embeddings"] / 1e5) == 459  # 45.9M
    assert abs(parts["total"] - 56.9e6) < 0.2e6  # no pooler in a token classifier: 56.75M
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_factorized_student_shapes():
    with torch.device("meta"):
        model = build_student(StudentConfig(preset="l6-h384", embedding_size=128, embedding_init="random"),
                              vocab_size=MBERT_VOCAB, labels=LABELS)
    assert type(model) is ElectraForTokenClassification
    assert model.electra.embeddings.word_embeddings.weight.shape == (MBERT_VOCAB, 128)
    assert model.electra.embeddings_project.weight.shape == (384, 128)
    assert parameter_breakdown(model)["word_embeddings"] == MBERT_VOCAB * 128


def test_user_errors_name_the_config_key():
    def shape(**kw):
        return student_shape(StudentConfig(**kw))

    with pytest.raises(ConfigError, match="^student.embedding_size"):
        shape(hidden_size=128, num_heads=2, embedding_size=256)
    with pytest.raises(ConfigError, match="^student.hidden_size"):
        shape(hidden_size=100, num_heads=3)
    with pytest.raises(ConfigError, match="^student.hidden_size: 256 contradicts student.preset"):
        shape(preset="l6-h384", hidden_size=256)
    assert shape(preset="l6-h384").hidden_size == 384  # fields at their defaults take the preset
    with pytest.raises(ConfigError, match="^student.embedding_init"):
        build_student(StudentConfig(), vocab_size=50, labels=LABELS)  # svd without a teacher
    with pytest.raises(ConfigError, match="^teacher.hidden_size"):
        build_teacher(TeacherConfig(hidden_size=100, num_heads=3), vocab_size=50, labels=LABELS)
    with pytest.raises(ConfigError, match="^teacher.model"):
        build_teacher(TeacherConfig(model="/nonexistent/teacher"), vocab_size=50, labels=LABELS)
    with pytest.raises(ConfigError, match="^student.embedding_init: 'svd' needs the teacher's vocabulary"):
        build_student(StudentConfig(), vocab_size=50, labels=LABELS, teacher=_tiny_teacher(vocab=40))


# --------------------------------------------------------------------------------------------- layer maps


def test_layer_maps():
    assert resolve_layer_map("top", 6, 12) == [(k, 6 + k) for k in range(7)]
    assert resolve_layer_map("uniform", 6, 12) == [(k, 2 * k) for k in range(7)]
    assert resolve_layer_map("uniform", 4, 6) == [(0, 0), (1, 1), (2, 3), (3, 4), (4, 6)]
    assert resolve_layer_map([-1, -1, 7], 2, 12) == [(2, 7)]
    assert teacher_layers_to_copy("uniform", 3, 12) == [3, 7, 11]  # every 4th layer
    for spec, match in [([0, 1], "expected 3 entries"), ([0, 1, 13], r"^distill.layer_map.2: teacher state 13"),
                        ("top-down", "expected 'top'"), ([-1, -1, -1], "maps no student state")]:
        with pytest.raises(ConfigError, match=match):
            resolve_layer_map(spec, 2, 12)
    with pytest.raises(ConfigError, match="^distill.layer_map: 'top' needs"):
        resolve_layer_map("top", 6, 4)
    with pytest.raises(ConfigError, match="student layer 1 must map"):
        teacher_layers_to_copy([0, 0, 4], 2, 4)


# --------------------------------------------------------------------------------------------- starts


def test_student_copies_teacher_layers_by_the_layer_map():
    teacher = _tiny_teacher(layers=4, hidden=32, heads=2)
    cfg = StudentConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, embedding_init="teacher")
    student = build_student(cfg, vocab_size=300, labels=LABELS, teacher=teacher)  # uniform: layers 1, 3
    for i, j in [(0, 1), (1, 3)]:
        s_state, t_state = student.bert.encoder.layer[i].state_dict(), teacher.bert.encoder.layer[j].state_dict()
        assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
    s_emb, t_emb = student.bert.embeddings.state_dict(), teacher.bert.embeddings.state_dict()
    assert all(torch.equal(s_emb[k], t_emb[k]) for k in s_emb)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    with pytest.raises(ConfigError, match="^student.intermediate_size: 128 exceeds the teacher's 64"):
        build_student(StudentConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=128,
                                    embedding_init="teacher"), vocab_size=300, labels=LABELS, teacher=teacher)
    with pytest.raises(ConfigError, match="^student.num_heads: 4 differs from the teacher's 2"):
        build_student(StudentConfig(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64,
                                    embedding_init="teacher"), vocab_size=300, labels=LABELS, teacher=teacher)


def test_teacher_start_with_a_narrower_feed_forward_keeps_the_units_that_matter():
    teacher = _tiny_teacher(layers=2, hidden=32, heads=2).eval()  # feed-forward 64 units
    dead = torch.arange(1, 64, 2)  # every odd unit writes nothing: removing them changes no output
    with torch.no_grad():
        for layer in teacher.bert.encoder.layer:
            layer.output.dense.weight[:, dead] = 0.0
    cfg = StudentConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=32, embedding_init="teacher")
    student = build_student(cfg, vocab_size=300, labels=LABELS, teacher=teacher).eval()
    assert student.bert.encoder.layer[0].intermediate.dense.weight.shape == (32, 32)
    ids = torch.randint(1, 300, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_teacher_start_with_factorized_embeddings_keeps_the_teacher_tables_in_e_dimensions():
    teacher = _tiny_teacher(layers=2, hidden=32, heads=2)
    basis = torch.linalg.qr(torch.randn(32, 8, generator=torch.Generator().manual_seed(1)))[0]  # [H, E]
    emb = teacher.bert.embeddings
    with torch.no_grad():  # word, position and type tables inside one 8-dimensional subspace
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight.copy_(table.weight @ basis @ basis.T)
    cfg = StudentConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, embedding_size=8,
                        embedding_init="teacher")
    student = build_student(cfg, vocab_size=300, labels=LABELS, teacher=teacher)
    back = student.electra.embeddings_project.weight / (32 / 8) ** 0.5  # [H, E]: the basis (LayerNorm gain 1)
    s_emb = student.electra.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        torch.testing.assert_close(getattr(s_emb, name).weight @ back.T, getattr(emb, name).weight,
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(back.T @ back, torch.eye(8), atol=1e-5, rtol=0)
    assert torch.equal(student.electra.encoder.layer[1].output.dense.weight,
                       teacher.bert.encoder.layer[1].output.dense.weight)  # uniform: 1 <- 1


def test_factorized_student_round_trips_through_plain_transformers(tmp_path):
    teacher = _tiny_teacher()
    cfg = StudentConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, embedding_size=16)
    student = build_student(cfg, vocab_size=300, labels=LABELS, teacher=teacher).eval()
    student.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is ElectraForTokenClassification and loaded.config.embedding_size == 16
    assert loaded.config.id2label[1] == "B-PER"
    ids = torch.randint(1, 300, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        assert torch.equal(student(ids, attention_mask=mask).logits, loaded(ids, attention_mask=mask).logits)
        again = build_student(StudentConfig(init_from=str(tmp_path)), vocab_size=300, labels=LABELS).eval()
        assert torch.equal(student(ids).logits, again(ids).logits)
    with pytest.raises(ConfigError, match="^student.init_from: .* has a vocabulary of 300"):
        build_student(StudentConfig(init_from=str(tmp_path)), vocab_size=301, labels=LABELS)


def test_pretrained_student_must_be_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="^student.init_from: no \\*.safetensors"):
        build_student(StudentConfig(init_from=str(tmp_path)), vocab_size=300, labels=LABELS)


def test_teacher_from_a_local_folder_gets_a_new_head(tmp_path):
    source = _tiny_teacher(hidden=32, heads=2)
    source.save_pretrained(tmp_path)
    labels = ["O", "B-X", "I-X"]
    teacher = build_teacher(TeacherConfig(model=str(tmp_path)), vocab_size=300, labels=labels)
    assert teacher.config.num_labels == 3 and teacher.config.label2id == {"O": 0, "B-X": 1, "I-X": 2}
    assert teacher.classifier.weight.shape == (3, 32)
    assert torch.equal(teacher.bert.encoder.layer[0].output.dense.weight,
                       source.bert.encoder.layer[0].output.dense.weight)
    with pytest.raises(ConfigError, match="^teacher.model: .* fewer than"):
        build_teacher(TeacherConfig(model=str(tmp_path)), vocab_size=400, labels=labels)


def test_random_teacher_has_the_configured_shape():
    teacher = build_teacher(TeacherConfig(num_layers=3, hidden_size=48, num_heads=4, intermediate_size=96),
                            vocab_size=123, labels=LABELS, attn_implementation="eager")
    c = teacher.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size, c.vocab_size,
            c.num_labels) == (3, 48, 4, 96, 123, 7)
    out = teacher(torch.randint(0, 123, (2, 5)), output_attentions=True, output_hidden_states=True)
    assert len(out.hidden_states) == 4 and out.attentions[0].shape == (2, 4, 5, 5)
