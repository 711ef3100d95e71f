"""Word-level predictions: aligned windows -> length-sorted batches with dynamic padding -> one label per word.

Every word has exactly one prediction slot (its first sub-word, `AlignedFeatures.word_index >= 0`), in exactly
one window (long sentences are split into windows by the Aligner), so every word of the data is scored once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xdt.data.align import AlignedFeatures
from xdt.data.sentence import Sentence
from xdt.errors import XdtError


def padded_batches(features: AlignedFeatures, batch_size: int, pad_id: int, windows: np.ndarray | None = None):
    """(window indices, input_ids [b, L], attention_mask [b, L], word_index [b, L]) over windows sorted by length,
    longest first: each batch is padded only to its own longest window, and an out-of-memory shows at once.
    `windows`: only these windows (default all)."""
    lengths = features.window_lengths()
    if windows is None:
        order = np.argsort(-lengths, kind="stable")
    else:
        order = windows[np.argsort(-lengths[windows], kind="stable")]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = int(lengths[idx[0]])
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        words = np.full((len(idx), width), -1, dtype=np.int64)
        for row, k in enumerate(idx):
            lo, hi = features.offsets[k], features.offsets[k + 1]
            ids[row, :hi - lo] = features.input_ids[lo:hi]
            mask[row, :hi - lo] = 1
            words[row, :hi - lo] = features.word_index[lo:hi]
        yield idx, ids, mask, words


@torch.no_grad()  # not inference_mode: ZeRO-3 gathers parameters here, and they must stay trainable
def predict_label_ids(model: torch.nn.Module, features: AlignedFeatures, batch_size: int, pad_id: int,
                      device: torch.device, progress=None) -> np.ndarray:
    """The argmax label id of every word, flat in sentence order (sentence 0's words, then sentence 1's, ...)."""
    word_start = np.zeros(len(features.sentence_words) + 1, dtype=np.int64)
    np.cumsum(features.sentence_words, out=word_start[1:])
    total = int(word_start[-1])
    if features.aligned_words() != total:
        raise XdtError(f"internal: {features.aligned_words()} prediction slots for {total} words; the aligner "
                       "must give every word exactly one slot")
    out = np.full(total, -1, dtype=np.int64)
    rows_only = getattr(model, "scores_rows", False)  # xdt.eval.fast_bert: logits of the slots alone
    bf16 = None  # xdt.eval.bf16_bert: every word's bf16 logits, |h| and window, judged after the pass
    rest = None  # the windows still to predict (default all)
    if getattr(model, "needs_calibration", False):  # bf16_bert: measure its error before trusting any label
        calibrated = model.calibrate(features, batch_size, pad_id, device)
        for idx, words, exact in calibrated:  # computed in fp32 too: keep those labels
            out[_positions(features, word_start, idx, words)] = exact.argmax(-1).cpu().numpy()
        if calibrated:
            rest = np.setdiff1d(np.arange(features.num_windows), np.concatenate([c[0] for c in calibrated]))
    for idx, ids, mask, words in padded_batches(features, batch_size, pad_id, rest):
        slots = words >= 0
        inputs = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
        position = _positions(features, word_start, idx, words)
        if rows_only:  # logits of the slots alone, in the order of position
            result = model(**inputs, rows=torch.from_numpy(slots))
            logits = result.logits.cpu()
            out[position] = logits.argmax(-1).numpy()
            if getattr(result, "norms", None) is not None:
                if bf16 is None:
                    bf16 = (torch.zeros(total, logits.shape[1]), torch.zeros(total),
                            np.full(total, -1, dtype=np.int64))
                at = torch.from_numpy(position)
                bf16[0][at], bf16[1][at] = logits, result.norms.cpu()
                bf16[2][position] = np.repeat(idx, slots.sum(1))
        else:
            out[position] = model(**inputs).logits.argmax(-1).cpu().numpy()[slots]
        if progress is not None:
            progress.update(len(position))
    if bf16 is not None:
        _recheck(model, features, out, bf16, word_start, batch_size, pad_id, device)
    if (out < 0).any():
        raise XdtError(f"internal: {int((out < 0).sum())} words got no prediction")
    return out


def _positions(features: AlignedFeatures, word_start: np.ndarray, idx: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Flat word indices of a batch's prediction slots (windows `idx`, word_index `words` [b, L]), row-major."""
    return (word_start[features.window_sentence[idx]][:, None] + words)[words >= 0]


def _recheck(model, features: AlignedFeatures, out: np.ndarray, bf16, word_start: np.ndarray, batch_size: int,
             pad_id: int, device: torch.device) -> None:
    """xdt.eval.bf16_bert: recompute in fp32, batched by length, every window holding a word whose bf16 label could
    differ from fp32's, and write the fp32 labels into `out`. Each re-checked word's error is audited; where that
    raises the threshold, the words not yet re-checked are judged again, until none is left below it."""
    logits, norms, window = bf16
    scored = window >= 0  # words of windows computed in fp32 (calibration, or fp32 alone) are exact already
    scored_norms, scored_logits = norms[torch.from_numpy(scored)], logits[torch.from_numpy(scored)]
    done = np.zeros(features.num_windows, dtype=bool)
    while True:
        unsafe = np.zeros(len(out), dtype=bool)
        unsafe[scored] = model.unsafe_rows(scored_norms, scored_logits).numpy()
        todo = np.unique(window[unsafe])
        todo = todo[~done[todo]]
        if not len(todo):
            return
        done[todo] = True
        for idx, ids, mask, words in padded_batches(features, batch_size, pad_id, todo):
            slots = words >= 0
            position = _positions(features, word_start, idx, words)
            exact = model.exact(input_ids=torch.from_numpy(ids).to(device),
                                attention_mask=torch.from_numpy(mask).to(device),
                                rows=torch.from_numpy(slots)).logits.cpu()
            at = torch.from_numpy(position)
            model.audit(norms[at], logits[at], exact)
            labels = exact.argmax(-1).numpy()
            model.note_recheck(len(idx), len(position), int((out[position] != labels).sum()))
            out[position] = labels


def to_label_names(flat_ids: np.ndarray, sentences: Sequence[Sentence], id2label: dict[int, str]) -> list[list[str]]:
    names = np.array([id2label.get(i, f"LABEL_{i}") for i in range(max(id2label) + 1)], dtype=object)
    flat = names[flat_ids]
    out, pos = [], 0
    for s in sentences:
        out.append(list(flat[pos:pos + len(s.words)]))
        pos += len(s.words)
    return out
