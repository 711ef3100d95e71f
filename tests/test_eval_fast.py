"""xdt.eval.fast_bert: the leaner CPU forward `xdt eval` runs for plain BERT models gives the HF forward's labels on
every word of real WikiAnn sentences (random weights: near-tied logits, the hardest case for label identity), its
logits within float rounding, the pruned last layer the same rows as the full one; other models keep HF's forward.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from xdt.data.align import Aligner  # noqa: E402
from xdt.eval.data import load_eval_data  # noqa: E402
from xdt.eval.fast_bert import FastBertTokenClassifier, supports  # noqa: E402
from xdt.eval.model import load_model  # noqa: E402
from xdt.eval.predict import padded_batches, predict_label_ids  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
    fast = load_model(bert_folder, device="cpu", dtype="fp32")
    plain = load_model(bert_folder, device="cpu", dtype="fp32", fast=False)
    assert isinstance(fast.model, FastBertTokenClassifier)
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
    assert not isinstance(loaded.model, FastBertTokenClassifier)
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
