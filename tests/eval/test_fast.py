"""xdt.eval.fast_bert: the leaner CPU forward `xdt eval` runs for plain BERT models gives the HF forward's labels on
every word of real WikiAnn sentences (random weights: near-tied logits, the hardest case for label identity), its
logits within float rounding, the pruned last layer the same rows as the full one; other models keep HF's forward.
xdt.eval.bf16_bert (`--precision auto` on a CPU with native bf16, or bf16): bf16 matmuls with the fp32 re-check give
the fp32 labels on every word, while bf16 alone (threshold 0) does not; threshold inf re-checks every window; the
audit of re-checked words raises a threshold calibrated too low.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from xdt.data.align import Aligner  # noqa: E402
from xdt.eval.data import load_eval_data  # noqa: E402
from xdt.errors import XdtError  # noqa: E402
from xdt.eval.bf16_bert import (  # noqa: E402
    CALIBRATE_FROM,
    CALIBRATION_WINDOWS,
    Bf16RecheckBertTokenClassifier,
    cpu_has_native_bf16,
)
from xdt.eval.fast_bert import FastBertTokenClassifier, supports  # noqa: E402
from xdt.eval.model import load_model  # noqa: E402
from xdt.eval.predict import padded_batches, predict_label_ids  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
XTREME = DATA / "wikiann" / "xtreme"
VOCAB = DATA / "vocab" / "bert-base-multilingual-cased"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]

pytestmark = pytest.mark.skipif(not (XTREME.is_dir() and VOCAB.is_dir()),
                                reason=f"WikiAnn data and the mBERT vocabulary not found under {DATA}")


def save(model, folder: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(VOCAB)).save_pretrained(folder)
    return folder


def config(cls, **kw):
    kw.update(vocab_size=119547, id2label=dict(enumerate(LABELS)), label2id={x: i for i, x in enumerate(LABELS)})
    return cls(**kw)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    cfg = config(BertConfig, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return save(BertForTokenClassification(cfg), tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def sentences():
    data = load_eval_data([str(XTREME)], "test", ["de", "ar", "hi", "fi", "zh"], max_sentences=150)
    return [s for d in data.languages.values() for s in d.sentences]


def test_same_labels_on_every_word_and_logits_within_rounding(bert_folder, sentences):
    torch.set_num_threads(1)
    fast = load_model(bert_folder, device="cpu", dtype="fp32", precision="fp32")
    plain = load_model(bert_folder, device="cpu", dtype="fp32", fast=False)
    assert isinstance(fast.model, FastBertTokenClassifier) and fast.precision == "fp32"
    assert type(plain.model).__name__ == "BertForTokenClassification"
    assert fast.architecture == plain.architecture and fast.num_parameters == plain.num_parameters
    features = Aligner(fast.tokenizer, 32).align(sentences)  # 32: long sentences split into windows too
    assert features.num_windows > len(sentences)
    for batch_size in (1, 7, 64):  # padding differs with the batch: the labels must not
        got = predict_label_ids(fast.model, features, batch_size, 0, torch.device("cpu"))
        want = predict_label_ids(plain.model, features, batch_size, 0, torch.device("cpu"))
        assert len(got) == sum(len(s.words) for s in sentences)
        np.testing.assert_array_equal(got, want)

    _, ids, mask, words = next(padded_batches(features, 16, 0))
    ids, mask, rows = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(words >= 0)
    full = fast.model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        reference = plain.model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert full.shape == reference.shape
    assert (full[real] - reference[real]).abs().max() < 1e-4
    only = fast.model(input_ids=ids, attention_mask=mask, rows=rows).logits  # the last layer at the slots alone
    assert only.shape == (int(rows.sum()), len(LABELS))
    assert (only - full[rows]).abs().max() < 1e-4


def test_other_models_keep_the_hf_forward(tmp_path, sentences):
    from transformers import BertConfig, BertForTokenClassification, DistilBertConfig, DistilBertForTokenClassification

    torch.manual_seed(0)
    distil = save(DistilBertForTokenClassification(config(DistilBertConfig, dim=32, n_layers=1, n_heads=2,
                                                          hidden_dim=64)), tmp_path / "distil")
    loaded = load_model(distil, device="cpu", dtype="fp32")
    assert not isinstance(loaded.model, (FastBertTokenClassifier, Bf16RecheckBertTokenClassifier))
    assert loaded.precision == "fp32"
    with pytest.raises(XdtError, match="--precision bf16: only a plain BERT"):
        load_model(distil, device="cpu", dtype="fp32", precision="bf16")
    features = Aligner(loaded.tokenizer, 128).align(sentences[:50])
    assert (predict_label_ids(loaded.model, features, 8, 0, torch.device("cpu")) >= 0).all()

    def bert(**kw):
        return BertForTokenClassification(config(BertConfig, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=64, **kw)).eval()

    assert supports(bert())
    assert not supports(bert().to(torch.bfloat16))  # bf16 keeps HF's forward (and its own rounding)
    assert not supports(bert(hidden_act="gelu_new"))  # tanh GELU: not the exact one this forward computes
    assert not supports(bert(position_embedding_type="relative_key"))
    assert not supports(bert().train())


need_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(),
                               reason="this CPU has no native bf16 dot products (avx512_bf16/amx_bf16): "
                                      "`--precision auto` runs fp32 here and bf16 would be emulated")


@pytest.fixture(scope="module")
def deeper_folder(tmp_path_factory) -> Path:
    """Random l4-h128: near-tied logits, where bf16 alone flips a few labels of these sentences."""
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(3)  # seed 1: bf16 alone flips none of these words since attention runs as batched products
    cfg = config(BertConfig, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
    return save(BertForTokenClassification(cfg), tmp_path_factory.mktemp("deeper"))


@need_bf16
def test_bf16_with_recheck_gives_the_fp32_labels(deeper_folder, sentences):
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    exact = load_model(deeper_folder, device="cpu", dtype="fp32", precision="fp32")
    auto = load_model(deeper_folder, device="cpu", dtype="fp32")  # `xdt eval`'s default on this CPU
    assert isinstance(auto.model, Bf16RecheckBertTokenClassifier) and auto.precision == "bf16+fp32-recheck"
    features = Aligner(exact.tokenizer, 64).align(sentences)
    want = predict_label_ids(exact.model, features, 32, 0, cpu)

    got = predict_label_ids(auto.model, features, 32, 0, cpu)
    stats = auto.model.stats
    np.testing.assert_array_equal(got, want)
    assert stats.threshold > 0 and stats.calibration_ratio > 0
    assert stats.calibration_windows == CALIBRATION_WINDOWS and stats.windows == features.num_windows
    assert 0 < stats.rechecked_windows < stats.windows  # selective: most windows keep their bf16 labels

    few = Aligner(exact.tokenizer, 64).align(sentences[:CALIBRATE_FROM // 2])  # too few windows to calibrate on
    first = load_model(deeper_folder, device="cpu", dtype="fp32").model
    np.testing.assert_array_equal(predict_label_ids(first, few, 32, 0, cpu),
                                  predict_label_ids(exact.model, few, 32, 0, cpu))
    assert first.needs_calibration and first.stats.fp32_windows == few.num_windows  # fp32 alone, still uncalibrated
    np.testing.assert_array_equal(predict_label_ids(first, features, 32, 0, cpu), want)  # calibrates on this call
    assert not first.needs_calibration and first.stats.calibration_windows == CALIBRATION_WINDOWS

    alone = Bf16RecheckBertTokenClassifier(exact.model.hf, threshold=0.0)  # no re-check
    flipped = predict_label_ids(alone, features, 32, 0, cpu) != want
    assert alone.stats.rechecked_windows == 0
    assert flipped.sum() > 0  # bf16 alone mislabels some words: the re-check is what makes them equal
    assert stats.labels_changed == flipped.sum()  # the re-check changed exactly the words bf16 got wrong

    every = Bf16RecheckBertTokenClassifier(exact.model.hf, threshold=float("inf"))
    np.testing.assert_array_equal(predict_label_ids(every, features, 32, 0, cpu), want)
    assert every.stats.rechecked_windows == every.stats.windows == features.num_windows


@need_bf16
def test_the_audit_raises_a_threshold_set_too_low(deeper_folder, sentences):
    """A calibration that read the error low (here: a threshold 20x below the one measured) is caught by the audit of
    the re-checked words: the threshold rises, every word is judged again, and the run re-checks exactly the windows
    a run at the raised threshold re-checks; labels stay fp32's."""
    from xdt.eval.bf16_bert import FLOOR, SAFETY

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    exact = load_model(deeper_folder, device="cpu", dtype="fp32", precision="fp32")
    features = Aligner(exact.tokenizer, 64).align(sentences)
    want = predict_label_ids(exact.model, features, 32, 0, cpu)
    measured = load_model(deeper_folder, device="cpu", dtype="fp32").model
    predict_label_ids(measured, features, 32, 0, cpu)
    low = measured.stats.calibration_ratio * SAFETY / 20

    fixed = Bf16RecheckBertTokenClassifier(exact.model.hf, threshold=low)  # a given threshold is never raised
    predict_label_ids(fixed, features, 32, 0, cpu)
    assert fixed.stats.threshold_raises == 0 and fixed.threshold == low and fixed.stats.rechecked_words > 0

    audited = Bf16RecheckBertTokenClassifier(exact.model.hf, threshold=low)
    audited.measured = True  # as if calibration had measured it
    np.testing.assert_array_equal(predict_label_ids(audited, features, 32, 0, cpu), want)
    stats = audited.stats
    assert stats.threshold_raises >= 1
    assert audited.threshold == pytest.approx(max(FLOOR, SAFETY * stats.audit_ratio))
    at_raised = Bf16RecheckBertTokenClassifier(exact.model.hf, threshold=audited.threshold)
    predict_label_ids(at_raised, features, 32, 0, cpu)
    assert stats.rechecked_windows == at_raised.stats.rechecked_windows > fixed.stats.rechecked_windows


@need_bf16
def test_precision_option_of_xdt_eval(deeper_folder, tmp_path):
    from xdt.cli import main as xdt_main

    reports = {}
    for precision in ("fp32", "auto"):
        out = tmp_path / precision
        assert xdt_main(["eval", "--model", str(deeper_folder), "--data", str(XTREME), "--langs", "de,ar",
                         "--max-sentences", "400", "--out", str(out), "--no-cache", "--no-progress",
                         "--threads", "1", "--precision", precision]) == 0
        reports[precision] = json.loads((out / "report.json").read_text())
        for lang in ("de", "ar"):
            reports[precision][lang] = (out / "predictions" / f"{lang}.conll").read_text()
    assert reports["fp32"]["timing"]["precision"] == "fp32" and "recheck" not in reports["fp32"]["timing"]
    assert reports["auto"]["timing"]["precision"] == "bf16+fp32-recheck"
    assert reports["auto"]["timing"]["recheck"]["words"] == reports["auto"]["timing"]["words"]
    assert reports["auto"]["timing"]["recheck"]["calibration_windows"] == CALIBRATION_WINDOWS  # bf16 did run
    for lang in ("de", "ar"):
        assert reports["auto"][lang] == reports["fp32"][lang]
