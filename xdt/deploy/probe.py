"""Real sentences to compare two forms of one model on (PyTorch vs ONNX, untrimmed vs trimmed), and the padded
batches that feed them, windowed exactly as `xdt eval` windows them (`xdt.data.align.Aligner`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from xdt.data.align import Aligner
from xdt.data.sentence import Sentence

# Short real sentences in the scripts of the WikiAnn suite, so a parity check without --data still sees Latin,
# Cyrillic, Arabic, Devanagari, CJK, Greek, Hebrew and Thai text, names and numbers.
PROBE_SENTENCES: tuple[tuple[str, str], ...] = (
    ("en", "Barack Obama was born in Honolulu , Hawaii , on August 4 , 1961 ."),
    ("en", "The European Central Bank raised rates in Frankfurt on Thursday ."),
    ("de", "Angela Merkel besuchte am Montag die Siemens AG in München ."),
    ("de", "Der Rhein fließt durch Basel , Köln und Düsseldorf ."),
    ("es", "Gabriel García Márquez nació en Aracataca , Colombia ."),
    ("fi", "Helsingin yliopisto sijaitsee Suomen pääkaupungissa ."),
    ("tr", "Mustafa Kemal Atatürk , Selanik'te doğdu ."),
    ("ru", "Лев Толстой родился в Ясной Поляне в 1828 году ."),
    ("ru", "Газпром подписал контракт с Китаем в Москве ."),
    ("ar", "ولد نجيب محفوظ في القاهرة عام 1911 ."),
    ("hi", "महात्मा गांधी का जन्म पोरबंदर में हुआ था ।"),
    ("zh", "北京 是 中华人民共和国 的 首都 。"),
    ("ja", "東京 は 日本 の 首都 です 。"),
    ("el", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας ."),
    ("he", "דוד בן-גוריון נולד בפלונסק ."),
    ("th", "กรุงเทพมหานคร เป็น เมืองหลวง ของ ประเทศไทย"),
)


def probe_sentences() -> list[Sentence]:
    return [Sentence(lang, tuple(text.split())) for lang, text in PROBE_SENTENCES]


def padded(windows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids [b, L], attention_mask [b, L]) int64, right-padded to the longest window."""
    width = max(len(w) for w in windows)
    ids = np.full((len(windows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=np.int64)
    for row, w in enumerate(windows):
        ids[row, :len(w)] = w
        mask[row, :len(w)] = 1
    return ids, mask


def probe_batches(tokenizer, sentences: Sequence[Sentence], max_seq_length: int = 128,
                  batch_size: int = 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Padded batches of the sentences' windows in data order (mixed lengths, so padding is exercised)."""
    features = Aligner(tokenizer, max_seq_length).align(list(sentences))
    windows = [features.input_ids[features.offsets[k]:features.offsets[k + 1]] for k in range(features.num_windows)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(windows), batch_size):
        yield padded(windows[start:start + batch_size], pad_id)


def first_sentences(by_lang: dict[str, Sequence[Sentence]], per_lang: int) -> list[Sentence]:
    return [s for lang in sorted(by_lang) for s in list(by_lang[lang])[:per_lang]]
