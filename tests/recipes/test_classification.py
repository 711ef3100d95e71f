"""Sequence classification on real text (Tatoeba): readers and their errors, pair featurization, batches whose
distillation mask is [CLS], a DeepSpeed-trained teacher well above chance that reloads with transformers, and a
student distilled from it (hidden on [CLS], logits, labels) whose losses fall."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import MBERT, ROOT, SHARED_DATA, need
from xdt.config import load_config
from xdt.data.align import IGNORE_INDEX
from xdt.data.classification import (ClassificationBatcher, Example, featurize, load_classification_data,
                                     read_classification, read_split, read_transfer, split_files)
from xdt.errors import DataError

TATOEBA = SHARED_DATA / "text" / "tatoeba"
LANGS = ("deu", "fra", "spa")  # language identification: three Latin-script languages


def _lines(lang: str, side: str | None = None) -> list[str]:
    path = need(TATOEBA / f"tatoeba.{lang}-eng.{side or lang}")
    return [line.strip().replace("\t", " ") for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """train.tsv (one file, with a header) and dev-{lang}.tsv for language id; pairs.tsv: deu/eng translation."""
    root = tmp_path_factory.mktemp("cls")
    text = {lang: _lines(lang) for lang in LANGS}
    train = ["sentence\tlabel"] + [f"{text[lang][i]}\t{lang}" for i in range(240) for lang in LANGS]
    (root / "train.tsv").write_text("\n".join(train) + "\n", encoding="utf-8")
    for lang in LANGS:
        (root / f"dev-{lang}.tsv").write_text("".join(f"{s}\t{lang}\n" for s in text[lang][800:860]),
                                              encoding="utf-8")
    deu, eng = _lines("deu"), _lines("deu", "eng")
    pairs = ["sentence1\tsentence2\tlabel"]
    for i in range(100):
        pairs.append(f"{deu[i]}\t{eng[i]}\ttranslation")
        pairs.append(f"{deu[i]}\t{eng[(i * 7 + 13) % 1000]}\tother")
    (root / "pairs.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return load_config(None, [
        "data.max_seq_length=48", "data.train_split=train", "data.dev_split=dev",
        # the mBERT vocabulary makes even a 32-wide model 3.8M parameters: Adam over them is most of a step
        "teacher.num_layers=1", "teacher.hidden_size=32", "teacher.num_heads=2", "teacher.intermediate_size=64",
        "teacher.epochs=6", "teacher.lr=5e-3", "teacher.batch_size=32", "teacher.early_stopping_patience=0",
        "student.num_layers=1", "student.hidden_size=16", "student.num_heads=2", "student.intermediate_size=32",
        "student.embedding_size=8", "distill.batch_size=32", "output.tensorboard=false", "eval.batch_size=64"])


# --------------------------------------------------------------------------------------------- reading


def test_reader_formats_header_and_language_naming(data_dir):
    single = read_classification(data_dir / "train.tsv")
    assert len(single) == 3 * 240 and single[0].label == "deu" and single[0].text_b is None
    assert single[0].lang == "und" and single[0].text_a == _lines("deu")[0]
    pairs = read_classification(data_dir / "pairs.tsv", "de", labels=["translation", "other"])
    assert len(pairs) == 200 and pairs[0] == Example("de", _lines("deu")[0], _lines("deu", "eng")[0], "translation")
    assert [lang for lang, _ in split_files(data_dir, "dev")] == list(LANGS)
    assert [p.name for _, p in split_files(data_dir, "train")] == ["train.tsv"]
    dev = read_split(data_dir, "dev", langs=["fra"], limit=5)
    assert [e.lang for e in dev] == ["fra"] * 5 and {e.label for e in dev} == {"fra"}


@pytest.mark.parametrize("content, message", [
    ("Hallo Welt\n", r"x\.tsv:1: 1 tab-separated field\(s\); expected text<TAB>label or "
                     r"sentence1<TAB>sentence2<TAB>label"),
    ("a\tb\tc\td\n", r"x\.tsv:1: 4 tab-separated field\(s\)"),
    ("Hallo\tdeu\nBonjour\tle monde\tfra\n",
     r"x\.tsv:2: 3 tab-separated field\(s\), but line 1 has 2 \(text<TAB>label\); every line of a file needs the "
     r"same format"),
    ("sentence1\tsentence2\tlabel\nHallo\tHello\tdeu\nHallo\t\tdeu\n",
     r"x\.tsv:3: empty sentence2 field \(field 2 of sentence1<TAB>sentence2<TAB>label\)"),
    ("Hallo\t\n", r"x\.tsv:1: empty label field"),
    ("Hallo\tdeu\nHola\tspa\n", r"x\.tsv:2: unknown label 'spa'; expected one of deu, fra"),
    ("sentence\tlabel\n\n", r"x\.tsv: no examples \(only a header or blank lines\)"),
    ("", r"x\.tsv: file is empty"),
])
def test_bad_files_name_file_line_and_what_was_expected(tmp_path, content, message):
    path = tmp_path / "x.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_classification(path, labels=["deu", "fra"])


def test_bad_bytes_and_missing_files(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"Hallo\tdeu\nCaf\xe9\tfra\n")
    with pytest.raises(DataError, match=r"x\.tsv:2: invalid UTF-8 \(byte 0xe9 at column 4\)"):
        read_classification(path)
    with pytest.raises(DataError, match=r"missing\.tsv: file not found"):
        read_classification(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match=r"no test\.tsv or test-\{lang\}\.tsv files for split 'test'"):
        split_files(tmp_path, "test")
    with pytest.raises(DataError, match=r"x\.tsv: expected a data folder holding dev\.tsv or dev-\{lang\}\.tsv"):
        split_files(path, "dev")
    (tmp_path / "dev-de.tsv").write_text("Hallo\tdeu\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no dev-\{lang\}\.tsv for language\(s\) fr; found de"):
        split_files(tmp_path, "dev", ["de", "fr"])


def test_unlabeled_transfer_lines(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("Hallo Welt\tHello world\nlabel\tlabel\n", encoding="utf-8")
    examples = read_classification(path, unlabeled=True)
    assert [e.label for e in examples] == [None, None] and examples[0].text_b == "Hello world"
    (tmp_path / "u-de.tsv").write_text("Hallo Welt\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"u-de\.tsv: holds single sentences, t\.tsv the other format"):
        read_transfer(tmp_path)


# --------------------------------------------------------------------------------------------- features


def test_pair_features_keep_cls_first_token_types_and_truncation(data_dir, mbert_tokenizer):
    tok = mbert_tokenizer
    pairs = read_classification(data_dir / "pairs.tsv")
    f = featurize(pairs, tok, 24, {"other": 0, "translation": 1})
    assert f.num_windows == 200 and f.window_lengths().max() <= 24
    assert list(f.labels[:4]) == [1, 0, 1, 0]
    for k in range(f.num_windows):
        lo, hi = f.offsets[k], f.offsets[k + 1]
        ids, types = f.input_ids[lo:hi], f.token_type_ids[lo:hi]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        first_sep = int(np.flatnonzero(ids == tok.sep_token_id)[0])
        assert (types[:first_sep + 1] == 0).all() and (types[first_sep + 1:] == 1).all() and types[-1] == 1
    expected = tok(pairs[0].text_a, pairs[0].text_b)["input_ids"]
    if len(expected) <= 24:
        assert list(f.input_ids[f.offsets[0]:f.offsets[1]]) == expected
    assert f.truncated.any() and not f.truncated.all()

    single = featurize(read_classification(data_dir / "train.tsv"), tok, 48, None)
    assert (single.token_type_ids == 0).all() and (single.labels == IGNORE_INDEX).all()


def test_batches_mask_cls_and_shard_deterministically(data_dir, mbert_tokenizer):
    f = featurize(read_classification(data_dir / "pairs.tsv"), mbert_tokenizer, 32, {"other": 0, "translation": 1})
    batcher = ClassificationBatcher(f, mbert_tokenizer.pad_token_id)
    batch = next(batcher.epoch(16, seed=3, epoch=0))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "word_index", "window"}
    b, t = batch["input_ids"].shape
    assert batch["labels"].shape == (b,) and torch.equal(batch["labels"], torch.from_numpy(f.labels[batch["window"]]))
    assert (batch["word_index"][:, 0] == 0).all() and (batch["word_index"][:, 1:] == -1).all()
    assert (batch["input_ids"][:, 0] == mbert_tokenizer.cls_token_id).all()
    assert ((batch["token_type_ids"] == 1) <= (batch["attention_mask"] == 1)).all()  # no token type on padding
    tokens = ClassificationBatcher(f, mbert_tokenizer.pad_token_id, positions="tokens").collate(batch["window"].numpy())
    assert torch.equal(tokens["word_index"] >= 0, tokens["attention_mask"] > 0)

    def order(seed, epoch, rank=0, world=1):
        return [x["window"].tolist() for x in batcher.epoch(16, seed, epoch, rank=rank, world=world)]

    assert order(3, 0) == order(3, 0) and order(3, 0) != order(3, 1)
    shards = [order(3, 0, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == batcher.num_batches(16, 2)
    seen = [w for shard in shards for batch_ in shard for w in batch_]
    assert len(seen) == len(set(seen))


def test_run_data_with_a_pair_transfer_set(data_dir, mbert_tokenizer, tmp_path):
    pairs = (data_dir / "pairs.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train-de.tsv").write_text("\n".join(pairs[:151]) + "\n", encoding="utf-8")
    (tmp_path / "dev-de.tsv").write_text("\n".join(pairs[151:]) + "\n", encoding="utf-8")
    deu, eng = _lines("deu"), _lines("deu", "eng")
    transfer = tmp_path / "transfer-de.tsv"
    transfer.write_text("".join(f"{deu[i]}\t{eng[i]}\n" for i in range(500, 540)), encoding="utf-8")
    run = load_config(None, ["data.max_seq_length=32", f"data.transfer={transfer}"])
    data = load_classification_data(run, tmp_path, mbert_tokenizer, labels=["translation", "other"])
    assert data.labels == ["translation", "other"] and list(data.dev) == ["de"]
    assert data.train.features.num_windows == 150 and data.dev["de"].features.num_windows == 50
    assert data.transfer.features.num_windows == 40 and (data.transfer.features.labels == IGNORE_INDEX).all()
    assert data.transfer.examples[0] == Example("de", deu[500], eng[500], None)
    assert (data.transfer.features.token_type_ids == 1).any()
    own = load_classification_data(load_config(None, ["data.max_seq_length=32"]), tmp_path, mbert_tokenizer)
    assert own.labels == ["other", "translation"]  # sorted when not given
    assert own.transfer.features.num_windows == 150 and (own.transfer.features.labels == IGNORE_INDEX).all()


def test_shipped_task_agnostic_config_parses():
    cfg = load_config(ROOT / "configs" / "mnli-task-agnostic.yaml", check=False)
    assert [s.name for s in cfg.stages] == ["representations", "logits", "labels"]
    assert cfg.stages[0].losses == {"hidden": 1.0} and cfg.student.hidden_size == 384


# --------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def lang_id(cfg, data_dir, mbert_tokenizer):
    return load_classification_data(cfg, data_dir, mbert_tokenizer)


@pytest.fixture(scope="module")
def teacher_run(cfg, lang_id, tmp_path_factory):
    from xdt.recipes.setup import loop_kwargs
    from xdt.recipes.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    return train_teacher(cfg, lang_id, out, task="sequence", **loop_kwargs(cfg, lang_id)), out


@pytest.mark.slow
@pytest.mark.distributed
def test_teacher_learns_language_id_and_reloads_with_transformers(cfg, lang_id, teacher_run):
    from transformers import AutoModelForSequenceClassification

    from xdt.eval.classify import dev_accuracy, predict_classes

    result, out = teacher_run
    assert lang_id.labels == list(LANGS) and sorted(lang_id.dev) == list(LANGS)
    assert result.best_dev_f1 > 80.0, f"dev accuracy {result.best_dev_f1:.1f} (chance 33.3)"  # accuracy here
    model = AutoModelForSequenceClassification.from_pretrained(result.path)
    assert model.config.id2label == dict(enumerate(LANGS))
    seen = set()
    model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    again = dev_accuracy(model, lang_id.dev, len(LANGS), lang_id.tokenizer.pad_token_id)
    assert again.accuracy == pytest.approx(result.best_dev_f1)
    assert 0 < again.macro_f1 <= 100
    assert set(again.per_language) == set(LANGS) and "token_type_ids" in seen
    pred = predict_classes(model, lang_id.dev["fra"].features, 16, lang_id.tokenizer.pad_token_id)
    assert (pred == LANGS.index("fra")).mean() > 0.5


@pytest.mark.slow
@pytest.mark.distributed
def test_student_distilled_on_cls_has_falling_losses(cfg, lang_id, teacher_run, tmp_path):
    from xdt.engine.metrics import read_metrics
    from xdt.eval.classify import load_classifier
    from xdt.models.student import build_student
    from xdt.recipes.distill import distill
    from xdt.recipes.setup import loop_kwargs

    result, _ = teacher_run
    run_cfg = load_config(None, [
        *(f"student.{k}={v}" for k, v in vars(cfg.student).items() if v is not None),
        "distill.strategy=null", "distill.batch_size=32", "output.tensorboard=false",
        "stages=[{name: representations, data: transfer, losses: {hidden: 1.0}, steps: 20, lr: 1e-2},"
        " {name: logits, data: transfer, losses: {logits: 1.0}, steps: 80, lr: 1e-2},"
        " {name: labels, data: labeled, losses: {labels: 1.0}, steps: 60, lr: 2e-3}]"])
    teacher = load_classifier(result.path, lang_id.labels)
    torch.manual_seed(0)
    student = build_student(run_cfg.student, vocab_size=len(lang_id.tokenizer),
                            labels=lang_id.labels, task="sequence", teacher=teacher,
                            pad_token_id=lang_id.tokenizer.pad_token_id)
    seen = defaultdict(set)
    for who, model in (("teacher", teacher), ("student", student)):
        model.register_forward_pre_hook(lambda m, a, kw, who=who: seen[who].update(kw), with_kwargs=True)

    out = distill(run_cfg, lang_id, teacher, student, tmp_path, **loop_kwargs(run_cfg, lang_id))
    assert "token_type_ids" in seen["teacher"] and "token_type_ids" in seen["student"]
    assert [h["name"] for h in out.history] == ["representations", "logits", "labels"]
    per_stage = defaultdict(list)
    for record in read_metrics(tmp_path / "distill.jsonl"):
        if "distill/loss" in record:
            per_stage[int(record["distill/stage"])].append(record["distill/loss"])
    for stage, values in per_stage.items():
        first, last = statistics.mean(values[:3]), statistics.mean(values[-3:])
        assert last < first, f"stage {stage}: loss {first:.4f} -> {last:.4f}"
    assert "dev_f1" not in out.history[0]  # the representation stage does not train the classifier
    assert max(h["dev_f1"] for h in out.history[1:]) == out.best_dev_f1  # mean dev accuracy
    assert out.best_dev_f1 > 100 / 3, f"student dev accuracy {out.best_dev_f1:.1f} is not above chance"
    assert (out.path / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_xdt_run_sequence_task_end_to_end(cfg, data_dir, tmp_path, capsys):
    import json

    from xdt.recipes.run import run

    for lang in LANGS:
        (data_dir / f"test-{lang}.tsv").write_text("".join(f"{s}\t{lang}\n" for s in _lines(lang)[900:940]),
                                                   encoding="utf-8")
    run_cfg = load_config(None, [
        "data.task=sequence", f"data.path={data_dir}", f"tokenizer.path={need(MBERT)}", "data.max_seq_length=48",
        *(f"teacher.{k}={v}" for k, v in vars(cfg.teacher).items() if k != "model"),
        *(f"student.{k}={v}" for k, v in vars(cfg.student).items() if v is not None),
        "distill.strategy=null", "distill.batch_size=32", "output.tensorboard=false", f"output.dir={tmp_path}",
        "stages=[{name: logits, data: transfer, losses: {logits: 1.0}, steps: 40, lr: 1e-2},"
        " {name: labels, data: labeled, losses: {labels: 1.0}, steps: 30, lr: 2e-3}]"])
    summary = run(run_cfg)
    assert summary["teacher_mean_accuracy"] > 80 and summary["mean_accuracy"] > 100 / 3
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["split"] == "test" and report["languages"] == list(LANGS)
    assert "retention" in report and "mean" in capsys.readouterr().out
