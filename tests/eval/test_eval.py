"""`xdt eval`: per-language WikiAnn scores, checked against seqeval on the predictions files and the raw data files.

Models are tiny and random (hidden 32, one layer) with the real mBERT vocabulary, so inference over every language
stays fast; their F1 is low but the checks are exact: report values equal seqeval recomputed from the predictions
files, and the words scored equal the words of the data files, counted here without xdt's readers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score  # noqa: E402
from seqeval.scheme import IOB2  # noqa: E402

from xdt.errors import XdtError  # noqa: E402
from xdt.cli import main as eval_main  # noqa: E402
from xdt.eval.merge import merge_reports  # noqa: E402
from xdt.eval.report import read_predictions  # noqa: E402
from xdt.eval.options import EvalOptions  # noqa: E402
from xdt.eval.run import evaluate  # noqa: E402
from xdt.eval.scoring import score  # noqa: E402
from xdt.eval.suites import default_reference, load_suite  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
XTREME = DATA / "wikiann" / "xtreme"
RAW = DATA / "wikiann" / "raw"
VOCAB = DATA / "vocab" / "bert-base-multilingual-cased"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
WIKIANN41 = ("af ar bg bn bs ca cs da de el en es et fa fi fr he hi hr hu id it lt lv mk ms nl no pl pt ro ru sk sl "
             "sq sv ta tl tr uk vi").split()

needs_data = pytest.mark.skipif(not (XTREME.is_dir() and RAW.is_dir() and VOCAB.is_dir()),
                                reason=f"real WikiAnn data and the mBERT vocabulary not found under {DATA}")


# --------------------------------------------------------------------------------------------- helpers


def file_languages() -> dict[str, tuple[Path, bool]]:
    """{lang: (test file, has lang: prefix)} for every language of the shared data, found by listing files."""
    out = {p.name[len("test-"):-len(".tsv")]: (p, False) for p in sorted(XTREME.glob("test-*.tsv"))}
    out.update({d.name: (d / "test", True) for d in sorted(RAW.iterdir()) if (d / "test").is_file()})
    return out


def read_file(path: Path, prefixed: bool, limit: int | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """Words and tags of a CoNLL-like file, parsed here independently of xdt's readers."""
    words: list[list[str]] = []
    tags: list[list[str]] = []
    cur_w: list[str] = []
    cur_t: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                if cur_w:
                    words.append(cur_w); tags.append(cur_t)
                    cur_w, cur_t = [], []
                    if limit is not None and len(words) == limit:
                        break
                continue
            token, tag = line.split("\t")
            cur_w.append(token.partition(":")[2] if prefixed else token)
            cur_t.append(tag.strip())
    if cur_w and (limit is None or len(words) < limit):
        words.append(cur_w); tags.append(cur_t)
    return words, tags


def save_with_tokenizer(model, folder: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(VOCAB)).save_pretrained(folder)
    return folder


def tiny_bert(folder: Path, labels: list[str], seed: int = 0) -> Path:
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=119547, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, id2label=dict(enumerate(labels)),
                     label2id={x: i for i, x in enumerate(labels)})
    return save_with_tokenizer(BertForTokenClassification(cfg), folder)


def options(model: Path, out: Path, **kw) -> EvalOptions:
    kw.setdefault("data", [str(XTREME)])
    kw.setdefault("progress", False)
    return EvalOptions(model=str(model), out=str(out), **kw)


def assert_matches_seqeval(out: Path, report: dict, key: str = "languages", pred_dir: str = "predictions") -> None:
    """Every per-language value of the report equals seqeval recomputed from OUT/<pred_dir>/<lang>.conll."""
    block = report if key == "languages" else report[key]
    all_gold, all_pred = [], []
    for lang, entry in block["languages"].items():
        words, gold, pred = read_predictions(out / pred_dir / f"{lang}.conll")
        assert entry["words"] == sum(map(len, words)) and entry["sentences"] == len(words)
        assert entry["f1"] == pytest.approx(100 * f1_score(gold, pred), abs=1e-9)
        assert entry["precision"] == pytest.approx(100 * precision_score(gold, pred), abs=1e-9)
        assert entry["recall"] == pytest.approx(100 * recall_score(gold, pred), abs=1e-9)
        assert entry["f1_strict"] == pytest.approx(100 * f1_score(gold, pred, mode="strict", scheme=IOB2), abs=1e-9)
        per_type = classification_report(gold, pred, output_dict=True, zero_division=0)
        for name, values in entry["entities"].items():
            if name in per_type:
                assert values["f1"] == pytest.approx(100 * per_type[name]["f1-score"], abs=1e-9)
                assert values["support"] == per_type[name]["support"]
        all_gold += gold
        all_pred += pred
    f1s = [e["f1"] for e in block["languages"].values()]
    assert block["mean_f1"] == pytest.approx(statistics.fmean(f1s), abs=1e-9)
    assert block["std_f1"] == pytest.approx(statistics.pstdev(f1s), abs=1e-9)
    assert block["micro_f1"] == pytest.approx(100 * f1_score(all_gold, all_pred), abs=1e-9)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine makes OpenMP spin-waits very slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    if not VOCAB.is_dir():
        pytest.skip(f"mBERT vocabulary not found at {VOCAB}")
    root = tmp_path_factory.mktemp("models")
    return {"bert": tiny_bert(root / "bert", LABELS)}


@pytest.fixture(scope="module")
def full_run(models, tmp_path_factory) -> tuple[Path, dict]:
    """wikiann41 over every language of the shared data (xtreme + raw), the first 150 test sentences of each."""
    if not (XTREME.is_dir() and RAW.is_dir()):
        pytest.skip(f"WikiAnn test files not found under {DATA / 'wikiann'}")
    out = tmp_path_factory.mktemp("full")
    report = evaluate(options(models["bert"], out, data=[str(XTREME), str(RAW)], suite="wikiann41",
                              allow_missing=True, max_sentences=150, batch_size=128))
    return out, report


# --------------------------------------------------------------------------------------------- suites, scoring


def test_wikiann41_suite_and_reference():
    suite = load_suite("wikiann41")
    assert list(suite.languages) == WIKIANN41
    assert (suite.split, suite.scheme) == ("test", "IOB2")
    ref = default_reference()
    for col in ("xtremedistil_student_f1", "mbert_joint_teacher_f1", "mbert_single_f1", "mmner_f1"):
        assert sorted(ref.columns[col]) == sorted(WIKIANN41)
    # Table 5 of the paper: student mean 88.64, teacher 91.86 (integers in Table 17 round these)
    assert statistics.fmean(ref.columns["xtremedistil_student_f1"].values()) == pytest.approx(88.64, abs=0.05)
    assert statistics.fmean(ref.columns["mbert_joint_teacher_f1"].values()) == pytest.approx(91.86, abs=0.1)


def test_unknown_suite_names_the_known_ones(tmp_path):
    with pytest.raises(XdtError, match=r"unknown suite 'wikiann40'.*wikiann41"):
        load_suite("wikiann40")
    bad = tmp_path / "s.yaml"
    bad.write_text("languages: [de, no]\n")
    with pytest.raises(XdtError, match=r"s.yaml: languages: .*quote `no`.*got \['de', False\]"):
        load_suite(str(bad))
    bad.write_text("languages: [de, 'no']\nscheme: BIO\n")
    with pytest.raises(XdtError, match=r"s.yaml: scheme: expected one of IOB2, IOE2, IOBES, got 'BIO'"):
        load_suite(str(bad))


def test_counts_reproduce_seqeval_both_modes():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-PER"], ["I-LOC", "I-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["O", "B-ORG", "O", "O", "B-PER"], ["I-LOC", "I-LOC", "B-ORG"]]
    s = score(gold, pred)
    assert s.total("default").prf()[2] == f1_score(gold, pred)
    assert s.total("strict").prf()[2] == f1_score(gold, pred, mode="strict", scheme=IOB2)
    assert s.total("default").prf()[2] != s.total("strict").prf()[2]  # the I- start is where the modes differ
    pooled = score(gold[:1], pred[:1]) + score(gold[1:], pred[1:])
    assert pooled.total("default").prf() == s.total("default").prf()


# --------------------------------------------------------------------------------------------- every language


@pytest.mark.slow
@needs_data
def test_report_equals_seqeval_on_prediction_files(full_run):
    out, report = full_run
    assert_matches_seqeval(out, report)
    for name in ("report.json", "per_language.csv", "report.md", "f1_per_language.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    keys = {"languages", "mean_f1", "std_f1", "micro_f1", "missing", "model", "data", "timing", "versions"}
    assert keys <= set(report)
    csv_lines = (out / "per_language.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(report["languages"])


@pytest.mark.slow
@needs_data
def test_every_word_of_every_language_is_scored_once(full_run):
    out, report = full_run
    files = file_languages()
    assert sorted(report["languages"]) == sorted(lang for lang in files if lang in WIKIANN41)
    assert report["missing"] == [lang for lang in WIKIANN41 if lang not in files]
    for lang, (path, prefixed) in files.items():
        words, tags = read_file(path, prefixed, limit=150)
        p_words, p_gold, _ = read_predictions(out / "predictions" / f"{lang}.conll")
        assert p_words == words, lang
        assert p_gold == tags, lang
        assert report["languages"][lang]["words"] == sum(map(len, words))
        assert report["languages"][lang]["files"] == [str(path)]


@pytest.mark.slow
@needs_data
def test_full_test_files_give_every_word_one_slot(models):
    """Over the whole test file of every language (no sentence cap): alignment gives exactly one prediction slot
    per word, the count `predict_label_ids` requires before it runs (it raises otherwise)."""
    from xdt.data.align import Aligner
    from xdt.data.tokenizer import load_tokenizer
    from xdt.eval.data import load_eval_data

    files = file_languages()
    data = load_eval_data([str(XTREME), str(RAW)], "test", sorted(files))
    assert data.missing == []
    aligner = Aligner(load_tokenizer(models["bert"]), 128)
    for lang, (path, prefixed) in files.items():
        words, _ = read_file(path, prefixed)
        sentences = data.languages[lang].sentences
        assert [list(s.words) for s in sentences] == words, lang
        features = aligner.align(sentences)
        assert features.aligned_words() == sum(map(len, words)), lang


@needs_data
def test_windows_score_every_word(models, tmp_path):
    """A window of 8 sub-words splits most sentences; still every word gets exactly one prediction."""
    report = evaluate(options(models["bert"], tmp_path, langs=["tl"], max_seq_length=8, max_sentences=200))
    words, _ = read_file(XTREME / "test-tl.tsv", False, limit=200)
    p_words, _, _ = read_predictions(tmp_path / "predictions" / "tl.conll")
    assert p_words == words
    assert_matches_seqeval(tmp_path, report)


# --------------------------------------------------------------------------------------------- other models


@needs_data
def test_models_not_made_by_xdt_with_other_label_orders(models, tmp_path):
    from transformers import (DistilBertConfig, DistilBertForTokenClassification, ElectraConfig,
                              ElectraForTokenClassification)

    electra_labels = list(reversed(LABELS))
    distil_labels = ["B-LOC", "O", "I-PER", "B-ORG", "I-LOC", "B-PER", "I-ORG"]
    torch.manual_seed(1)
    electra = ElectraForTokenClassification(ElectraConfig(
        vocab_size=119547, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, id2label=dict(enumerate(electra_labels)),
        label2id={x: i for i, x in enumerate(electra_labels)}))
    distil = DistilBertForTokenClassification(DistilBertConfig(
        vocab_size=119547, dim=32, n_layers=1, n_heads=2, hidden_dim=64, id2label=dict(enumerate(distil_labels)),
        label2id={x: i for i, x in enumerate(distil_labels)}))
    e_dir = save_with_tokenizer(electra, tmp_path / "electra")
    d_dir = save_with_tokenizer(distil, tmp_path / "distil")

    out = tmp_path / "out"
    report = evaluate(options(d_dir, out, teacher=str(e_dir), langs=["af", "hi"], max_sentences=120))
    assert report["model"]["architecture"] == "DistilBertForTokenClassification"
    assert report["teacher"]["model"]["architecture"] == "ElectraForTokenClassification"
    assert report["model"]["labels"] == distil_labels
    assert_matches_seqeval(out, report)
    assert_matches_seqeval(out, report, key="teacher", pred_dir="teacher/predictions")
    for lang, entry in report["languages"].items():
        teacher_f1 = report["teacher"]["languages"][lang]["f1"]
        assert entry["teacher_f1"] == teacher_f1
        if teacher_f1 > 0:
            assert entry["retention"] == pytest.approx(100 * entry["f1"] / teacher_f1)
        assert entry["paper"]["xtremedistil_student_f1"] > 80
    assert "teacher F1" in (out / "report.md").read_text()

    # --compare takes the teacher column from that report's teacher block turned report
    teacher_only = evaluate(options(e_dir, tmp_path / "t", langs=["af", "hi"], max_sentences=120))
    compared = evaluate(options(d_dir, tmp_path / "c", compare=str(tmp_path / "t" / "report.json"),
                                langs=["af", "hi"], max_sentences=120))
    for lang in ("af", "hi"):
        assert compared["languages"][lang]["teacher_f1"] == teacher_only["languages"][lang]["f1"]
        assert compared["languages"][lang]["f1"] == report["languages"][lang]["f1"]


@needs_data
def test_labels_are_matched_by_name_not_position(models, tmp_path):
    """The same network with its label rows permuted (and id2label with them) predicts the same tags."""
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(str(models["bert"]))
    perm = [3, 6, 0, 5, 1, 4, 2]
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[perm].clone())
        model.classifier.bias.copy_(model.classifier.bias[perm].clone())
    names = [LABELS[i] for i in perm]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {x: i for i, x in enumerate(names)}
    permuted = save_with_tokenizer(model, tmp_path / "permuted")
    a = evaluate(options(models["bert"], tmp_path / "a", langs=["ms"], max_sentences=150))
    b = evaluate(options(permuted, tmp_path / "b", langs=["ms"], max_sentences=150))
    assert (tmp_path / "a/predictions/ms.conll").read_text() == (tmp_path / "b/predictions/ms.conll").read_text()
    assert a["languages"]["ms"]["f1"] == b["languages"]["ms"]["f1"]


# --------------------------------------------------------------------------------------------- errors


@needs_data
def test_label_mismatch_lists_both_sets(tmp_path):
    model = tiny_bert(tmp_path / "misc", ["O", "B-PER", "I-PER", "B-MISC", "I-MISC"])
    with pytest.raises(XdtError) as err:
        evaluate(options(model, tmp_path / "out", langs=["af"], max_sentences=50))
    msg = str(err.value)
    assert "model labels [B-MISC B-PER I-MISC I-PER O]" in msg
    assert "data tags [B-LOC B-ORG B-PER I-LOC I-ORG I-PER O]" in msg
    assert "not in the model: [B-LOC B-ORG I-LOC I-ORG]" in msg

    generic = tiny_bert(tmp_path / "generic", [f"LABEL_{i}" for i in range(7)])
    with pytest.raises(XdtError, match="generic id2label names"):
        evaluate(options(generic, tmp_path / "out2", langs=["af"], max_sentences=50))


@needs_data
def test_missing_language_fails_unless_allowed(models, tmp_path, capsys):
    with pytest.raises(XdtError, match=r"1 language\(s\) have no test data under .*xtreme: sv; pass --allow-missing"):
        evaluate(options(models["bert"], tmp_path / "a", langs=["af", "sv"], max_sentences=20))
    assert not (tmp_path / "a" / "report.json").exists()  # fails before any inference
    code = eval_main(["eval", "--model", str(models["bert"]), "--data", str(XTREME), "--langs", "af,sv",
                      "--out", str(tmp_path / "b"), "--max-sentences", "20", "--allow-missing", "--no-cache",
                      "--no-progress"])
    assert code == 0
    assert "missing: sv" in capsys.readouterr().out
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["missing"] == ["sv"] and list(report["languages"]) == ["af"]
    assert "**Missing** (no test files): sv" in (tmp_path / "b" / "report.md").read_text()
    from xdt.cli import main as xdt_main  # `xdt eval` as wired into the top-level command

    code = xdt_main(["eval", "--model", str(models["bert"]), "--data", str(XTREME), "--langs", "af,sv",
                     "--out", str(tmp_path / "c"), "--no-progress"])
    assert code == 2
    assert "xdt: error: 1 language(s) have no test data" in capsys.readouterr().err


@needs_data
def test_bad_model_folders_give_clear_errors(models, tmp_path):
    def fails(folder: Path, pattern: str) -> None:
        with pytest.raises(XdtError, match=pattern):
            evaluate(options(folder, tmp_path / "out", langs=["af"], max_sentences=10))

    fails(tmp_path / "nowhere", r"nowhere: model folder not found")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", r"empty: no config\.json; expected a folder written by save_pretrained")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    fails(broken, r"broken/config\.json: not valid JSON")

    pickled = tmp_path / "pickled"
    shutil.copytree(models["bert"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    fails(pickled, r"pickled: no model\.safetensors .*found pytorch_model\.bin; xdt loads safetensors only")

    mlm = tmp_path / "mlm"
    shutil.copytree(models["bert"], mlm)
    config = json.loads((mlm / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (mlm / "config.json").write_text(json.dumps(config))
    fails(mlm, r"architectures \['BertForMaskedLM'\] has no \*ForTokenClassification model")

    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(models["bert"] / name, no_tok / name)
    fails(no_tok, r"no tokenizer files .* pass --tokenizer DIR")
    report = evaluate(options(no_tok, tmp_path / "tok", tokenizer=str(VOCAB), langs=["af"], max_sentences=10))
    assert report["languages"]["af"]["sentences"] == 10


# --------------------------------------------------------------------------------------------- shards


@needs_data
def test_merged_shards_equal_one_run(models, tmp_path, capsys):
    common = ["--model", str(models["bert"]), "--data", str(XTREME), "--data", str(RAW), "--langs",
              "af,bs,hi,ms,tl", "--max-sentences", "120", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert eval_main(["eval", *common, "--out", str(tmp_path / "single")]) == 0
    for i in range(3):
        assert eval_main(["eval", *common, "--shard", f"{i}/3", "--out", str(tmp_path / f"s{i}")]) == 0
    shard0 = json.loads((tmp_path / "s0" / "report.json").read_text())
    assert list(shard0["languages"]) == ["af", "ms"]  # round-robin: languages 0 and 3 of 5
    assert eval_main(["eval", "merge", *(str(tmp_path / f"s{i}") for i in range(3)),
                      "--out", str(tmp_path / "merged")]) == 0
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    for report in (single, merged):
        report.pop("timing")
        for entry in report["languages"].values():
            entry.pop("seconds")
    assert merged == single
    for lang in single["languages"]:
        assert ((tmp_path / "merged/predictions" / f"{lang}.conll").read_text()
                == (tmp_path / "single/predictions" / f"{lang}.conll").read_text())
    assert (tmp_path / "merged" / "report.md").read_text() == (tmp_path / "single" / "report.md").read_text()

    with pytest.raises(XdtError, match=r"shard\(s\) 1/3 not given"):
        merge_reports([tmp_path / "s0", tmp_path / "s2"], tmp_path / "partial")
    with pytest.raises(XdtError, match=r"predictions/report\.json: not found"):
        merge_reports([tmp_path / "s0" / "predictions"], tmp_path / "x")  # a folder without report.json
    capsys.readouterr()
    assert eval_main(["eval", *common, "--shard", "3/3", "--out", str(tmp_path / "bad")]) == 2
    assert "--shard '3/3': expected 0 <= i < n" in capsys.readouterr().err


@needs_data
def test_merged_shards_with_a_teacher_equal_one_run(models, tmp_path):
    """Shards of unequal size (2 and 1 languages): the teacher's per-shard aggregates differ and are recomputed."""
    common = ["--model", str(models["bert"]), "--teacher", str(models["bert"]), "--data", str(XTREME), "--langs",
              "af,hi,ms", "--max-sentences", "60", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert eval_main(["eval", *common, "--out", str(tmp_path / "single")]) == 0
    for i in range(2):
        assert eval_main(["eval", *common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}")]) == 0
    merged = merge_reports([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    for report in (single, merged):
        report.pop("timing")
        for entry in [*report["languages"].values(), *report["teacher"]["languages"].values()]:
            entry.pop("seconds", None)
    assert merged == single and merged["teacher"]["languages_scored"] == 3


@needs_data
def test_cached_alignment_gives_the_same_report(models, tmp_path):
    kw = dict(langs=["tl"], max_sentences=100, cache_dir=str(tmp_path / "cache"))
    first = evaluate(options(models["bert"], tmp_path / "a", **kw))
    assert any((tmp_path / "cache" / "aligned").iterdir())
    second = evaluate(options(models["bert"], tmp_path / "b", **kw))
    assert first["languages"]["tl"]["counts"] == second["languages"]["tl"]["counts"]
    assert math.isclose(first["mean_f1"], second["mean_f1"])
