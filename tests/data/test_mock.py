"""Mock data (`data.path: mock`, `tokenizer.path: mock`): deterministic multilingual XTREME-format files and a
WordPiece tokenizer trained on them, read back through the real readers, tokenizer loader and aligner."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from xdt.config import MockDataConfig, RunConfig  # noqa: E402
from xdt.data import mock  # noqa: E402
from xdt.data.align import Aligner  # noqa: E402
from xdt.data.discover import discover, read_split  # noqa: E402
from xdt.data.mock import materialize_mock, write_mock_tokenizer, write_mock_wikiann  # noqa: E402
from xdt.data.sentence import WIKIANN_LABELS  # noqa: E402
from xdt.data.tokenizer import load_tokenizer  # noqa: E402

CFG = MockDataConfig()  # the quickstart's defaults: en de ru ar hi, 400/100/100 sentences
SCRIPT_RANGES = {"ru": (0x0400, 0x04FF), "ar": (0x0600, 0x06FF), "hi": (0x0900, 0x097F), "en": (0x0041, 0x024F),
                 "de": (0x0041, 0x024F)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_mock_wikiann(tmp_path_factory.mktemp("mock") / "data", CFG)


@pytest.fixture(scope="module")
def splits(data_dir) -> dict:
    return read_split(data_dir, None)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, data_dir) -> Path:
    return write_mock_tokenizer(tmp_path_factory.mktemp("mock") / "tokenizer", data_dir, 4000)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, data_dir):
    again = _files(write_mock_wikiann(tmp_path / "again", CFG))
    assert again == _files(data_dir)
    other = _files(write_mock_wikiann(tmp_path / "other", dataclasses.replace(CFG, seed=1)))
    assert other.keys() == again.keys()
    assert all(other[name] != again[name] for name in again)


def test_xtreme_files_with_every_language_in_every_split(data_dir, splits):
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == sorted(f"{s}-{lang}.tsv" for s in ("train", "dev", "test") for lang in CFG.langs)
    assert {source.format for source in discover(data_dir)} == {"xtreme"}
    sizes = {"train": CFG.train_sentences, "dev": CFG.dev_sentences, "test": CFG.test_sentences}
    assert set(splits) == set(sizes)
    for split, n in sizes.items():
        assert sorted(splits[split]) == sorted(CFG.langs)
        for lang, sentences in splits[split].items():
            assert len(sentences) == n, (split, lang)
            assert all(s.lang == lang and s.words and len(s.tags) == len(s.words) for s in sentences)


def test_file_layout_is_token_tab_tag_with_blank_lines(data_dir):
    text = (data_dir / "dev-ru.tsv").read_text(encoding="utf-8")
    assert text.endswith("\n\n") and "\r" not in text
    for line in text.splitlines():
        assert line == "" or (line.count("\t") == 1 and " " not in line)


def test_every_wikiann_tag_occurs_in_every_language(splits):
    for split, by_lang in splits.items():
        for lang, sentences in by_lang.items():
            tags = {t for s in sentences for t in s.tags}
            if split == "train":
                assert tags == set(WIKIANN_LABELS), (split, lang)
            else:
                assert tags <= set(WIKIANN_LABELS)
            for s in sentences:  # IOB2: an I- tag continues an entity of the same type
                for prev, tag in zip(("O",) + s.tags, s.tags):
                    assert not tag.startswith("I-") or prev[2:] == tag[2:], s


def test_each_language_is_written_in_its_own_script(splits):
    train = splits["train"]
    for lang, (lo, hi) in SCRIPT_RANGES.items():
        letters = [c for s in train[lang] for w, t in zip(s.words, s.tags) if t != "O" for c in w
                   if unicodedata.category(c)[0] in "LM"]
        assert letters, lang
        outside = {c for c in letters if not lo <= ord(c) <= hi}
        assert not outside, (lang, sorted(outside)[:10])
    # the two Latin-script languages still have different lexicons: German umlauts, no shared surnames
    en = {w for s in train["en"] for w, t in zip(s.words, s.tags) if t == "B-PER"}
    de = {w for s in train["de"] for w, t in zip(s.words, s.tags) if t == "B-PER"}
    assert any(c in "äöüß" for w in de for c in w)
    assert len(en & de) < 0.1 * len(en)


def test_data_has_multiword_entities_ambiguity_and_long_sentences(splits):
    for lang, sentences in splits["train"].items():
        tagged_as: dict[str, set[str]] = {}
        for s in sentences:
            for w, t in zip(s.words, s.tags):
                tagged_as.setdefault(w, set()).add(t[2:] or "O")
        # the same word names a person (or place) in one sentence and part of an organisation in another
        assert any({"PER", "ORG"} <= kinds or {"LOC", "ORG"} <= kinds for kinds in tagged_as.values()), lang
        assert sum(len(s.words) >= mock.LONG_WORDS for s in sentences) >= CFG.train_sentences // mock.LONG_EVERY


def test_tokenizer_reloads_as_cased_fast_wordpiece(tok_dir, splits):
    assert (tok_dir / "tokenizer.json").is_file() and (tok_dir / "tokenizer_config.json").is_file()
    tok = load_tokenizer(tok_dir)
    assert tok.is_fast
    assert (tok.cls_token, tok.sep_token, tok.unk_token, tok.pad_token, tok.mask_token) == \
        ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")
    assert None not in (tok.cls_token_id, tok.sep_token_id, tok.unk_token_id, tok.pad_token_id, tok.mask_token_id)
    assert 1000 < len(tok) <= 4000
    assert tok.tokenize("Corp") == ["Corp"]  # not lower-cased (BertTokenizerFast would reload it lower-cased)
    for lang in CFG.langs:
        word = splits["train"][lang][0].words[0]
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert ids and tok.unk_token_id not in ids, (lang, word)
    ids = tok("Corp")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert any(p.startswith("##") for p in tok.convert_ids_to_tokens(range(len(tok))))


def test_two_builds_of_the_vocabulary_are_byte_identical(tmp_path, data_dir, tok_dir):
    """The quickstart's report depends on its generated vocabulary: the same data must give the same files (the
    `tokenizers` trainer alone numbered `##` pieces in hash-map order and broke merge ties with those numbers)."""
    for build in ("again", "and again"):
        assert _files(write_mock_tokenizer(tmp_path / build, data_dir, 4000)) == _files(tok_dir), build


def test_aligner_keeps_every_word_and_windows_long_sentences(tok_dir, splits):
    aligner = Aligner(load_tokenizer(tok_dir), 32, {t: i for i, t in enumerate(WIKIANN_LABELS)})
    for split, by_lang in splits.items():
        sentences = [s for lang in CFG.langs for s in by_lang[lang]]
        features = aligner.align(sentences)
        assert features.aligned_words() == sum(len(s.words) for s in sentences), split
        assert int(features.unk_words.sum()) == 0, split
        assert features.window_lengths().max() <= 32
        windows = np.bincount(features.window_sentence, minlength=len(sentences))
        assert windows.max() > 1, split  # at least one sentence needs more than one window at 32


def test_materialize_mock_writes_once_and_reuses_the_cache(tmp_path, monkeypatch):
    cfg = RunConfig()
    cfg.data.mock = MockDataConfig(langs=["en", "hi"], train_sentences=40, dev_sentences=10, test_sentences=10)
    cfg.tokenizer.mock_vocab_size = 500
    data_dir, tok_dir = materialize_mock(cfg, tmp_path)
    assert data_dir.parent == tmp_path and tok_dir.parent == tmp_path
    assert sorted(read_split(data_dir, "dev")["dev"]) == ["en", "hi"]
    assert load_tokenizer(tok_dir).is_fast
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([data_dir.name, tok_dir.name])  # no temp left
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated instead of reusing the cache")

    monkeypatch.setattr(mock, "write_mock_wikiann", fail)
    monkeypatch.setattr(mock, "write_mock_tokenizer", fail)
    assert materialize_mock(cfg, tmp_path) == (data_dir, tok_dir)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    monkeypatch.undo()

    cfg.data.mock.seed = 7  # another mock config: another entry for the data and for its tokenizer
    data_7, tok_7 = materialize_mock(cfg, tmp_path)
    assert data_7 != data_dir and tok_7 != tok_dir

    real = RunConfig()
    real.data.path, real.tokenizer.path = str(data_dir), str(tok_dir)
    assert materialize_mock(real, tmp_path / "unused") == (data_dir, tok_dir)
    assert not (tmp_path / "unused").exists()


def test_mock_tokenizer_over_real_data_and_bad_mock_configs(tmp_path):
    cfg = RunConfig()
    cfg.data.path = str(write_mock_wikiann(tmp_path / "real", MockDataConfig(langs=["de"], train_sentences=30,
                                                                              dev_sentences=5, test_sentences=5)))
    cfg.tokenizer.mock_vocab_size = 300
    data_dir, tok_dir = materialize_mock(cfg, tmp_path / "cache")
    assert data_dir == Path(cfg.data.path) and tok_dir.parent == tmp_path / "cache"
    assert load_tokenizer(tok_dir).is_fast

    from xdt.errors import XdtError

    with pytest.raises(XdtError, match="no mock generator for 'xx'"):
        write_mock_wikiann(tmp_path / "bad", MockDataConfig(langs=["xx"]))
    with pytest.raises(XdtError, match="train_sentences"):
        write_mock_wikiann(tmp_path / "bad", MockDataConfig(train_sentences=0))
