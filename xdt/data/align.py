"""Word/sub-word alignment through a fast tokenizer's `word_ids()`, with windows so that no word is lost.

The standard HF recipe (`truncation=True`, label on the first sub-word) drops every word past `max_seq_length`
and, silently, every word the tokenizer turns into nothing (zero-width or combining characters). Here:
- each word's label sits on its first sub-word; the others get -100;
- a word that tokenizes to nothing becomes [UNK], so it still has a prediction slot;
- a sentence longer than `max_seq_length - 2` sub-words is split into consecutive windows at word boundaries;
  a single word longer than a whole window keeps its first `max_seq_length - 2` sub-words.
Every word of every sentence therefore has exactly one prediction slot (`word_index >= 0`), in exactly one window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from xdt.data.sentence import Sentence
from xdt.errors import XdtError

IGNORE_INDEX = -100  # torch's cross_entropy default ignore_index


@dataclass
class AlignedFeatures:
    """Ragged windows stored flat: window k spans `offsets[k]:offsets[k+1]` of the per-token arrays."""

    input_ids: np.ndarray  # int32 [tokens], [CLS] ... [SEP] per window
    labels: np.ndarray  # int16 [tokens], label id on first sub-words, IGNORE_INDEX elsewhere
    word_index: np.ndarray  # int32 [tokens], index of the word in its sentence on first sub-words, -1 elsewhere
    offsets: np.ndarray  # int64 [windows + 1]
    window_sentence: np.ndarray  # int32 [windows], index of the sentence the window belongs to
    sentence_words: np.ndarray  # int32 [sentences], words per sentence
    sentence_subwords: np.ndarray  # int32 [sentences], sub-words per sentence (without specials, before windowing)
    unk_words: np.ndarray  # int32 [sentences], words whose only sub-word is [UNK]
    truncated_words: np.ndarray  # int32 [sentences], words longer than a window (trailing sub-words dropped)

    @property
    def num_windows(self) -> int:
        return len(self.offsets) - 1

    def window(self, k: int) -> dict[str, np.ndarray]:
        lo, hi = self.offsets[k], self.offsets[k + 1]
        return {"input_ids": self.input_ids[lo:hi], "labels": self.labels[lo:hi],
                "word_index": self.word_index[lo:hi], "sentence": int(self.window_sentence[k])}

    def window_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def aligned_words(self) -> int:
        return int((self.word_index >= 0).sum())


class Aligner:
    def __init__(self, tokenizer, max_seq_length: int, label2id: Mapping[str, int] | None = None,
                 batch_size: int = 2048):
        if not getattr(tokenizer, "is_fast", False):
            raise XdtError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; word_ids() needs one "
                           "(a folder with tokenizer.json, or vocab.txt for a BERT WordPiece vocabulary)")
        if max_seq_length < 3:
            raise XdtError(f"max_seq_length {max_seq_length}: expected at least 3 ([CLS], one sub-word, [SEP])")
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.label2id = dict(label2id) if label2id is not None else None
        self.batch_size = batch_size
        self.cls = tokenizer.cls_token_id
        self.sep = tokenizer.sep_token_id
        self.unk = tokenizer.unk_token_id
        if None in (self.cls, self.sep, self.unk):
            raise XdtError("tokenizer has no [CLS]/[SEP]/[UNK] (or <s>/</s>/<unk>) tokens; expected an encoder "
                           "tokenizer such as BERT's or XLM-R's")

    def align(self, sentences: Sequence[Sentence]) -> AlignedFeatures:
        budget = self.max_seq_length - 2
        ids_out: list[int] = []
        labels_out: list[int] = []
        words_out: list[int] = []
        offsets = [0]
        window_sentence: list[int] = []
        n_sent = len(sentences)
        sent_words = np.zeros(n_sent, np.int32)
        sent_subwords = np.zeros(n_sent, np.int32)
        unk_words = np.zeros(n_sent, np.int32)
        truncated = np.zeros(n_sent, np.int32)
        label2id = self.label2id
        cls, sep, unk = self.cls, self.sep, self.unk

        for start in range(0, n_sent, self.batch_size):
            batch = sentences[start:start + self.batch_size]
            enc = self.tokenizer([list(s.words) for s in batch], is_split_into_words=True,
                                 add_special_tokens=False, return_attention_mask=False,
                                 return_token_type_ids=False)
            for b, sentence in enumerate(batch):
                s_idx = start + b
                n_words = len(sentence.words)
                pieces: list[list[int]] = [[] for _ in range(n_words)]
                for tid, w in zip(enc["input_ids"][b], enc.word_ids(b)):
                    pieces[w].append(tid)
                label_ids = self._label_ids(sentence, s_idx) if sentence.tags is not None and label2id else None

                n_unk = n_trunc = n_sub = 0
                used = 0
                ids_out.append(cls); labels_out.append(IGNORE_INDEX); words_out.append(-1)
                for w, piece in enumerate(pieces):
                    if not piece or piece == [unk]:
                        piece = [unk]
                        n_unk += 1
                    n_sub += len(piece)
                    if len(piece) > budget:
                        piece = piece[:budget]
                        n_trunc += 1
                    if used + len(piece) > budget:  # close this window, open the next
                        ids_out.append(sep); labels_out.append(IGNORE_INDEX); words_out.append(-1)
                        offsets.append(len(ids_out)); window_sentence.append(s_idx)
                        ids_out.append(cls); labels_out.append(IGNORE_INDEX); words_out.append(-1)
                        used = 0
                    ids_out.extend(piece)
                    labels_out.append(label_ids[w] if label_ids is not None else IGNORE_INDEX)
                    words_out.append(w)
                    if len(piece) > 1:
                        labels_out.extend([IGNORE_INDEX] * (len(piece) - 1))
                        words_out.extend([-1] * (len(piece) - 1))
                    used += len(piece)
                ids_out.append(sep); labels_out.append(IGNORE_INDEX); words_out.append(-1)
                offsets.append(len(ids_out)); window_sentence.append(s_idx)
                sent_words[s_idx] = n_words
                sent_subwords[s_idx] = n_sub
                unk_words[s_idx] = n_unk
                truncated[s_idx] = n_trunc

        return AlignedFeatures(
            input_ids=np.asarray(ids_out, dtype=np.int32),
            labels=np.asarray(labels_out, dtype=np.int16),
            word_index=np.asarray(words_out, dtype=np.int32),
            offsets=np.asarray(offsets, dtype=np.int64),
            window_sentence=np.asarray(window_sentence, dtype=np.int32),
            sentence_words=sent_words,
            sentence_subwords=sent_subwords,
            unk_words=unk_words,
            truncated_words=truncated,
        )

    def _label_ids(self, sentence: Sentence, index: int) -> list[int]:
        try:
            return [self.label2id[t] for t in sentence.tags]
        except KeyError as err:
            raise XdtError(f"sentence {index} ({sentence.lang}): tag {err.args[0]!r} is not among the model's "
                           f"labels {sorted(self.label2id)}") from None
