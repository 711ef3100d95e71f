"""Readers: every WikiAnn format on real files, and one clear `file:line` error for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA, need
from xdt.data.discover import detect_file_format, discover, read_source, read_split
from xdt.data.readers import ReadOptions, ReadReport, read_conll, read_text, read_xtremedistil
from xdt.data.sentence import HF_WIKIANN_LABEL_ORDER, WIKIANN_LABELS, Sentence
from xdt.errors import DataError

WIKIANN = SHARED_DATA / "wikiann"


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------- real formats


def test_xtreme_reader_first_sentence_of_real_file():
    path = need(WIKIANN / "xtreme" / "test-en.tsv")
    first = next(read_conll(path, ReadOptions(), "en", prefixed=False))
    assert first.lang == "en"
    assert first.words[:3] == ("Shortly", "afterward", ",")
    assert first.tags[first.words.index("India")] == "B-LOC"
    assert len(first.words) == len(first.tags)


def test_raw_reader_strips_language_prefix_and_counts_match():
    path = need(WIKIANN / "raw" / "bs" / "test")
    sentences = list(read_conll(path, ReadOptions(), None, prefixed=True))
    assert len(sentences) == 1000
    assert sentences[0].lang == "bs"
    assert sentences[0].words[:3] == ("PREUSMJERI", "Nordijska", "kombinacija")
    assert sentences[0].tags[:3] == ("O", "B-ORG", "I-ORG")
    assert not any(":" in w and w.startswith("bs:") for s in sentences for w in s.words)


def test_hf_dummy_raw_format_detected():
    sources = discover(need(WIKIANN / "samples" / "hf_dummy"), "dev")
    assert [(s.format, s.lang) for s in sources] == [("raw", "cs"), ("raw", "sv")]
    sentences = list(read_source(sources[0], ReadOptions(), ReadReport()))
    assert sentences[0].words[:3] == ("Varšavě]]", "(", "Polsko")
    assert sentences[0].tags[2] == "B-LOC"


def test_xtremedistil_reader_skips_and_reports_lines_with_more_tags_than_tokens():
    path = need(WIKIANN / "samples" / "xtremedistil_small" / "test_small.tsv")
    report = ReadReport()
    sentences = list(read_xtremedistil(path, ReadOptions(), report))
    assert len(sentences) == 98 and len(report.skipped) == 2
    assert report.skipped[0] == f"{path}:49: 11 tokens but 12 tags"
    assert report.skipped[1].startswith(f"{path}:88: 7 tokens but 8 tags")
    assert sentences[0] == Sentence("sl", ("Your", "Disco", "Needs", "You", "''"),
                                    ("B-ORG", "I-ORG", "I-ORG", "I-ORG", "O"))
    assert len({s.lang for s in sentences}) > 10


def test_xtremedistil_strict_fails_at_first_malformed_line():
    path = need(WIKIANN / "samples" / "xtremedistil_small" / "test_small.tsv")
    with pytest.raises(DataError, match=r"test_small\.tsv:49: 11 tokens but 12 tags \(strict mode\)"):
        list(read_xtremedistil(path, ReadOptions(strict=True), ReadReport()))


def test_unlabeled_text_reader_real_transfer_set_and_lang_column(tmp_path):
    path = need(SHARED_DATA / "text" / "xtremedistil_transfer_set.txt")
    sentences = list(read_text(path, ReadOptions()))
    assert len(sentences) == 100 and all(s.tags is None for s in sentences)
    assert sentences[0].words == ("REDIRECCIÓN", "Postcards", "from", "Heaven")
    tagged = _write(tmp_path, "t.txt", "de\tEin Haus .\n\nru\tДом .\n")
    assert [(s.lang, s.words) for s in read_text(tagged, ReadOptions())] == [
        ("de", ("Ein", "Haus", ".")), ("ru", ("Дом", "."))]


def test_detect_formats_of_real_files():
    assert detect_file_format(need(WIKIANN / "xtreme" / "dev-af.tsv")) == "xtreme"
    assert detect_file_format(WIKIANN / "raw" / "hr" / "dev") == "raw"
    assert detect_file_format(WIKIANN / "samples" / "xtremedistil_small" / "train_small.tsv") == "xtremedistil"
    assert detect_file_format(SHARED_DATA / "text" / "tatoeba" / "tatoeba.deu-eng.deu") == "text"


def test_detects_xtreme_content_under_another_name(tmp_path):
    path = _write(tmp_path, "mine.conll", "Paris\tB-LOC\nis\tO\n\nBob\tB-PER\n")
    assert detect_file_format(path) == "xtreme"


def test_read_split_filters_languages():
    data = read_split(need(WIKIANN / "xtreme"), "dev", langs=["af", "tl"])
    assert sorted(data["dev"]) == ["af", "tl"]
    assert len(data["dev"]["af"]) == 1000 and len(data["dev"]["tl"]) == 1000


# ---------------------------------------------------------------------------------------------- HF dataset


def _hf_dataset_from(sentences, names):
    import datasets

    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(names))),
        "langs": datasets.Sequence(datasets.Value("string")),
    })
    index = {n: i for i, n in enumerate(names)}
    return datasets.Dataset.from_dict({
        "tokens": [list(s.words) for s in sentences],
        "ner_tags": [[index[t] for t in s.tags] for s in sentences],
        "langs": [[s.lang] * len(s.words) for s in sentences],
    }, features=features)


@pytest.mark.parametrize("order", ["hf", "reversed"])
def test_hf_dataset_labels_mapped_by_name_from_disk_and_parquet(tmp_path, order):
    import datasets

    raw = list(read_conll(need(WIKIANN / "raw" / "bs" / "dev"), ReadOptions(), None, prefixed=True))[:200]
    names = HF_WIKIANN_LABEL_ORDER if order == "hf" else tuple(reversed(HF_WIKIANN_LABEL_ORDER))
    ds = _hf_dataset_from(raw, names)
    assert ds.features["ner_tags"].feature.names == list(names)
    datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "pq" / "bs").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "pq" / "bs" / "validation-00000-of-00001.parquet"))

    from_disk = read_split(tmp_path / "disk", "dev")["dev"]["bs"]
    from_parquet = read_split(tmp_path / "pq", "dev")["dev"]["bs"]
    assert from_disk == raw
    assert from_parquet == raw


def test_hf_integer_label_order_differs_from_xtreme_sorted_order():
    # The point of mapping by name: position 1 is B-PER in HF but B-ORG in XTREME's sorted label file.
    xtreme_sorted = tuple(sorted(WIKIANN_LABELS))
    assert HF_WIKIANN_LABEL_ORDER[1] == "B-PER" and xtreme_sorted[1] == "B-ORG"


def test_hf_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"hf:wikiann/xx: cannot load split 'test' of HF dataset 'wikiann'"):
        list(read_source(discover("hf:wikiann/xx", "test")[0], ReadOptions(), ReadReport()))


def test_hf_split_missing_is_named(tmp_path):
    import datasets

    ds = _hf_dataset_from([Sentence("bs", ("a",), ("O",))], HF_WIKIANN_LABEL_ORDER)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "d"))
    assert discover(tmp_path / "d", "test") == []
    with pytest.raises(DataError, match="no split 'validation'"):
        list(read_source(discover(tmp_path / "d", None)[0].__class__("hf", "dev", str(tmp_path / "d")),
                         ReadOptions(), ReadReport()))


def test_not_a_parquet_file_is_refused(tmp_path):
    path = _write(tmp_path, "test.parquet", "not parquet")
    with pytest.raises(DataError, match=r"test\.parquet: not a parquet file"):
        list(read_source(discover(path)[0], ReadOptions(), ReadReport()))


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.tsv: file not found"):
        list(read_conll(tmp_path / "nope.tsv", ReadOptions(), "en", prefixed=False))
    with pytest.raises(DataError, match=r"nowhere: not found"):
        discover(tmp_path / "nowhere", "test")


def test_empty_file(tmp_path):
    path = _write(tmp_path, "test-en.tsv", "")
    with pytest.raises(DataError, match=r"test-en\.tsv: file is empty"):
        list(read_conll(path, ReadOptions(), "en", prefixed=False))


def test_empty_folder_names_the_layouts_expected(tmp_path):
    with pytest.raises(DataError, match=r"no data files for test; expected \{split\}-\{lang\}\.tsv"):
        discover(tmp_path, "test")


def test_line_without_tab(tmp_path):
    path = _write(tmp_path, "test-en.tsv", "Paris\tB-LOC\nis O\n")
    with pytest.raises(DataError, match=r"test-en\.tsv:2: line has no tab; expected token<TAB>tag"):
        list(read_conll(path, ReadOptions(), "en", prefixed=False))
    raw = _write(tmp_path, "bs/test", "bs:Sarajevo\tB-LOC\nbs:je\n")
    with pytest.raises(DataError, match=r"bs/test:2: line has no tab; expected lang:token<TAB>tag"):
        list(read_conll(raw, ReadOptions(), None, prefixed=True))
    xd = _write(tmp_path, "train.tsv", "Paris is\tB-LOC O\nno tab here\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: line has no tab; expected sentence<TAB>tags"):
        list(read_xtremedistil(xd, ReadOptions(), ReadReport()))


def test_unknown_tag(tmp_path):
    path = _write(tmp_path, "test-en.tsv", "Paris\tB-LOC\nis\tO\n\nBob\tB-PERSON\n")
    with pytest.raises(DataError, match=r"test-en\.tsv:4: unknown tag 'B-PERSON'; expected one of O B-PER"):
        list(read_conll(path, ReadOptions(), "en", prefixed=False))
    xd = _write(tmp_path, "train.tsv", "Paris is\ten:B-LOC en:X\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: unknown tag 'X'"):
        list(read_xtremedistil(xd, ReadOptions(), ReadReport()))
    # with labels=None any IOB-shaped tag passes, anything else still fails
    assert next(read_conll(path, ReadOptions(labels=None), "en", prefixed=False)).tags == ("B-LOC", "O")
    bad = _write(tmp_path, "test-de.tsv", "Paris\tLOC\n")
    with pytest.raises(DataError, match=r"test-de\.tsv:1: unknown tag 'LOC'; expected an IOB tag"):
        list(read_conll(bad, ReadOptions(labels=None), "de", prefixed=False))


def test_invalid_utf8(tmp_path):
    path = _write(tmp_path, "test-de.tsv", b"Berlin\tB-LOC\n\nM\xfcnchen\tB-LOC\n")
    with pytest.raises(DataError, match=r"test-de\.tsv:3: invalid UTF-8 \(byte 0xfc at column 2\)"):
        list(read_conll(path, ReadOptions(), "de", prefixed=False))


def test_binary_file(tmp_path):
    path = _write(tmp_path, "test-de.tsv", b"Berlin\tB-LOC\n\x00\x01\x02\x89PNG\n")
    with pytest.raises(DataError, match=r"test-de\.tsv:2: binary file \(NUL byte\); expected UTF-8 text"):
        list(read_conll(path, ReadOptions(), "de", prefixed=False))


def test_raw_line_without_language_prefix(tmp_path):
    path = _write(tmp_path, "hr/test", "hr:Zagreb\tB-LOC\n\nSplit\tB-LOC\n")
    with pytest.raises(DataError, match=r"hr/test:3: token 'Split' has no language prefix; expected lang:token"):
        list(read_conll(path, ReadOptions(), None, prefixed=True))


def test_too_many_fields_and_empty_token(tmp_path):
    path = _write(tmp_path, "test-en.tsv", "Paris\tB-LOC\tx\n")
    with pytest.raises(DataError, match=r"test-en\.tsv:1: more than two tab-separated fields"):
        list(read_conll(path, ReadOptions(), "en", prefixed=False))
    path = _write(tmp_path, "test-fr.tsv", "\tO\n")
    with pytest.raises(DataError, match=r"test-fr\.tsv:1: empty token before the tab"):
        list(read_conll(path, ReadOptions(), "fr", prefixed=False))


def test_text_line_with_two_tabs(tmp_path):
    path = _write(tmp_path, "u.txt", "de\tein\tzwei\n")
    with pytest.raises(DataError, match=r"u\.txt:1: expected text or lang<TAB>text"):
        list(read_text(path, ReadOptions()))


def test_dataset_infos_fixture_is_what_the_readme_says():
    infos = json.loads(need(WIKIANN / "dataset_infos.json").read_text())
    assert infos["en"]["splits"]["train"]["num_examples"] == 20000
