"""Recipe options that must do what they say: the attention loss in the presets, an attention map free of dropout,
PCA embedding init, padded teacher vocabularies, and the shipped configs' own command lines (review issue 10)."""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from xdt.config import STRATEGIES, RunConfig, StudentConfig, TeacherConfig, load_config
from xdt.distill.losses import DistillLoss, attention_loss
from xdt.errors import ConfigError
from xdt.models import build_student, build_teacher, svd_compress

LABELS = ["O", "B-PER", "I-PER"]
VOCAB = 60


def _tiny_student(**kw) -> StudentConfig:
    return StudentConfig(**{"num_layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32,
                            "embedding_init": "random", **kw})


# --------------------------------------------------------------------------------------------- 2: attention loss


@pytest.mark.parametrize("kind", ["mse", "kl"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_attention_loss_adds_the_term_beside_hidden_in_every_preset(strategy, kind):
    plain = load_config(None, [f"distill.strategy={strategy}"], check=False).stages
    assert not any("attention" in s.losses for s in plain)  # off by default: the presets as the paper
    overrides = [f"distill.strategy={strategy}", f"distill.attention_loss={kind}"]
    if not any(s.losses.get("hidden", 0) > 0 for s in plain):  # D0-S, D1: nothing to add the term to
        with pytest.raises(ConfigError, match=r"^distill\.attention_loss: .*no representation \(hidden\) stage"):
            load_config(None, overrides)
        with pytest.raises(ConfigError, match=r"^distill\.attention_loss"):
            load_config(None, overrides, check=False)  # checked when the preset is expanded, paths or not
        return
    stages = load_config(None, overrides).stages
    assert [s.name for s in stages] == [s.name for s in plain]
    for before, after in zip(plain, stages):
        if before.losses.get("hidden", 0) > 0:
            assert after.losses == {**before.losses, "attention": 1.0}
        else:
            assert after.losses == before.losses


def test_the_preset_is_expanded_into_stages_once_when_the_config_is_built():
    cfg = load_config(None, ["distill.strategy=D3.2", "distill.steps=7", "distill.lr=0.002"])
    assert [(s.name, s.data, s.losses, s.gradual_unfreeze, s.steps, s.lr) for s in cfg.stages] == [
        ("representations", "transfer", {"hidden": 1.0}, False, 7, 0.002),
        ("logits+labels", "both", {"logits": 1.0, "labels": 1.0}, True, 7, 0.002)]
    assert [s.name for s in RunConfig().stages] == ["representations", "logits", "labels"]  # D4.2, built directly
    # the preset's stages are not explicit ones: a strategy turned off without stages is still refused
    with pytest.raises(ConfigError, match=r"^stages: empty while distill.strategy is null"):
        load_config(None, ["distill.strategy=null"])
    # and a run folder records them as none, as before: a run started by that xdt resumes under this one
    from xdt.outputs import run_identity
    from xdt.recipes.setup import recorded_config

    assert run_identity(recorded_config(cfg))["stages"] == [] and run_identity(recorded_config(cfg))[
        "distill.strategy"] == "D3.2"


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_representation_steps_budget_the_representation_stage_alone(strategy):
    stages = load_config(None, [f"distill.strategy={strategy}", "distill.steps=60",
                                               "distill.representation_steps=300"]).stages
    assert [s.steps for s in stages] == [300 if s.name == "representations" else 60 for s in stages]
    assert any(s.steps == 300 for s in stages) == strategy.startswith(("D3", "D4"))
    with pytest.raises(ConfigError, match=r"^distill\.representation_steps: expected"):
        load_config(None, ["distill.representation_steps=-1"])


def test_explicit_stages_without_an_attention_weight_are_refused():
    stages = "stages=[{name: reps, losses: {hidden: 1.0}}, {name: logits, losses: {logits: 1.0}}]"
    for check in (True, False):  # at load time, with or without the other checks
        with pytest.raises(ConfigError, match=r"^distill\.attention_loss: is 'kl' but no stage of `stages` gives "
                                              r"the attention term a positive weight; add `attention: 1\.0`"):
            load_config(None, ["distill.strategy=null", stages, "distill.attention_loss=kl"], check=check)
    with pytest.raises(ConfigError, match=r"^distill\.attention_loss"):  # weight 0 does not count
        load_config(None, ["distill.strategy=null", "distill.attention_loss=mse",
                           "stages=[{name: reps, losses: {hidden: 1.0, attention: 0.0}}]"])
    cfg = load_config(None, ["distill.strategy=null", "distill.attention_loss=mse",
                             "stages=[{name: reps, losses: {hidden: 1.0, attention: 0.5}}]"])
    assert cfg.stages[0].losses == {"hidden": 1.0, "attention": 0.5}  # explicit stages are kept as given


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_preset_representation_stage_computes_a_nonzero_attention_term(kind):
    cfg = load_config(None, ["distill.strategy=D4.2", f"distill.attention_loss={kind}"])
    stage = cfg.stages[0]
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(num_layers=4, hidden_size=32, num_heads=4, intermediate_size=64),
                            vocab_size=VOCAB, labels=LABELS, attn_implementation="eager").eval()
    student = build_student(_tiny_student(), vocab_size=VOCAB, labels=LABELS, attn_implementation="eager",
                            attention_dropout=0.0)
    loss = DistillLoss.from_config(cfg.distill, stage.losses, student_layers=2, teacher_layers=4,
                                   student_hidden=16, teacher_hidden=32)
    assert loss.needs_attentions and loss.needs_hidden_states
    ids = torch.randint(1, VOCAB, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    flags = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        t_out = teacher(ids, attention_mask=mask, **flags)
    s_out = student(ids, attention_mask=mask, **flags)
    total, terms = loss(s_out, t_out, mask=mask.bool(), attention_mask=mask)
    assert set(terms) == {"hidden", "attention"}
    assert torch.isfinite(terms["attention"]) and terms["attention"].item() > 0.0  # near-uniform maps: small
    direct = attention_loss(s_out.attentions, t_out.attentions, loss.layer_map, kind, mask.bool(), mask)
    assert terms["attention"].item() == pytest.approx(direct.item(), rel=1e-6)
    assert total.item() == pytest.approx(terms["hidden"].item() + terms["attention"].item(), rel=1e-6)
    total.backward()
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- 6: attention dropout


def _train_vs_recomputed_maps(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each self-attention module's map from a train-mode forward, and the same module's map recomputed in eval
    mode (no dropout) from the very inputs it got: equal iff the returned map carries no attention dropout."""
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, kwargs, out: calls.append((mod, args, kwargs, out[1])),
                                     with_kwargs=True)
             for m in model.modules() if type(m).__name__.endswith("SelfAttention")]
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 9))
    model.train()
    model(ids, output_attentions=True)
    for h in hooks:
        h.remove()
    assert len(calls) == model.config.num_hidden_layers
    model.eval()
    with torch.no_grad():
        again = [mod(*args, **kwargs)[1] for mod, args, kwargs, _ in calls]
    model.train()
    return [c[3].detach() for c in calls], again


def _assert_hidden_dropout_on(model):
    assert model.config.hidden_dropout_prob == pytest.approx(0.1)
    ids = torch.randint(1, VOCAB, (2, 8))
    model.train()
    with torch.no_grad():
        a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)  # two train-mode forwards differ: the hidden dropout is still at work


def test_attention_loss_student_maps_carry_no_dropout(caplog):
    torch.manual_seed(0)
    noisy = build_student(_tiny_student(dropout=0.1), vocab_size=VOCAB, labels=LABELS, attn_implementation="eager")
    train, clean = _train_vs_recomputed_maps(noisy)
    assert attention_loss(train, clean, [(1, 1), (2, 2)], "kl").item() > 0.1  # the defect: noisy maps

    with caplog.at_level(logging.INFO, logger="xdt.models.student"):
        student = build_student(_tiny_student(dropout=0.1), vocab_size=VOCAB, labels=LABELS,
                                attn_implementation="eager", attention_dropout=0.0)
    assert sum("attention dropout 0" in r.getMessage() for r in caplog.records) == 1
    assert student.config.attention_probs_dropout_prob == 0.0
    train, clean = _train_vs_recomputed_maps(student)
    for a, b in zip(train, clean):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))  # rows still sum to 1
    assert attention_loss(train, clean, [(1, 1), (2, 2)], "kl").item() == pytest.approx(0.0, abs=1e-6)
    _assert_hidden_dropout_on(student)


def test_init_from_student_gets_attention_dropout_zero(tmp_path):
    torch.manual_seed(0)
    build_student(_tiny_student(dropout=0.1, embedding_size=8), vocab_size=VOCAB, labels=LABELS) \
        .save_pretrained(tmp_path)
    loaded = build_student(StudentConfig(init_from=str(tmp_path)), vocab_size=VOCAB, labels=LABELS,
                           attn_implementation="eager", attention_dropout=0.0)
    assert type(loaded).__name__ == "ElectraForTokenClassification"
    assert loaded.config.attention_probs_dropout_prob == 0.0
    assert all(m.dropout.p == 0.0 for m in loaded.modules() if type(m).__name__.endswith("SelfAttention"))
    train, clean = _train_vs_recomputed_maps(loaded)
    assert all(torch.equal(a, b) for a, b in zip(train, clean))
    _assert_hidden_dropout_on(loaded)
    kept = build_student(StudentConfig(init_from=str(tmp_path)), vocab_size=VOCAB, labels=LABELS)
    assert kept.config.attention_probs_dropout_prob == pytest.approx(0.1)  # no attention loss: left as saved


# --------------------------------------------------------------------------------------------- 7a: PCA init


def _embedding_matrix(rows: int, cols: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Well separated singular values (a unique top-E subspace) and, with `shift`, a far-from-zero mean."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, cols)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    s = 2.0 ** -np.arange(cols, dtype=np.float64) * 10
    return torch.from_numpy((u * s) @ v.T + shift * rng.normal(size=cols)).float()


def test_pca_embedding_init_is_the_centred_projection():
    assert load_config(None, ["student.embedding_init=pca"]).student.embedding_init == "pca"
    w = _embedding_matrix(VOCAB, 24, shift=0.5)
    e = 6

    def student(init):
        return build_student(_tiny_student(embedding_init=init, embedding_size=e), vocab_size=VOCAB,
                             labels=LABELS, teacher_word_embeddings=w).get_input_embeddings().weight.detach()

    pca, svd = student("pca"), student("svd")
    assert pca.shape == (VOCAB, e) and not torch.allclose(pca, svd, atol=1e-3)
    # the projection onto the top-E principal components, by torch.linalg.svd of the centred matrix
    centred = w.double() - w.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[:e].T
    basis = basis * torch.sign(basis[basis.abs().argmax(0), torch.arange(e)])  # xdt's sign convention
    expected = (centred @ basis).float()
    torch.testing.assert_close(pca, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pca.double().T @ pca.double(), torch.diag(s[:e] ** 2), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(pca.double().mean(0), torch.zeros(e, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(svd, svd_compress(w, e))  # svd stays uncentred
    with pytest.raises(ConfigError, match=r"^student\.embedding_init: 'pca' needs the teacher's word embeddings"):
        build_student(_tiny_student(embedding_init="pca"), vocab_size=VOCAB, labels=LABELS)


# --------------------------------------------------------------------------------------------- 7d: padded vocab


@pytest.mark.parametrize("init", ["svd", "pca"])
def test_svd_init_takes_the_first_rows_of_a_padded_teacher_matrix(init, caplog):
    padded = _embedding_matrix(VOCAB + 4, 24, shift=0.3)  # e.g. a vocabulary padded to a multiple of 8
    padded[VOCAB:] = 100.0  # padding rows that would dominate the SVD if they were used
    with caplog.at_level(logging.INFO, logger="xdt.models.student"):
        got = build_student(_tiny_student(embedding_init=init, embedding_size=6), vocab_size=VOCAB,
                            labels=LABELS, teacher_word_embeddings=padded).get_input_embeddings().weight.detach()
    torch.testing.assert_close(got, svd_compress(padded[:VOCAB], 6, center=init == "pca"))
    assert any(f"{VOCAB + 4} word embeddings" in r.getMessage() and f"first {VOCAB} rows" in r.getMessage()
               for r in caplog.records)
    teacher = build_teacher(TeacherConfig(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32),
                            vocab_size=VOCAB + 4, labels=LABELS)
    build_student(_tiny_student(embedding_init=init), vocab_size=VOCAB, labels=LABELS, teacher=teacher)
    with pytest.raises(ConfigError, match=rf"^student\.embedding_init: '{init}' needs the teacher's vocabulary; "
                                          rf"the teacher has {VOCAB - 1} word embeddings, fewer than"):
        build_student(_tiny_student(embedding_init=init), vocab_size=VOCAB, labels=LABELS,
                      teacher_word_embeddings=padded[:VOCAB - 1])


# --------------------------------------------------------------------------------------------- 7b: shipped configs

SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))
SUBCOMMANDS = "run|teacher|distill|export|eval|transfer|data|slurm"


def _comment_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[1] for line in path.read_text(encoding="utf-8").splitlines()
            if line.lstrip().startswith("#")]


def _commands(path: Path) -> list[str]:
    """`xdt ...` command lines written in a config's comments: in backticks, or to the end of the line with
    backslash continuations."""
    lines, found = _comment_lines(path), []
    for i, line in enumerate(lines):
        quoted = re.findall(rf"`(xdt (?:{SUBCOMMANDS})\b[^`]*)`", line)
        if quoted:
            found += quoted
            continue
        m = re.search(rf"(?:^|\s)(xdt (?:{SUBCOMMANDS})\b.*)$", line)
        if m:
            cmd, j = m.group(1).rstrip(), i
            while cmd.endswith("\\"):
                j += 1
                cmd = cmd[:-1] + " " + lines[j].strip()
            found.append(cmd)
    return found


def _python_calls(path: Path) -> list[tuple[str, str]]:
    """`xdt.module.function(args)` calls written in a config's comments."""
    text = " ".join(line.strip() for line in _comment_lines(path))
    return re.findall(r"(xdt(?:\.\w+)+)\(([^()]*)\)", text)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_and_the_commands_in_its_comments_parse(path: Path):
    from xdt.cli import QUICKSTART, build_parser
    from xdt.transfer.config import load_transfer_config

    if path.parent.name == "transfer":
        load_transfer_config(path, check=False)
    else:
        load_config(path, check=False)  # paths are the user's to fill in
    for command in _commands(path):
        argv = shlex.split(command)[1:]
        args = build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown option
        if args.command in ("run", "teacher", "distill") or (args.command == "slurm" and hasattr(args, "config")):
            config, overrides = args.config, list(args.overrides)
            if config and "=" in config:  # `xdt run key=value`
                config, overrides = None, [config, *overrides]
            load_config(ROOT / (config or QUICKSTART), overrides, check=False)  # every key must exist
        elif args.command == "transfer" and args.transfer_command == "build":
            load_transfer_config(ROOT / args.config, list(args.overrides) + list(getattr(args, "late_overrides", [])),
                                 check=False)
    for name, arglist in _python_calls(path):
        module, func = name.rsplit(".", 1)
        target = getattr(importlib.import_module(module), func)
        call = ast.parse(f"f({arglist})", mode="eval").body
        inspect.signature(target).bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})


def test_the_comment_scanner_finds_the_commands():
    by_name = {p.relative_to(ROOT).as_posix(): _commands(p) for p in SHIPPED}
    assert sum(map(len, by_name.values())) >= 7
    mnli = by_name["configs/mnli-task-agnostic.yaml"]
    assert len(mnli) == 1 and mnli[0].startswith("xdt teacher train configs/mnli-task-agnostic.yaml teacher.model=")
    assert "output.dir=" in mnli[0]  # the continuation line was joined
    assert [n for n, _ in _python_calls(ROOT / "configs/mnli-task-agnostic.yaml")] == [
        "xdt.recipes.teacher.train_teacher_step"]
    assert any(c.startswith("xdt slurm submit") for c in by_name["configs/wikiann41-l6-h384.yaml"])
