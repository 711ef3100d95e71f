"""Nothing wrong passes silently (issue 13, item 3): every odd input is either refused in one line or read in a
documented, correct way. Each test fails on the code before the fix it names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from seqeval.metrics import f1_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2

from tests.conftest import MBERT, SHARED_DATA, need
from xdt.cli import main
from xdt.data.discover import detect_file_format, discover, read_source, read_split
from xdt.data.inspect import format_table, inspect_data
from xdt.data.readers import ReadOptions, ReadReport
from xdt.errors import DataError, XdtError

RAW_BS = SHARED_DATA / "wikiann" / "raw" / "bs" / "test"
XTREME_AF = SHARED_DATA / "wikiann" / "xtreme" / "test-af.tsv"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _conll(sentences: list[list[tuple[str, str]]], prefix: str = "") -> str:
    return "".join("".join(f"{prefix}{w}\t{t}\n" for w, t in s) + "\n" for s in sentences)


def _refused(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("xdt: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------- a file of blank lines


@pytest.mark.parametrize("name,fmt", [
    ("test-en.tsv", None),  # named as XTREME: was read as no sentences at all
    ("bs/test", None),
    ("test.tsv", None),
    ("test-en.tsv", "xtreme"),
    ("bs/test", "raw"),
    ("test.tsv", "xtremedistil"),
    ("test.tsv", "text"),
])
def test_a_file_of_blank_lines_is_refused(tmp_path, name, fmt):
    _write(tmp_path / name, "\n  \n\t\n\n")
    with pytest.raises(DataError, match=r"file has only blank lines \(4 line\(s\)\): no sentences to read"):
        read_split(tmp_path, "test", fmt=fmt)


# ------------------------------------------------------------------------- I-X after O, and IOB1 files


STRAY = [[("Anna", "O"), ("Karenina", "I-PER"), ("lebt", "O"), ("in", "O"), ("Berlin", "B-LOC")],
         [("Die", "O"), ("UN", "B-ORG"), ("tagt", "O")]]
IOB1 = [[("John", "I-PER"), ("Smith", "I-PER"), ("met", "O"), ("Mary", "I-PER"), ("Ann", "B-PER")],
        [("In", "O"), ("New", "I-LOC"), ("York", "I-LOC"), ("and", "O"), ("Acme", "I-ORG"), ("Corp", "I-ORG")]]


def test_i_after_o_is_counted_as_a_repair_and_kept(tmp_path, capsys):
    _write(tmp_path / "test-de.tsv", _conll(STRAY))
    report = ReadReport()
    (source,) = discover(tmp_path, "test")
    sentences = list(read_source(source, ReadOptions(), report))
    assert [s.tags for s in sentences] == [tuple(t for _, t in s) for s in STRAY]  # as in the file
    assert report.converted == []  # a B-X opens an entity too: IOB2 with a stray I-X, not IOB1

    result = inspect_data(tmp_path, "test")
    de = result["languages"]["de"]
    gold = [[t for _, t in s] for s in STRAY]
    assert de["entities"] == len(get_entities(gold)) == 3  # as seqeval's default mode reads them
    assert de["repairs"] == 1 and result["repairs"] == 1
    assert "repaired 1 entities that open with I-X after O or another type (de 1)" in format_table(result)
    assert main(["data", "inspect", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["languages"]["de"]["repairs"] == 1


def test_iob1_file_is_detected_and_read_as_iob2(tmp_path):
    path = _write(tmp_path / "test-en.tsv", _conll(IOB1))
    report = ReadReport()
    sentences = list(read_source(discover(path)[0], ReadOptions(), report))
    assert [s.tags for s in sentences] == [("B-PER", "I-PER", "O", "B-PER", "B-PER"),
                                           ("O", "B-LOC", "I-LOC", "O", "B-ORG", "I-ORG")]
    assert report.converted == [f"{path}: IOB1 tags read as IOB2 (4 entities open with I-X, none with B-X)"]
    # the entities are the ones conlleval reads in the IOB1 file; strict IOB2 now sees them too
    original = [[t for _, t in s] for s in IOB1]
    assert get_entities([list(s.tags) for s in sentences]) == get_entities(original)
    result = inspect_data(path)
    assert result["languages"]["en"]["entities"] == 5  # was 1: only the B-PER separator counted
    assert result["languages"]["en"]["repairs"] == 0 and result["converted"] == report.converted


# --------------------------------------------------------------------------- formats: detection and --format


def test_raw_file_with_one_token_without_its_prefix_names_the_line(tmp_path, capsys):
    lines = need(RAW_BS).read_text(encoding="utf-8").splitlines()
    kept, tokens = [], 0
    for line in lines:
        kept.append(line)
        tokens += bool(line.strip())
        if tokens >= 176 and not line.strip():
            break
    target = [i for i, line in enumerate(kept) if line.strip()][40]
    bare = kept[target].partition(":")[2]
    kept[target] = bare
    _write(tmp_path / "bs" / "test", "\n".join(kept) + "\n")
    assert detect_file_format(tmp_path / "bs" / "test") == "raw"  # 175 of 176 lines say so
    _refused(capsys, ["data", "inspect", str(tmp_path), "--split", "test"],
             f"bs/test:{target + 1}: token {bare.partition(chr(9))[0]!r} has no language prefix")
    # forced onto the XTREME reader, the prefixes are not glued to the words
    _refused(capsys, ["data", "inspect", str(tmp_path), "--format", "xtreme"],
             "175 of 176 tokens start with the language prefix 'bs:'", "--format raw")


def test_detection_reads_every_line(tmp_path):
    # 250 XTREME lines (50 sentences), then 400 XtremeDistil lines: the majority decides (a guess from the first
    # 200 lines said xtreme), and the reader refuses the lines that do not fit instead of reading each as a sentence
    head = _conll([[("Anna", "B-PER"), ("lebt", "O"), ("in", "O"), ("Berlin", "B-LOC"), (".", "O")]] * 50)
    tail = "".join("Anna lebt in Berlin\tB-PER O O B-LOC\n" for _ in range(400))
    path = _write(tmp_path / "mixed.tsv", head + tail)
    assert detect_file_format(path) == "xtremedistil"
    with pytest.raises(DataError, match=r"mixed\.tsv: 250 of 650 lines hold one token and one tag, in blocks "
                                        r"separated by blank lines \(a block of them from line 1\)"):
        list(read_source(discover(path)[0], ReadOptions(), ReadReport()))


@pytest.mark.parametrize("fmt,needle", [
    ("xtremedistil", "lines hold one token and one tag, in blocks separated by blank lines"),
    ("text", "are token<TAB>tag (an IOB tag after the tab): this is labeled data, not text"),
    ("raw", "has no language prefix"),
])
def test_forced_format_that_does_not_fit_is_refused(tmp_path, capsys, fmt, needle):
    path = _write(tmp_path / "data.tsv", _conll([[("Er", "O"), ("lebt", "O"), ("in", "O"), ("Rom", "B-LOC")]] * 3))
    assert detect_file_format(path) == "xtreme"
    _refused(capsys, ["data", "inspect", str(path), "--format", fmt, "--split", "test"], str(path), needle)


def test_forced_format_on_real_files(capsys):
    _refused(capsys, ["data", "inspect", str(need(RAW_BS)), "--format", "xtreme"],
             "tokens start with the language prefix 'bs:'")
    _refused(capsys, ["data", "inspect", str(need(XTREME_AF)), "--format", "xtremedistil"],
             "lines hold one token and one tag")


# --------------------------------------------------------------------------------- folders and --data paths


@pytest.mark.parametrize("other,layout", [
    ("bs/test", "{lang}/{split} (bs/test)"),
    ("test.tsv", "{split}.tsv (test.tsv)"),
])
def test_folder_mixing_layouts_is_refused(tmp_path, other, layout):
    sentence = [[("Zagreb", "B-LOC")]]
    _write(tmp_path / "test-en.tsv", _conll(sentence))
    _write(tmp_path / "test-de.tsv", _conll(sentence))
    _write(tmp_path / other, _conll(sentence, "bs:") if other == "bs/test" else "Zagreb je\tB-LOC O\n")
    with pytest.raises(DataError, match="holds test data in 2 layouts") as err:
        read_split(tmp_path, "test")
    assert "{split}-{lang}.tsv (test-de.tsv and 1 more)" in str(err.value) and layout in str(err.value)


def test_same_data_twice_is_refused(tmp_path, monkeypatch, capsys):
    from xdt.eval.data import load_eval_data

    _write(tmp_path / "wikiann" / "test-en.tsv", _conll([[("Rom", "B-LOC")]]))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(XdtError, match=r"--data wikiann: given twice; pass each data path once"):
        load_eval_data(["wikiann", "wikiann"], "test", None)
    with pytest.raises(XdtError, match=rf"--data {tmp_path}/wikiann: given twice \(also as wikiann\)"):
        load_eval_data(["wikiann", str(tmp_path / "wikiann")], "test", None)
    assert len(load_eval_data(["wikiann"], "test", None).languages["en"].sentences) == 1
    _refused(capsys, ["eval", "--model", "nowhere", "--data", "wikiann", "--data", "wikiann/", "--out", "o"],
             "--data wikiann/: given twice (also as wikiann)")


# ------------------------------------------------------------------------------------------------- export


def _tiny_bert(folder: Path, seed: int):
    from tests.eval.test_eval import LABELS, tiny_bert

    return tiny_bert(folder, LABELS, seed=seed)


def test_export_of_a_run_folder_takes_its_best_dev_model(tmp_path, capsys):
    from safetensors.torch import load_file

    from xdt.engine.checkpoint import MARKER

    need(MBERT)
    run = tmp_path / "run"
    _tiny_bert(run / "student_best", seed=1)
    root = run / "checkpoints" / "distill"  # the last step's checkpoint, newer than the best dev model
    _write(root / "s2-p1-done" / MARKER, json.dumps({"stage": 2, "global_step": 9}))
    _write(root / "latest", "s2-p1-done")

    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == (f"exported {run / 'student_best'} (the run's best dev model) -> "
                                               f"{tmp_path / 'out'}")
    exported, best = load_file(tmp_path / "out" / "model.safetensors"), load_file(run / "student_best" /
                                                                                  "model.safetensors")
    assert exported.keys() == best.keys() and all((exported[k] == best[k]).all() for k in best)

    from xdt.models.export import export_source

    assert export_source(run) == (run / "student_best", None)
    assert export_source(root) == (root / "s2-p1-done", (root, "s2-p1-done"))  # explicit: exactly that one
    assert export_source(root / "s2-p1-done") == (root / "s2-p1-done", (root, "s2-p1-done"))


# --------------------------------------------------------------------------------------- transfer-set cache


def test_transfer_folder_cache_key_follows_transfer_jsonl(tmp_path, mbert_tokenizer):
    from xdt.data.align import Aligner
    from xdt.data.cache import align_cached
    from xdt.data.task import read_transfer_sentences
    from xdt.distill.teacher_cache import features_content_id

    folder = tmp_path / "set"
    rows = [{"lang": "de", "words": ["Ein", "Haus"]}, {"lang": "en", "words": ["A", "house"]}]
    _write(folder / "labeled.jsonl", json.dumps({**rows[0], "tags": ["O", "O"]}) + "\n")  # sorts first
    _write(folder / "transfer.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    aligner = Aligner(mbert_tokenizer, 32)
    sentences, key = read_transfer_sentences(str(folder))
    before = align_cached(sentences, aligner, key, tmp_path / "cache")

    _write(folder / "transfer.jsonl", json.dumps({"lang": "fr", "words": ["Une", "maison", "rouge"]}) + "\n")
    sentences, edited_key = read_transfer_sentences(str(folder))
    after = align_cached(sentences, aligner, edited_key, tmp_path / "cache")
    assert edited_key != key
    assert len(after.offsets) - 1 == 1 and [s.words for s in sentences] == [("Une", "maison", "rouge")]
    # the teacher cache is keyed on the aligned windows: it now refuses a cache of the old transfer set
    assert features_content_id(after) != features_content_id(before)


# --------------------------------------------------------------------------------------------- eval merge


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """Two languages: en with a stray I-X after O (scored as it is), de in IOB1 (read as IOB2)."""
    root = tmp_path_factory.mktemp("evaldata")
    _write(root / "test-en.tsv", _conll(STRAY))
    _write(root / "test-de.tsv", _conll(IOB1))
    return root


def _shard(model: str, data: Path, out: Path, index: int) -> dict:
    from xdt.eval.options import EvalOptions
    from xdt.eval.run import evaluate

    return evaluate(EvalOptions(model=model, data=[str(data)], out=str(out), shard=(index, 2), progress=False))


def test_merge_identifies_a_model_by_its_weights(tmp_path, eval_data, monkeypatch):
    from xdt.eval.merge import merge_reports
    from xdt.eval.report import read_predictions

    need(MBERT)
    monkeypatch.chdir(tmp_path)
    _tiny_bert(tmp_path / "models" / "a", seed=0)
    # the same model as models/a and as its absolute path: one model, merged
    r0 = _shard("models/a", eval_data, tmp_path / "s0", 0)
    _shard(str(tmp_path / "models" / "a"), eval_data, tmp_path / "s1", 1)
    merged = merge_reports([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert sorted(merged["languages"]) == ["de", "en"]
    assert r0["model"]["weights_sha256"] == merged["model"]["weights_sha256"]

    # gold as read: en's stray I-PER kept and scored as seqeval scores it, de's IOB1 converted to IOB2
    for lang, expected in (("en", [[t for _, t in s] for s in STRAY]),
                           ("de", [["B-PER", "I-PER", "O", "B-PER", "B-PER"], ["O", "B-LOC", "I-LOC", "O", "B-ORG",
                                                                             "I-ORG"]])):
        _, gold, pred = read_predictions(tmp_path / "merged" / "predictions" / f"{lang}.conll")
        assert gold == expected
        entry = merged["languages"][lang]
        assert entry["f1"] == pytest.approx(100 * f1_score(gold, pred), abs=1e-9)
        assert entry["f1_strict"] == pytest.approx(100 * f1_score(gold, pred, mode="strict", scheme=IOB2), abs=1e-9)

    # another model written to the same path between the shards: refused, naming the weights
    shutil.rmtree(tmp_path / "models" / "a")
    _tiny_bert(tmp_path / "models" / "a", seed=1)
    _shard("models/a", eval_data, tmp_path / "s1b", 1)
    with pytest.raises(XdtError, match=r"s1b: differs from \S+/s0 in model\.weights_sha256: "):
        merge_reports([tmp_path / "s0", tmp_path / "s1b"], tmp_path / "bad")

    # a report of an older xdt names its model by path only: it cannot be told apart, so it is refused
    old = json.loads((tmp_path / "s1" / "report.json").read_text())
    del old["model"]["weights_sha256"]
    (tmp_path / "s1" / "report.json").write_text(json.dumps(old))
    with pytest.raises(XdtError, match=r"s1: the report names its model by path only"):
        merge_reports([tmp_path / "s0", tmp_path / "s1"], tmp_path / "old")


def test_merge_names_an_input_that_is_not_a_report(tmp_path, capsys):
    # it used to name a report.json beside the file, which the user never gave
    data = _write(tmp_path / "test-en.tsv", _conll(STRAY))
    err = _refused(capsys, ["eval", "merge", str(data), "--out", str(tmp_path / "merged")],
                   f"{data}: not a report (not valid JSON", "expected the --out folder of an `xdt eval --shard` run")
    assert "report.json:" not in err and not (tmp_path / "merged").exists()
    _refused(capsys, ["eval", "merge", str(tmp_path), "--out", str(tmp_path / "merged")],
             f"{tmp_path / 'report.json'}: not found; expected the --out folder")


# ------------------------------------------------------------------------------ one model, one score (windows)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """`xdt run` of the quickstart on less mock data, with windows of 16 sub-words: most test sentences are split."""
    from tests.test_trust_inputs import QUICKSTART, SMALL
    from tests.test_trust_outputs import xdt_process

    out = tmp_path_factory.mktemp("window") / "run"
    done = xdt_process(["run", QUICKSTART, *SMALL, "data.mock.test_sentences=40", "data.max_seq_length=16",
                        "output.tensorboard=false", f"output.dir={out}"])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_xdt_eval_of_a_run_student_gives_the_runs_own_report(small_run, tmp_path, capsys):
    # the run scored with its data.max_seq_length windows, `xdt eval` of its student with 128: two scores of one model
    run_report = json.loads((small_run / "eval" / "report.json").read_text())
    assert json.loads((small_run / "student" / "config.json").read_text())["xdt_max_seq_length"] == 16
    langs = ",".join(run_report["requested"])
    argv = ["eval", "--model", str(small_run / "student"), "--data", run_report["data"]["paths"][0], "--langs", langs,
            "--no-progress", "--no-cache"]
    assert main([*argv, "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["settings"]["max_seq_length"] == run_report["settings"]["max_seq_length"] == 16
    assert list(report["languages"]) == list(run_report["languages"])
    for lang, entry in run_report["languages"].items():  # the run's entries add the teacher's F1 and retention
        mine = {k: v for k, v in report["languages"][lang].items() if k != "seconds"}
        assert mine == {k: entry[k] for k in mine}, lang
        assert (tmp_path / "ev" / "predictions" / f"{lang}.conll").read_bytes() == \
            (small_run / "eval" / "predictions" / f"{lang}.conll").read_bytes(), lang
    # --max-seq-length still says otherwise, and the report records it
    assert main([*argv, "--max-seq-length", "128", "--out", str(tmp_path / "ev128")]) == 0
    assert json.loads((tmp_path / "ev128" / "report.json").read_text())["settings"]["max_seq_length"] == 128

    # shards scored with two windows are never one report
    assert main([*argv, "--shard", "0/2", "--out", str(tmp_path / "s0")]) == 0
    assert main([*argv, "--shard", "1/2", "--max-seq-length", "32", "--out", str(tmp_path / "s1")]) == 0
    _refused(capsys, ["eval", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")],
             f"{tmp_path / 's1'}: scored with windows of 32 sub-words, {tmp_path / 's0'} with 16")
    assert not (tmp_path / "m").exists()
