"""Transfer sets on the real data of ../shared/data: MUSE dictionaries, Tatoeba text, WikiAnn training files.

Checked: every replaced word is a translation the dictionary lists (directly, or through English); tags stay
aligned in labeled.jsonl; language shares equal p_l ~ n_l^alpha (quotas are exact: |share - p_l| <= 1/size, the
test allows 0.002); the same seed gives byte-identical files; exact and normalized copies are removed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from xdt.data.discover import read_split
from xdt.transfer import build_mock_transfer, build_transfer, load_transfer_config, read_transfer, transfer_stats
from xdt.transfer.words import split_affixes

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MUSE = DATA / "dicts" / "muse"
TATOEBA = DATA / "text" / "tatoeba"
XTREME = DATA / "wikiann" / "xtreme"
MBERT = DATA / "vocab" / "bert-base-multilingual-cased"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (tests read ../shared/data beside the project)")
    return path


def _muse(lang: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """en -> lang and lang -> en, read here independently of xdt."""
    fwd: dict[str, set[str]] = {}
    inv: dict[str, set[str]] = {}
    for line in (MUSE / f"en-{lang}.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            en, xx = line.split()
            fwd.setdefault(en.lower(), set()).add(xx.lower())
            inv.setdefault(xx.lower(), set()).add(en.lower())
    return fwd, inv


def _allowed(core: str, src: str, dst: str, dicts: dict) -> set[str]:
    word = core.lower()
    english = {word} if src == "en" else dicts[src][1].get(word, set())
    if dst == "en":
        return english
    return {t for e in english for t in dicts[dst][0].get(e, set())}


LANGS = ["en", "de", "ru", "hi"]


@pytest.fixture(scope="module")
def codeswitched(tmp_path_factory):
    """WikiAnn train (labels stripped) + Tatoeba, code-switched into de/ru/hi/en, unshuffled so copies follow
    their original."""
    need(MUSE), need(TATOEBA), need(XTREME)
    out = tmp_path_factory.mktemp("cs") / "set"
    data = {
        "seed": 7, "recipe": "codeswitch",
        "sources": [{"name": "wikiann", "path": str(XTREME), "kind": "labeled", "langs": LANGS},
                    {"name": "tatoeba", "path": str(TATOEBA), "pattern": "tatoeba.{iso3}-eng.{iso3}",
                     "langs": LANGS}],
        "sampling": {"size": 4000, "alpha": 0.5, "max_per_lang": 1500},
        "augment": {"codeswitch": {"targets": LANGS, "choose": "word", "word_ratio": 0.4}},
        "resources": {"dictionaries": str(MUSE)},
        "output": {"shuffle": False},
    }
    return build_transfer(load_transfer_config(data=data), out)


def test_every_switched_word_is_a_dictionary_translation(codeswitched):
    dicts = {lang: _muse(lang) for lang in LANGS if lang != "en"}
    records = list(read_transfer(codeswitched.out))
    original = None
    switched = 0
    for r in records:
        if r["augmentation"] == "none":
            original = r
            continue
        assert r["augmentation"] == "codeswitch" and r["lang"] == original["lang"]
        assert len(r["words"]) == len(original["words"])
        changed = dict(r["changed"])
        assert changed
        for i, (old, new) in enumerate(zip(original["words"], r["words"])):
            if i not in changed:
                assert old == new
                continue
            switched += 1
            target = changed[i]
            assert target != r["lang"] and target in LANGS
            p_old, core_old, s_old = split_affixes(old)
            p_new, core_new, s_new = split_affixes(new)
            assert (p_old, s_old) == (p_new, s_new), (old, new)  # punctuation kept
            assert core_new.lower() in _allowed(core_old, r["lang"], target, dicts), (old, new, r["lang"], target)
            assert core_new.lower() != core_old.lower()
            if core_old[:1].isupper() and core_new[:1].lower() != core_new[:1].upper():  # a script with case
                assert core_new[:1].isupper(), (old, new)  # case kept
    assert switched > 1000
    stats = transfer_stats(codeswitched.out)
    assert stats["codeswitch"]["switched_words"] == switched
    assert set(stats["codeswitch"]["into"]) == set(LANGS)  # per-word targets reach every language
    assert 0.1 < stats["codeswitch"]["share_in_codeswitched_sentences"] <= 0.5


def test_labeled_copies_keep_their_tags_aligned(codeswitched):
    gold = {}
    for lang, sentences in read_split(XTREME, "train", LANGS)["train"].items():
        for s in sentences:
            gold[(lang, s.words)] = s.tags
    transfer = iter(read_transfer(codeswitched.out))
    labeled = list(read_transfer(codeswitched.labeled))
    assert labeled and all("tags" in r for r in labeled)
    original = None
    checked = 0
    wikiann_copies = [r for r in transfer if r["augmentation"] == "none" or r["source"] == "wikiann"]
    for r in wikiann_copies:
        if r["augmentation"] == "none":
            original = r
        elif r["source"] == "wikiann":
            lab = labeled[checked]
            checked += 1
            assert lab["words"] == r["words"] and lab["changed"] == r["changed"]
            tags = gold[(original["lang"], tuple(original["words"]))]
            assert tuple(lab["tags"]) == tags and len(lab["tags"]) == len(lab["words"])
            for i, _ in lab["changed"]:
                assert tags[i] == "O"  # entities are never switched (entities: keep)
    assert checked == len(labeled) > 100
    manifest = json.loads((codeswitched.out / "manifest.json").read_text())
    assert manifest["files"]["labeled"]["lines"] == len(labeled)
    assert all(f["sha256"] and f["bytes"] for s in manifest["sources"] for f in s["files"])


@pytest.mark.slow
def test_language_shares_match_smoothed_probabilities(tmp_path):
    langs = ["af", "hi", "tl", "lt", "et"]  # 5k, 5k, 10k, 10k, 15k training sentences
    need(XTREME)
    size, alpha = 30000, 0.5
    data = {"seed": 3, "sources": [{"path": str(XTREME), "kind": "labeled", "langs": langs}],
            "sampling": {"size": size, "alpha": alpha, "upsample": True},
            "filters": {"dedup": "exact", "min_words": 2, "max_words": 100}}
    result = build_transfer(load_transfer_config(data=data), tmp_path / "set")
    # n_l computed here independently: filtered, exact duplicates removed
    n = {}
    for lang, sentences in read_split(XTREME, "train", langs)["train"].items():
        n[lang] = len({s.words for s in sentences if 2 <= len(s.words) <= 100})
    total = sum(v ** alpha for v in n.values())
    counts = Counter(r["lang"] for r in read_transfer(result.out))
    assert sum(counts.values()) == size
    for lang in langs:
        assert abs(counts[lang] / size - n[lang] ** alpha / total) <= 0.002, (lang, counts[lang], n[lang])
    # the same languages without upsampling: af and hi cannot fill their share, the others make up the size
    result = build_transfer(load_transfer_config(data=data, overrides=["sampling.upsample=false"]),
                            tmp_path / "set2")
    counts = Counter(r["lang"] for r in read_transfer(result.out))
    assert sum(counts.values()) == size
    saturated = result.manifest["sampling"]["saturated"]
    assert saturated and all(counts[lang] == n[lang] for lang in saturated)
    rest = [lang for lang in langs if lang not in saturated]
    for a, b in zip(rest, rest[1:]):  # the unsaturated ones keep the p_l ratios
        assert counts[a] / counts[b] == pytest.approx((n[a] / n[b]) ** alpha, rel=0.01)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    need(TATOEBA), need(MUSE)
    data = {"seed": 11, "recipe": "codeswitch",
            "sources": [{"path": str(TATOEBA), "pattern": "tatoeba.{iso3}-eng.{iso3}",
                         "langs": ["de", "fr", "es"]}],
            "sampling": {"size": 1500, "alpha": 0.3},
            "augment": {"codeswitch": {"targets": ["en", "de", "fr", "es"]}, "mask": {"rate": 0.5}},
            "resources": {"dictionaries": str(MUSE)}, "output": {"bucket_lines": 500}}
    runs = [build_transfer(load_transfer_config(data=data, overrides=[f"seed={seed}"]), tmp_path / f"r{i}")
            for i, seed in enumerate((11, 11, 12))]
    first, again, other = (r.out for r in runs)
    for name in ("transfer.jsonl", "manifest.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "transfer.jsonl").read_bytes() != (other / "transfer.jsonl").read_bytes()
    assert runs[0].manifest["counts"]["by_augmentation"]["mask"] > 500


def test_dedup_removes_exact_and_normalized_copies(tmp_path):
    lines = [s for s in (need(TATOEBA) / "tatoeba.deu-eng.deu").read_text(encoding="utf-8").splitlines()
             if s.strip()][:300]
    unique = len(set(lines))
    exact = lines[:100]
    normalized = [s.upper().replace(",", " ,").rstrip(".!?") + " !" for s in lines[100:200]]
    src = tmp_path / "de.txt"
    src.write_text("\n".join(lines + exact + normalized) + "\n", encoding="utf-8")
    data = {"sources": [{"path": str(src), "lang": "de"}], "filters": {"dedup": "exact"}}
    kept = {}
    for mode in ("none", "exact", "normalized"):
        result = build_transfer(load_transfer_config(data=data, overrides=[f"filters.dedup={mode}"]),
                                tmp_path / mode)
        kept[mode] = [" ".join(r["words"]) for r in read_transfer(result.out)]
    assert len(kept["none"]) == 500
    assert len(kept["exact"]) == unique + 100 and len(set(kept["exact"])) == len(kept["exact"])
    assert len(kept["normalized"]) == unique
    assert not any(s.isupper() for s in kept["normalized"] if len(s) > 20)


def test_replace_noise_draws_words_of_the_same_language(tmp_path):
    need(TATOEBA)
    data = {"seed": 2, "recipe": "tinybert_noise",
            "sources": [{"path": str(TATOEBA), "pattern": "tatoeba.{iso3}-eng.{iso3}", "langs": ["de", "ru"]}],
            "output": {"shuffle": False}}
    result = build_transfer(load_transfer_config(data=data), tmp_path / "set")
    vocab: dict[str, set[str]] = {}
    for lang, iso3 in (("de", "deu"), ("ru", "rus")):
        text = (TATOEBA / f"tatoeba.{iso3}-eng.{iso3}").read_text(encoding="utf-8").split()
        vocab[lang] = {split_affixes(w)[1].lower() for w in text}
    seen = Counter()
    for r in read_transfer(result.out):
        for i, what in r["changed"]:
            seen[what] += 1
            core = split_affixes(r["words"][i])[1]
            if what == "mask":
                assert r["words"][i] == "[MASK]"
            else:
                assert core.lower() in vocab[r["lang"]]
    assert seen["mask"] > 500 and seen["replace"] > 500


def test_mock_builder_on_a_wikiann_folder(tmp_path):
    need(XTREME), need(MUSE)
    folder = tmp_path / "data"
    folder.mkdir()
    for lang in ("en", "de", "hi"):  # a small WikiAnn-format training folder, as the quickstart writes one
        blocks = (XTREME / f"train-{lang}.tsv").read_text(encoding="utf-8").split("\n\n")[:200]
        (folder / f"train-{lang}.tsv").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    result = build_mock_transfer(folder, MUSE, tmp_path / "set", seed=1,
                                 codeswitch={"targets": ["en", "de", "hi", "fr"]})
    counts = result.manifest["counts"]["by_lang_augmentation"]
    assert set(counts) == {"en", "de", "hi"} and all(c["codeswitch"] > 20 for c in counts.values())
    assert result.labeled is not None


@pytest.mark.slow
def test_mlm_replacement_with_a_tiny_masked_lm(tmp_path):
    need(MBERT), need(TATOEBA)
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(MBERT))
    model_dir = tmp_path / "mlm"
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = {"seed": 4, "sources": [{"path": str(TATOEBA), "pattern": "tatoeba.{iso3}-eng.{iso3}",
                                    "langs": ["de", "hi"]}],
            "sampling": {"size": 200}, "augment": {"mlm": {"rate": 1.0, "word_ratio": 0.3, "batch_size": 16}},
            "resources": {"mlm": str(model_dir)}, "output": {"shuffle": False}}
    result = build_transfer(load_transfer_config(data=data), tmp_path / "set")
    vocab = tok.get_vocab()
    records = list(read_transfer(result.out))
    original = None
    replaced = 0
    for r in records:
        if r["augmentation"] == "none":
            original = r
            continue
        assert r["augmentation"] == "mlm" and len(r["words"]) == len(original["words"])
        for i, what in r["changed"]:
            assert what == "mlm"
            old, new = split_affixes(original["words"][i])[1], split_affixes(r["words"][i])[1]
            assert new.lower() != old.lower()
            assert new in vocab or new[:1].lower() + new[1:] in vocab or new.lower() in vocab
            assert not new.startswith("##") and not new.startswith("[")
            replaced += 1
    assert replaced > 100
