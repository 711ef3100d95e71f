"""Alignment with the real mBERT tokenizer: labels on first sub-words, no word lost or doubled, windows, cache."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, need
from xdt.data.align import IGNORE_INDEX, Aligner
from xdt.data.cache import align_cached, file_digest, load_aligned
from xdt.data.inspect import inspect_data
from xdt.data.sentence import WIKIANN_LABELS, Sentence
from xdt.errors import XdtError

LABEL2ID = {t: i for i, t in enumerate(WIKIANN_LABELS)}


def _slots(features, k):
    w = features.window(k)
    return [(int(i), int(l)) for i, l in zip(w["word_index"], w["labels"]) if i >= 0]


def test_label_on_first_subword_only(mbert_tokenizer):
    s = Sentence("de", ("Die", "Schifffahrtsgesellschaft", "Hamburg"), ("O", "B-ORG", "B-LOC"))
    f = Aligner(mbert_tokenizer, 32, LABEL2ID).align([s])
    w = f.window(0)
    tokens = mbert_tokenizer.convert_ids_to_tokens(w["input_ids"].tolist())
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[1:6] == ["Die", "Schiff", "##fahrt", "##sgesellschaft", "Hamburg"]
    assert w["labels"].tolist() == [IGNORE_INDEX, LABEL2ID["O"], LABEL2ID["B-ORG"], IGNORE_INDEX, IGNORE_INDEX,
                                    LABEL2ID["B-LOC"], IGNORE_INDEX]
    assert w["word_index"].tolist() == [-1, 0, 1, -1, -1, 2, -1]


def test_word_that_tokenizes_to_nothing_becomes_unk(mbert_tokenizer):
    s = Sentence("en", ("Hello", "\u200b", "world"), ("O", "B-PER", "O"))
    enc = mbert_tokenizer(["\u200b"], is_split_into_words=True, add_special_tokens=False)
    assert enc["input_ids"] == []  # the standard recipe would silently lose this word
    f = Aligner(mbert_tokenizer, 32, LABEL2ID).align([s])
    assert _slots(f, 0) == [(0, 0), (1, LABEL2ID["B-PER"]), (2, 0)]
    unk_pos = f.window(0)["word_index"].tolist().index(1)
    assert f.window(0)["input_ids"][unk_pos] == mbert_tokenizer.unk_token_id
    assert f.unk_words.tolist() == [1]


def test_long_sentence_split_into_windows_every_word_once(mbert_tokenizer):
    words = tuple(f"Wort{i}" for i in range(60))  # several sub-words each
    s = Sentence("de", words, tuple("O" if i % 3 else "B-PER" for i in range(60)))
    f = Aligner(mbert_tokenizer, 16, LABEL2ID).align([s])
    assert f.num_windows > 1
    assert f.window_lengths().max() <= 16
    seen = [i for k in range(f.num_windows) for i, _ in _slots(f, k)]
    assert seen == list(range(60))
    labels = [lab for k in range(f.num_windows) for _, lab in _slots(f, k)]
    assert labels == [LABEL2ID[t] for t in s.tags]


def test_word_longer_than_a_window_keeps_its_first_subwords(mbert_tokenizer):
    long_word = "Xqzjvbkwxqzjvbkw"  # 16 sub-words; BERT turns words over 100 characters into [UNK]
    s = Sentence("de", ("Ein", long_word, "Ende"), ("O", "B-ORG", "O"))
    f = Aligner(mbert_tokenizer, 8, LABEL2ID).align([s])
    assert f.window_lengths().max() <= 8
    assert [i for k in range(f.num_windows) for i, _ in _slots(f, k)] == [0, 1, 2]
    assert f.truncated_words.tolist() == [1]


def test_unlabeled_sentences_get_slots_without_labels(mbert_tokenizer):
    f = Aligner(mbert_tokenizer, 32, LABEL2ID).align([Sentence("en", ("a", "b"), None)])
    assert f.aligned_words() == 2 and (f.labels == IGNORE_INDEX).all()


def test_tag_outside_label_map_is_a_clear_error(mbert_tokenizer):
    with pytest.raises(XdtError, match=r"tag 'B-MISC' is not among the model's labels"):
        Aligner(mbert_tokenizer, 32, LABEL2ID).align([Sentence("en", ("x",), ("B-MISC",))])


def test_too_small_max_seq_length(mbert_tokenizer):
    with pytest.raises(XdtError, match="max_seq_length 2: expected at least 3"):
        Aligner(mbert_tokenizer, 2)


def test_cache_round_trip_and_key(tmp_path, mbert_tokenizer):
    path = need(SHARED_DATA / "wikiann" / "xtreme" / "test-tl.tsv")
    from xdt.data.readers import ReadOptions, read_conll

    sentences = list(read_conll(path, ReadOptions(), "tl", prefixed=False))
    aligner = Aligner(mbert_tokenizer, 32, LABEL2ID)
    fresh = align_cached(sentences, aligner, file_digest(path), tmp_path)
    entries = list((tmp_path / "aligned").iterdir())
    assert len(entries) == 1 and (entries[0] / "done").exists()
    cached = align_cached(sentences, aligner, file_digest(path), tmp_path)
    assert isinstance(cached.input_ids, np.memmap)
    for name in ("input_ids", "labels", "word_index", "offsets", "window_sentence"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(cached, name))
    # another max length is another entry; an entry without its `done` marker is never read
    align_cached(sentences, Aligner(mbert_tokenizer, 128, LABEL2ID), file_digest(path), tmp_path)
    assert len(list((tmp_path / "aligned").iterdir())) == 2
    (entries[0] / "done").unlink()
    assert load_aligned(entries[0]) is None


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.timeout(1800)  # the slowest test of the suite: 265 s on a loaded 2-core machine (the default is 900)
@pytest.mark.parametrize("max_len", [32, 128])
@pytest.mark.parametrize("layout", ["xtreme", "raw"])
def test_every_word_of_every_real_split_is_aligned(mbert_tokenizer, max_len, layout, tmp_path):
    """The issue's acceptance check: aligned_words == words for every language and split in ../shared/data."""
    path = need(SHARED_DATA / "wikiann" / layout)
    result = inspect_data(path, None, aligner=Aligner(mbert_tokenizer, max_len), cache_dir=None)
    assert set(result["splits"]) == {"train", "dev", "test"}
    checked = 0
    for split, block in result["splits"].items():
        for lang, stats in block["languages"].items():
            assert stats["aligned_words"] == stats["words"], (split, lang)
            assert stats["windows"] >= stats["sentences"]
            checked += 1
    assert checked == (26 if layout == "xtreme" else 4) * 3
    if max_len == 32:  # long sentences really are split at 32 sub-words
        assert sum(b["languages"][lang]["split_sentences"] for b in result["splits"].values()
                   for lang in b["languages"]) > 0
