"""Transfer-set building blocks on small synthetic inputs: sampling, de-dup, dictionaries, config, bad input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from xdt.errors import ConfigError, DataError, XdtError
from xdt.transfer.build import build_transfer, read_transfer
from xdt.transfer.codeswitch import CodeSwitcher, Item
from xdt.transfer.config import CodeSwitchConfig, load_transfer_config
from xdt.transfer.dedup import Deduplicator, is_set, normalize
from xdt.transfer.dictionary import Dictionaries, MuseDictionary
from xdt.transfer.sampling import GroupSelector, allocate, smoothed_probabilities
from xdt.transfer.words import match_case, split_affixes

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- sampling


def test_smoothed_probabilities_follow_n_to_alpha():
    p = smoothed_probabilities({"a": 100.0, "b": 25.0}, 0.5)
    assert p["a"] == pytest.approx(10 / 15) and p["b"] == pytest.approx(5 / 15)
    assert smoothed_probabilities({"a": 100.0, "b": 1.0}, 0.0) == {"a": 0.5, "b": 0.5}


def test_allocate_is_exact_and_respects_caps():
    out = allocate(1000, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": None, "b": None, "c": None})
    assert out == {"a": 500, "b": 300, "c": 200}
    out = allocate(1000, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": None, "b": None, "c": 50})
    assert out["c"] == 50 and sum(out.values()) == 1000
    assert out["a"] / out["b"] == pytest.approx(5 / 3, rel=0.01)  # the rest keeps the proportions
    out = allocate(1000, {"a": 1.0, "b": 1.0}, {"a": 100, "b": 200})  # sources cannot fill the size
    assert out == {"a": 100, "b": 200}
    out = allocate(10, {"a": 1.0, "b": 1.0, "c": 1.0}, {})
    assert sum(out.values()) == 10 and max(out.values()) - min(out.values()) == 1


def test_group_selector_takes_the_exact_quota_uniformly():
    rng = random.Random(0)
    hits = [0] * 100
    for _ in range(400):
        sel = GroupSelector(100, 30, rng)
        takes = [sel.take() for _ in range(100)]
        assert sum(takes) == 30 and set(takes) <= {0, 1}
        for i, t in enumerate(takes):
            hits[i] += t
    assert min(hits) > 60 and max(hits) < 190  # ~120 each: no position favoured
    sel = GroupSelector(10, 25, rng)  # upsampling: 2 or 3 copies each
    takes = [sel.take() for _ in range(10)]
    assert sum(takes) == 25 and set(takes) <= {2, 3}


# ---------------------------------------------------------------------------------------------- dedup, words


def test_normalize_ignores_case_width_whitespace_and_punctuation():
    assert normalize("Hello, World!") == normalize("hello world") == normalize("ＨＥＬＬＯ  world.")
    assert normalize("Straße") == normalize("STRASSE")
    assert normalize("Hello World") != normalize("Hello Word")


def test_deduplicator_drops_later_copies_only(tmp_path):
    sentences = [("en", ("a", "b")), ("en", ("A", "b", "!")), ("en", ("a", "b")), ("de", ("a", "b")),
                 ("en", ("c",))]
    for mode, dropped_positions in (("exact", {2}), ("normalized", {1, 2})):
        dd = Deduplicator(mode, tmp_path / mode)
        for pos, (lang, words) in enumerate(sentences):
            dd.add(lang, words, pos, 0 if lang == "en" else 1)
        bits, per_group = dd.finish(len(sentences), 2)
        assert {p for p in range(len(sentences)) if is_set(bits, p)} == dropped_positions
        assert per_group.tolist() == [len(dropped_positions), 0]
        assert not (tmp_path / mode).exists()


def test_affixes_and_case():
    assert split_affixes("«Haus,") == ("«", "Haus", ",")
    assert split_affixes("हिंदी।") == ("", "हिंदी", "।")  # vowel signs stay in the word
    assert split_affixes("...") == ("...", "", "")
    assert match_case("House", "haus") == "Haus"
    assert match_case("NATO", "otan") == "OTAN"
    assert match_case("house", "Haus") == "Haus"


# ---------------------------------------------------------------------------------------------- dictionaries


def test_muse_dictionary_and_pivot(tmp_path):
    de = MuseDictionary.load("de", _write(tmp_path / "en-de.txt", "house haus\nhouse heim\nthe der\nthe die\n"))
    fr = MuseDictionary.load("fr", _write(tmp_path / "en-fr.txt", "house maison\nhome maison\nthe le\n"))
    d = Dictionaries({"de": de, "fr": fr})
    assert d.translations("House", "en", "de") == ("haus", "heim")
    assert d.translations("haus", "de", "en") == ("house",)
    assert d.translations("Haus", "de", "fr") == ("maison",)  # de -> en -> fr
    assert d.translations("maison", "fr", "de") == ("haus", "heim")
    assert d.translations("nothing", "en", "de") == ()


def test_dictionary_line_with_one_column_names_file_and_line(tmp_path):
    path = _write(tmp_path / "en-de.txt", "house haus\nbroken\n")
    with pytest.raises(DataError, match=r"en-de\.txt:2: 1 column"):
        MuseDictionary.load("de", path)
    with pytest.raises(DataError, match="empty"):
        MuseDictionary.load("de", _write(tmp_path / "en-fr.txt", "\n\n"))


def test_codeswitch_keeps_entities_punctuation_and_case(tmp_path):
    de = MuseDictionary.load("de", _write(tmp_path / "en-de.txt", "house haus\nred rot\nparis paris2\n"))
    cs = CodeSwitcher(CodeSwitchConfig(rate=1, word_ratio=1.0), Dictionaries({"de": de}), ["de"], True)
    item = Item("en", ("Paris", "Red", "house,"), ("B-LOC", "O", "O"), "s")
    change = cs.apply(item, random.Random(0))
    assert change.words == ("Paris", "Rot", "haus,")
    assert change.changed == ((1, "de"), (2, "de"))


# ---------------------------------------------------------------------------------------------- config


def test_every_shipped_transfer_config_and_recipe_parses():
    files = sorted((ROOT / "configs" / "transfer").glob("*.yaml"))
    recipes = sorted((ROOT / "multilingual" / "augmentation").glob("*.yaml"))
    assert files and recipes
    for file in files:
        cfg = load_transfer_config(file, check=False)
        assert cfg.sources, file
    for recipe in recipes:
        cfg = load_transfer_config(data={"recipe": recipe.stem}, check=False)
        assert cfg.recipe == recipe.stem


def test_recipe_is_the_base_that_config_and_overrides_change(tmp_path):
    src = _write(tmp_path / "t.txt", "en\tone two three\n")
    cfg = load_transfer_config(data={"recipe": "codeswitch", "sources": [{"path": str(src)}],
                                     "augment": {"codeswitch": {"word_ratio": 0.5}},
                                     "resources": {"dictionaries": str(tmp_path)}},
                               overrides=["augment.codeswitch.choose=word", "sampling.size=10"])
    assert cfg.augment.codeswitch.rate == 1.0  # from the recipe
    assert cfg.augment.codeswitch.word_ratio == 0.5  # from the config
    assert cfg.augment.codeswitch.choose == "word" and cfg.sampling.size == 10  # from the overrides


@pytest.mark.parametrize("data, message", [
    ({}, "sources: empty"),
    ({"sources": [{"path": "x"}], "bogus": 1}, "bogus: unknown key"),
    ({"sources": [{"path": "/nonexistent/file"}]}, "sources.0.path: path"),
    ({"sources": [{"path": "."}], "sampling": {"alpha": 2}}, "sampling.alpha"),
    ({"sources": [{"path": "."}], "augment": {"codeswitch": {"rate": 1}}}, "resources.dictionaries"),
    ({"sources": [{"path": "."}], "recipe": "nope"}, "recipe: no recipe 'nope'"),
    ({"sources": [{"path": "."}], "filters": {"dedup": "fuzzy"}}, "filters.dedup"),
])
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_transfer_config(data=data)


# ---------------------------------------------------------------------------------------------- bad input


def test_empty_and_blank_sources_are_errors(tmp_path):
    blank = _write(tmp_path / "blank.txt", "\n\n")
    with pytest.raises(DataError, match="no sentences"):
        build_transfer(load_transfer_config(data={"sources": [{"path": str(blank), "lang": "en"}]}), tmp_path / "o")
    empty = _write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match="empty"):
        build_transfer(load_transfer_config(data={"sources": [{"path": str(empty), "lang": "en"}]}), tmp_path / "o")
    nolang = _write(tmp_path / "nolang.txt", "a sentence without a language\n")
    with pytest.raises(DataError, match="names no language"):
        build_transfer(load_transfer_config(data={"sources": [{"path": str(nolang)}]}), tmp_path / "o")
    short = _write(tmp_path / "short.txt", "en\tone\n")
    with pytest.raises(XdtError, match="no sentence passes the filters"):
        build_transfer(load_transfer_config(data={"sources": [{"path": str(short)}],
                                                  "filters": {"min_words": 3}}), tmp_path / "o")


def test_missing_dictionaries_are_reported_or_fatal(tmp_path):
    src = _write(tmp_path / "s.txt", "en\tthe red house\nxx\tsome other words\nde\tdas rote haus\n")
    dicts = tmp_path / "muse"
    _write(dicts / "en-de.txt", "the das\nred rote\nhouse haus\n")
    base = {"seed": 1, "sources": [{"path": str(src)}], "filters": {"dedup": "none"},
            "augment": {"codeswitch": {"rate": 1.0, "word_ratio": 1.0}}, "resources": {"dictionaries": str(dicts)}}
    result = build_transfer(load_transfer_config(data=base), tmp_path / "out")
    aug = result.manifest["augmentation"]
    assert "xx" in aug["skipped_langs"] and "en-xx.txt" in aug["skipped_langs"]["xx"]
    assert aug["skipped_copies_no_dictionary"] == {"xx": 1}
    records = list(read_transfer(result.out))
    switched = {r["lang"]: r["words"] for r in records if r["augmentation"] == "codeswitch"}
    assert switched == {"en": ["das", "rote", "haus"], "de": ["the", "red", "house"]}
    with pytest.raises(XdtError, match="no dictionary for sentence language"):
        build_transfer(load_transfer_config(data=base, overrides=["augment.codeswitch.missing_dictionary=error"]),
                       tmp_path / "out2")
    with pytest.raises(XdtError, match="no dictionary for target language 'fr'"):
        build_transfer(load_transfer_config(data=base, overrides=["augment.codeswitch.targets=[fr]"]),
                       tmp_path / "out3")


def test_out_must_be_a_transfer_folder(tmp_path):
    src = _write(tmp_path / "s.txt", "en\tthe red house\n")
    other = tmp_path / "other"
    _write(other / "keep.txt", "not mine")
    with pytest.raises(XdtError, match="exists and is not empty; choose another --out or pass --overwrite"):
        build_transfer(load_transfer_config(data={"sources": [{"path": str(src)}]}), other)
    assert (other / "keep.txt").exists()


def test_cli_build_and_stats(tmp_path, capsys):
    import argparse
    import json

    from xdt.transfer.cli import add_transfer_parser

    src = _write(tmp_path / "s.txt", "en\tthe red house\nen\tthe red house\nde\tdas rote haus ist da\n")
    cfg = _write(tmp_path / "c.yaml", yaml.safe_dump({"sources": [{"path": str(src)}]}))
    parser = argparse.ArgumentParser()
    add_transfer_parser(parser.add_subparsers())
    args = parser.parse_args(["transfer", "build", str(cfg), "--out", str(tmp_path / "o"), "seed=3", "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lines"] == 2 and summary["duplicates"] == 1
    args = parser.parse_args(["transfer", "stats", str(tmp_path / "o"), "--json"])
    assert args.func(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["by_lang"] == {"de": 1, "en": 1} and stats["length"]["max"] == 5
    args = parser.parse_args(["transfer", "stats", str(tmp_path / "o")])
    assert args.func(args) == 0 and "2 sentences" in capsys.readouterr().out
