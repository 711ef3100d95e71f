"""Deployment: vocabulary trimming on the real mBERT vocabulary and WikiAnn, ONNX export with parity and int8,
`xdt eval` of an ONNX folder, and the refusals (exit 2, one line, nothing half-written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import MBERT, SHARED_DATA, need
from xdt.cli import main
from xdt.data.sentence import WIKIANN_LABELS

XTREME = SHARED_DATA / "wikiann" / "xtreme"
NO_DEPLOY_EXTRA = "the deploy extra (onnx, onnxruntime, onnxscript: pip install 'xdt[deploy]') is not installed"
AF_HI_PIECES = 11232  # mBERT pieces used by train+dev+test of af and hi (counted once, like the issue's 55,541)


def label_maps() -> dict:
    return {"id2label": dict(enumerate(WIKIANN_LABELS)), "label2id": {x: i for i, x in enumerate(WIKIANN_LABELS)}}


def save_tiny(folder: Path, tokenizer, vocab_size: int, *, factorized: bool = False, seed: int = 0,
              sequence: bool = False) -> Path:
    """A random tiny token classifier whose logits are well apart (classifier scaled), saved with `tokenizer`."""
    import transformers

    torch.manual_seed(seed)
    shape = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128, **label_maps())
    if factorized:
        config = transformers.ElectraConfig(embedding_size=16, **shape)
        cls = transformers.ElectraForSequenceClassification if sequence else transformers.ElectraForTokenClassification
    else:
        config = transformers.BertConfig(**shape)
        cls = transformers.BertForSequenceClassification if sequence else transformers.BertForTokenClassification
    model = cls(config).eval()
    if not sequence:
        with torch.no_grad():
            model.classifier.weight.mul_(30)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mock(tmp_path_factory) -> dict[str, Path]:
    """Mock WikiAnn data in two scripts, its WordPiece vocabulary and a tiny factorized student on it."""
    from transformers import AutoTokenizer

    from xdt.config import MockDataConfig
    from xdt.data.mock import write_mock_tokenizer, write_mock_wikiann

    root = tmp_path_factory.mktemp("deploy")
    data = write_mock_wikiann(root / "data", MockDataConfig(langs=["en", "ru"], train_sentences=30,
                                                           dev_sentences=5, test_sentences=60))
    tok_dir = write_mock_tokenizer(root / "tok", data, 400)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    student = save_tiny(root / "student", tok, len(tok), factorized=True)
    return {"root": root, "data": data, "student": student}


@pytest.fixture(scope="module")
def onnx_folders(mock) -> dict[str, Path]:
    pytest.importorskip("onnxruntime", reason=NO_DEPLOY_EXTRA)
    root = mock["root"]
    assert main(["export", str(mock["student"]), "--format", "onnx", "--data", str(mock["data"]),
                 "--out", str(root / "onnx")]) == 0
    assert main(["export", str(mock["student"]), "--format", "onnx", "--quantize", "int8",
                 "--int8-min-agreement", "0.5", "--out", str(root / "int8")]) == 0
    return {"fp32": root / "onnx", "int8": root / "int8"}


def run_eval(model: Path, data: Path, out: Path, **kw) -> dict:
    from xdt.eval.options import EvalOptions
    from xdt.eval.run import evaluate

    return evaluate(EvalOptions(model=str(model), data=[str(data)], out=str(out), progress=False, **kw))


def assert_same_predictions(a: dict, a_out: Path, b: dict, b_out: Path) -> None:
    assert a["languages"].keys() == b["languages"].keys()
    for lang in a["languages"]:
        assert a["languages"][lang]["f1"] == b["languages"][lang]["f1"], lang
        assert a["languages"][lang]["words"] == b["languages"][lang]["words"], lang
        assert (a_out / "predictions" / f"{lang}.conll").read_text() == \
            (b_out / "predictions" / f"{lang}.conll").read_text(), lang
    assert a["mean_f1"] == b["mean_f1"]


def predicted_tags(out: Path, lang: str) -> set[str]:
    lines = (out / "predictions" / f"{lang}.conll").read_text(encoding="utf-8").splitlines()
    return {line.split("\t")[2] for line in lines if line.strip()}


# ------------------------------------------------------------------------------------------------ trimming


@pytest.mark.data
@pytest.mark.slow
def test_trim_real_mbert_vocabulary_on_real_wikiann(tmp_path, capsys):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    need(XTREME)
    tok = AutoTokenizer.from_pretrained(str(need(MBERT)))
    model = save_tiny(tmp_path / "model", tok, len(tok))
    out = tmp_path / "trimmed"
    assert main(["trim", str(model), "--data", str(XTREME), "--langs", "af,hi", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pieces_before"] == 119547
    assert report["pieces_used"] == AF_HI_PIECES
    assert report["floor_scripts"] == ["COMMON", "DEVANAGARI", "LATIN"]
    assert AF_HI_PIECES < report["pieces_kept"] == report["embedding_rows_after"] < 119547 // 8
    assert report["splits"] == ["train", "dev", "test"]
    assert report["languages"] == {"af": {"sentences": 7000, "words": 77264}, "hi": {"sentences": 7000, "words": 41256}}
    assert report["corpus"]["words"] == 77264 + 41256
    assert report["corpus"]["words_changed"] == 0
    assert report["corpus"]["unk_words_after"] == report["corpus"]["unk_words_before"]
    assert report["parity"]["max_abs_logit_diff"] == 0.0 and report["parity"]["argmax_agreement"] == 1.0
    assert report["size_ratio"] > 4
    assert json.loads((out / "trim.json").read_text())["pieces_kept"] == report["pieces_kept"]

    # a plain transformers folder: the tokenizer gives the new ids, the specials keep their pieces
    new_tok = AutoTokenizer.from_pretrained(str(out))
    trimmed = AutoModelForTokenClassification.from_pretrained(str(out))
    assert len(new_tok) == report["pieces_kept"] == trimmed.config.vocab_size
    assert trimmed.get_input_embeddings().weight.shape == (report["pieces_kept"], 32)
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert new_tok.convert_ids_to_tokens(new_tok.convert_tokens_to_ids(special)) == special
    assert trimmed.config.pad_token_id == new_tok.pad_token_id == 0
    word = "Johannesburg"  # pieces of a corpus word map one to one
    assert new_tok.tokenize(word) == tok.tokenize(word)
    # a word of a script the corpus does not serve falls back to [UNK], as an unseen word does
    assert tok.tokenize("서울특별시") != ["[UNK]"] and new_tok.tokenize("서울특별시") == ["[UNK]"]

    # identical predictions and F1 per language on the languages it was trimmed for (through `xdt eval`)
    a = run_eval(model, XTREME, tmp_path / "eval_a", langs=["af", "hi"], max_sentences=300)
    b = run_eval(out, XTREME, tmp_path / "eval_b", langs=["af", "hi"], max_sentences=300)
    assert_same_predictions(a, tmp_path / "eval_a", b, tmp_path / "eval_b")
    assert len(predicted_tags(tmp_path / "eval_a", "af")) > 2  # the comparison is not all-O against all-O


# ------------------------------------------------------------------------------------------------ ONNX


@pytest.mark.slow
def test_onnx_export_parity_dynamic_shapes_and_int8(mock, onnx_folders):
    from transformers import AutoModelForTokenClassification

    from xdt.deploy.onnx_predictor import OnnxTokenClassifier

    fp32 = json.loads((onnx_folders["fp32"] / "onnx.json").read_text())
    assert fp32["quantization"] is None and fp32["opset"] == 18
    parity = fp32["parity"]["fp32"]
    assert parity["sentences"] == 16 + 2 * 32  # built-in sentences + the first 32 test sentences per language
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["argmax_agreement"] == 1.0
    assert sorted(p.name for p in onnx_folders["fp32"].iterdir()) == \
        ["config.json", "model.onnx", "onnx.json", "tokenizer.json", "tokenizer_config.json"]

    reference = AutoModelForTokenClassification.from_pretrained(str(mock["student"])).eval()
    predictor = OnnxTokenClassifier(onnx_folders["fp32"])
    rng = np.random.default_rng(0)
    for batch, length in ((3, 50), (1, 2), (5, 128)):  # batch and length are dynamic
        ids = torch.from_numpy(rng.integers(5, reference.config.vocab_size, (batch, length)))
        mask = torch.ones_like(ids)
        mask[0, length // 2 + 1:] = 0
        with torch.no_grad():
            want = reference(input_ids=ids, attention_mask=mask).logits
        got = predictor(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        assert got.shape == want.shape
        assert float((got - want).abs()[real].max()) < 1e-4

    int8 = json.loads((onnx_folders["int8"] / "onnx.json").read_text())
    assert int8["quantization"] == "int8"
    assert int8["parity"]["int8"]["argmax_agreement"] >= 0.5
    assert int8["bytes"] < fp32["bytes"]
    import onnx
    from onnx import numpy_helper

    def weight_bytes(graph) -> int:
        return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)

    graphs = {k: onnx.load(str(onnx_folders[k] / "model.onnx")).graph for k in ("fp32", "int8")}
    assert weight_bytes(graphs["int8"]) < weight_bytes(graphs["fp32"]) / 2  # int8 weights, embeddings included
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in graphs["int8"].node}


@pytest.mark.slow
def test_eval_of_onnx_folder_equals_eval_of_its_parent(mock, onnx_folders, tmp_path):
    parent = run_eval(mock["student"], mock["data"], tmp_path / "pt")
    onnx = run_eval(onnx_folders["fp32"], mock["data"], tmp_path / "onnx", compare=str(tmp_path / "pt" / "report.json"))
    assert_same_predictions(parent, tmp_path / "pt", onnx, tmp_path / "onnx")
    assert len(predicted_tags(tmp_path / "pt", "en")) > 2
    assert onnx["model"]["architecture"].startswith("ONNX fp32")
    assert onnx["model"]["parameters"] == parent["model"]["parameters"]
    assert onnx["teacher"]["languages"]["en"]["f1"] == parent["languages"]["en"]["f1"]  # --compare works
    int8 = run_eval(onnx_folders["int8"], mock["data"], tmp_path / "int8")
    assert int8["model"]["architecture"].startswith("ONNX int8")
    assert int8["languages"].keys() == parent["languages"].keys()


# ------------------------------------------------------------------------------------------------ bad input


def refused(capsys, argv: list[str], expected: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xdt: error: "), err
    assert expected in err, err


def leftovers(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def test_bad_input_is_refused_in_one_line_and_leaves_nothing(mock, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime", reason=NO_DEPLOY_EXTRA)
    from transformers import AutoTokenizer

    import xdt.deploy.onnx_export as onnx_export

    student, data = str(mock["student"]), str(mock["data"])
    tok = AutoTokenizer.from_pretrained(student)

    # not a token-classification model
    seq = save_tiny(tmp_path / "seq", tok, len(tok), sequence=True)
    refused(capsys, ["export", str(seq), "--format", "onnx", "--out", str(tmp_path / "o1")],
            "has no *ForTokenClassification model")
    refused(capsys, ["trim", str(seq), "--data", data, "--out", str(tmp_path / "o1")],
            "has no *ForTokenClassification model")
    assert not leftovers(tmp_path, "o1")

    # a corpus in no readable format
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    refused(capsys, ["trim", student, "--data", str(tmp_path / "blob.bin"), "--out", str(tmp_path / "o2")],
            "binary file")
    refused(capsys, ["trim", student, "--data", data, "--langs", "xx", "--out", str(tmp_path / "o2")],
            "no sentences read for languages xx")
    assert not leftovers(tmp_path, "o2")

    # a trimmed model that would lose a special token: the tokenizer has one the model has no embedding row for
    tok.add_special_tokens({"additional_special_tokens": ["[ENT]"]})
    lossy = save_tiny(tmp_path / "lossy", tok, len(tok) - 1)
    refused(capsys, ["trim", str(lossy), "--data", data, "--out", str(tmp_path / "o3")],
            "special token [ENT]")
    assert not leftovers(tmp_path, "o3")

    # an ONNX export whose parity check fails (an exporter that got the weights wrong): refused, nothing written
    real_export = onnx_export.export_graph

    def drifting_export(model, path, opset=onnx_export.OPSET):
        with torch.no_grad():
            model.classifier.bias.add_(0.01)
            real_export(model, path, opset)
            model.classifier.bias.sub_(0.01)

    monkeypatch.setattr(onnx_export, "export_graph", drifting_export)
    refused(capsys, ["export", student, "--format", "onnx", "--out", str(tmp_path / "o4")],
            "ONNX parity check failed: max |logit diff|")
    monkeypatch.undo()
    assert not leftovers(tmp_path, "o4")

    # an output folder that is not empty: untouched
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    refused(capsys, ["export", student, "--format", "onnx", "--out", str(tmp_path / "full")],
            "exists and is not empty")
    refused(capsys, ["trim", student, "--data", data, "--out", str(tmp_path / "full")], "exists and is not empty")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"

    # int8 belongs to the ONNX format
    refused(capsys, ["export", student, "--quantize", "int8", "--out", str(tmp_path / "o5")], "--format onnx")
    assert not leftovers(tmp_path, "o5")
