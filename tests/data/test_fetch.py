"""`xdt data fetch wikiann` from a local save_to_disk copy built from the real WikiAnn files: the folder it writes
reads back as exactly the source's sentences, its manifest is right and checked by `xdt data inspect`, a re-fetch
is a no-op, and nothing already in --out is lost."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from tests.conftest import SHARED_DATA, need
from xdt import __version__
from xdt.cli import main
from xdt.data.discover import read_split
from xdt.data.readers import ReadOptions, read_conll
from xdt.data.sentence import HF_WIKIANN_LABEL_ORDER, Sentence
from xdt.eval.data import load_eval_data

XTREME = SHARED_DATA / "wikiann" / "xtreme"
SIZES = {"train": 40, "dev": 12, "test": 15}  # first N sentences of each real split
HF_SPLIT = {"train": "train", "dev": "validation", "test": "test"}
# ar's copy numbers its labels in another order (XTREME's sorted label file): tags must travel by name.
SORTED_ORDER = ("B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O")
LABEL_ORDER = {"de": HF_WIKIANN_LABEL_ORDER, "en": HF_WIKIANN_LABEL_ORDER, "ar": SORTED_ORDER}


def _first(lang: str, split: str) -> list[Sentence]:
    sentences = read_conll(need(XTREME / f"{split}-{lang}.tsv"), ReadOptions(), lang, prefixed=False)
    return [s for _, s in zip(range(SIZES[split]), sentences)]


def _dataset_dict(by_split: dict[str, list[Sentence]], names: tuple[str, ...], lang: str):
    """A DatasetDict shaped like the hub's wikiann configuration (tokens, ner_tags, langs, spans)."""
    import datasets

    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(names))),
        "langs": datasets.Sequence(datasets.Value("string")),
        "spans": datasets.Sequence(datasets.Value("string")),
    })
    splits = {}
    for split, sentences in by_split.items():
        rows = {"tokens": [list(s.words) for s in sentences],
                "ner_tags": [[names.index(t) for t in s.tags] for s in sentences],
                "langs": [[lang] * len(s.words) for s in sentences],
                "spans": [[f"{kind}: {' '.join(s.words[a:b + 1])}" for kind, a, b in get_entities(list(s.tags))]
                          for s in sentences]}
        splits[HF_SPLIT[split]] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, dict[str, list[Sentence]]]]:
    """SRC/<lang>/ save_to_disk copies of the first sentences of de, en, ar, and those sentences."""
    src = tmp_path_factory.mktemp("wikiann_src")
    expected = {}
    for lang, names in LABEL_ORDER.items():
        expected[lang] = {split: _first(lang, split) for split in SIZES}
        _dataset_dict(expected[lang], names, lang).save_to_disk(str(src / lang))
    return src, expected


def fetch(*args: str) -> int:
    return main(["data", "fetch", "wikiann", *map(str, args)])


@pytest.fixture(scope="module")
def fetched(source, tmp_path_factory) -> Path:
    src, _ = source
    out = tmp_path_factory.mktemp("fetched") / "wikiann"
    assert fetch("--source", src, "--langs", "de,en,ar", "--out", out) == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("xdt: error: ")
    return err[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_written_files_read_back_as_the_source(source, fetched):
    _, expected = source
    assert sorted(p.name for p in fetched.iterdir()) == sorted(
        [f"{split}-{lang}.tsv" for lang in LABEL_ORDER for split in SIZES] + ["manifest.json"])
    for split in SIZES:
        # as `data.path: DIR` reads it (layout detected, no format given) and as `xdt eval --data DIR` reads it
        assert read_split(fetched, split) == {split: {lang: expected[lang][split] for lang in LABEL_ORDER}}
        evaluated = load_eval_data([str(fetched)], split, ["de", "en", "ar"])
        assert evaluated.missing == []
        assert {lang: d.sentences for lang, d in evaluated.languages.items()} == {
            lang: expected[lang][split] for lang in LABEL_ORDER}
        assert {f for d in evaluated.languages.values() for f in d.formats} == {"xtreme"}
    # ar was numbered in another label order: its tags are the source's names, among them every entity type
    assert {t for s in expected["ar"]["train"] for t in s.tags} >= {"B-PER", "B-ORG", "B-LOC"}
    first = (fetched / "dev-de.tsv").read_text(encoding="utf-8").split("\n\n")[0]
    assert first == "\n".join(f"{w}\t{t}" for w, t in zip(expected["de"]["dev"][0].words,
                                                         expected["de"]["dev"][0].tags))


def test_manifest_records_source_counts_and_hashes(source, fetched):
    src, expected = source
    manifest = json.loads((fetched / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["manifest_version"], manifest["dataset"], manifest["layout"], manifest["xdt_version"]) == (
        1, "wikiann", "xtreme", __version__)
    assert sorted(manifest["languages"]) == ["ar", "de", "en"]
    for lang, record in manifest["languages"].items():
        assert record["source"]["kind"] == "disk"
        assert record["source"]["path"] == str(src / lang)
        assert set(record["source"]["fingerprints"]) == {"train", "dev", "test"}
        assert all(isinstance(fp, str) and fp for fp in record["source"]["fingerprints"].values())
        assert record["fetched"] == manifest["updated"]
        for split, size in SIZES.items():
            entry = record["splits"][split]
            path = fetched / f"{split}-{lang}.tsv"
            assert entry == {"file": path.name, "sentences": size,
                             "tokens": sum(len(s.words) for s in expected[lang][split]),
                             "bytes": path.stat().st_size,
                             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert manifest["languages"]["de"]["splits"]["train"]["tokens"] == 342  # the real first 40 de sentences (awk count)


def test_inspect_checks_the_manifest(fetched, tmp_path, capsys):
    assert main(["data", "inspect", str(fetched), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["manifest"] == {"path": str(fetched / "manifest.json"), "verified_files": 9, "unlisted": []}
    assert result["formats"] == ["xtreme"]
    assert result["languages"]["de"]["sentences"] == sum(SIZES.values())
    assert main(["data", "inspect", str(fetched), "--langs", "en", "--split", "dev"]) == 0
    assert "manifest.json: 1 file(s) match (sha256, sentences, tokens)" in capsys.readouterr().out

    # one tag changed: same counts, another hash
    tag_changed = tmp_path / "tag_changed"
    shutil.copytree(fetched, tag_changed)
    path = tag_changed / "dev-en.tsv"
    lines = path.read_text(encoding="utf-8").split("\n")
    index = next(i for i, line in enumerate(lines) if line.endswith("\tO"))
    lines[index] = lines[index][:-1] + "B-LOC"
    path.write_text("\n".join(lines), encoding="utf-8")
    assert main(["data", "inspect", str(tag_changed)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"xdt: error: {path}: differs from {tag_changed / 'manifest.json'}: sha256 ")
    assert line.endswith("same sentence and token counts: a word or tag changed")

    # one token line removed: the token count says so
    line_removed = tmp_path / "line_removed"
    shutil.copytree(fetched, line_removed)
    path = line_removed / "test-de.tsv"
    lines = path.read_text(encoding="utf-8").split("\n")
    tokens = sum(1 for line in lines if line)
    del lines[1]
    path.write_text("\n".join(lines), encoding="utf-8")
    assert main(["data", "inspect", str(line_removed), "--json"]) == 2
    line = one_error_line(capsys)
    assert f"{path}: differs from" in line
    assert f"tokens {tokens - 1} (manifest {tokens}), sha256 " in line
    assert "sentences" not in line

    # a file gone
    file_gone = tmp_path / "file_gone"
    shutil.copytree(fetched, file_gone)
    (file_gone / "train-ar.tsv").unlink()
    assert main(["data", "inspect", str(file_gone)]) == 2
    assert one_error_line(capsys) == (f"xdt: error: {file_gone / 'train-ar.tsv'}: listed in "
                                      f"{file_gone / 'manifest.json'} (ar train) but missing; fetch it again with "
                                      "`xdt data fetch`")


def test_second_fetch_is_a_no_op(source, fetched, capsys):
    src, _ = source
    before = snapshot(fetched)
    capsys.readouterr()
    assert fetch("--source", src, "--langs", "en,de", "--out", fetched) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"en: train {SIZES['train']}, dev {SIZES['dev']}, test {SIZES['test']} sentences (unchanged)"
    assert out[-1] == f"{fetched}: 2 language(s), 0 written, manifest {fetched / 'manifest.json'}"
    assert snapshot(fetched) == before
    assert list(fetched.parent.glob(".*.partial")) == []


def test_adds_languages_and_never_loses_existing_files(source, tmp_path, capsys):
    src, expected = source
    out = tmp_path / "data"
    out.mkdir()  # an existing empty folder is filled, not replaced (its mode, group, a shell's cwd stay)
    inode = out.stat().st_ino
    assert fetch("--source", src, "--langs", "de", "--out", out) == 0
    assert out.stat().st_ino == inode
    de_files = snapshot(out)
    user_file = out / "train-en.tsv"  # a user's own en file, other content than the source's
    user_file.write_text("Hello\tO\n", encoding="utf-8")
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    capsys.readouterr()

    assert fetch("--source", src, "--langs", "en", "--out", out) == 2
    assert one_error_line(capsys) == (f"xdt: error: --out {out}: train-en.tsv already exist with other content than "
                                      "this fetch; nothing was written: choose another --out or pass --overwrite "
                                      "to replace them")
    assert sorted(p.name for p in out.iterdir()) == sorted([*de_files, "train-en.tsv", "notes.txt"])
    assert user_file.read_text(encoding="utf-8") == "Hello\tO\n"
    assert {n: v for n, v in snapshot(out).items() if n in de_files} == de_files
    assert list(tmp_path.glob(".*.partial")) == []

    assert fetch("--source", src, "--langs", "en", "--out", out, "--overwrite") == 0
    assert "en: train 40, dev 12, test 15 sentences (replaced)" in capsys.readouterr().out
    assert read_split(out, "train")["train"] == {"de": expected["de"]["train"], "en": expected["en"]["train"]}
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine\n"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["languages"]) == ["de", "en"]
    assert {n: v for n, v in snapshot(out).items() if n.endswith("-de.tsv")} == {
        n: v for n, v in de_files.items() if n.endswith("-de.tsv")}
    assert main(["data", "inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["verified_files"] == 6


def test_suite_languages_and_missing_ones(source, tmp_path, capsys):
    src, expected = source
    suite = tmp_path / "three.yaml"
    suite.write_text("name: three\nlanguages: [ar, de, en]\n", encoding="utf-8")
    assert fetch("--source", src, "--suite", suite, "--out", tmp_path / "three") == 0
    assert sorted(json.loads((tmp_path / "three" / "manifest.json").read_text())["languages"]) == ["ar", "de", "en"]

    capsys.readouterr()
    out = tmp_path / "w41"
    assert fetch("--source", src, "--suite", "wikiann41", "--out", out) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"xdt: error: --source {src} lacks 38 of the 41 languages: af bg bn bs ca cs da el es ")
    assert " ar " not in line and " de " not in line and " en " not in line
    assert not out.exists()

    assert fetch("--source", src, "--suite", "wikiann41", "--out", out, "--allow-missing") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith("missing from the source (skipped, --allow-missing): af bg bn ")
    assert read_split(out, "test")["test"] == {lang: expected[lang]["test"] for lang in ("ar", "de", "en")}


def test_bad_inputs_exit_2_with_one_line(source, tmp_path, capsys, monkeypatch):
    src, _ = source
    out = tmp_path / "out"
    cases = {
        ("--source", src, "--langs", "de,xx", "--out", out): "unknown WikiAnn language(s) xx; expected codes of",
        ("--source", src, "--langs", "de,fr", "--out", out): f"--source {src} lacks 1 of the 2 languages: fr",
        ("--source", src, "--suite", "nosuch", "--out", out): "unknown suite 'nosuch'",
        ("--source", src, "--out", out): "pass one of --langs a,b or --suite NAME",
        ("--source", src, "--langs", "de", "--suite", "wikiann41", "--out", out): "pass one of --langs",
        ("--source", tmp_path / "absent", "--langs", "de", "--out", out): "not found or not a folder",
        ("--source", src, "--langs", "de", "--out", src / "de" / "x"): "lies inside the source",
        ("--source", src, "--langs", "de", "--revision", "v1", "--out", out): "belongs to a hub source",
    }
    for args, expected_text in cases.items():
        assert fetch(*args) == 2, args
        assert expected_text in one_error_line(capsys), args
        assert not out.exists()

    # the hub, without network (tests run with HF_HUB_OFFLINE=1; forced here whatever the environment says)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert fetch("--langs", "de", "--out", out) == 2
    line = one_error_line(capsys)
    assert line.startswith("xdt: error: unimelb-nlp/wikiann: cannot read the HF hub dataset's info (revision main): ")
    assert line.endswith("Without internet, pass --source DIR holding save_to_disk copies (DIR/<lang>/)")
    assert not out.exists()

    # integer tags without ClassLabel names are refused, never mapped by a guessed order
    import datasets

    plain = tmp_path / "plain"
    ints = {split: datasets.Dataset.from_dict({"tokens": [["Berlin"]], "ner_tags": [[5]]})
            for split in ("train", "validation", "test")}
    datasets.DatasetDict(ints).save_to_disk(str(plain / "de"))
    capsys.readouterr()  # the progress bars of save_to_disk
    assert fetch("--source", plain, "--langs", "de", "--out", out) == 2
    assert "expected a sequence of ClassLabel" in one_error_line(capsys)
    assert not out.exists()

    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    assert fetch("--source", src, "--langs", "de", "--out", tmp_path / "a_file") == 2
    assert "exists and is not a folder" in one_error_line(capsys)
    assert list(tmp_path.glob(".*.partial")) == []
