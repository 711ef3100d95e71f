"""Two tokenizers, one sentence of words: the teacher's outputs brought to the student's word slots.

WikiAnn is word-level, so a teacher need not share the student's tokenizer. Both align the same sentences
(`xdt.data.align.Aligner`: every word exactly one slot, in exactly one window, even where a tokenizer maps it to
nothing), each with its own windows. A word is named by its global id (its sentence's word offset + its index);
a `WordBridge` knows, for every word, the teacher window that holds it and the span of its teacher sub-words, and,
for every student slot, the word it is. A student batch then asks for the teacher windows of its words, runs the
teacher on them, pools each word's sub-words (`first` sub-word, or their `mean`) and places the result at the
student's slot of that word: the losses compare word with word. Windows may split differently on the two sides
(a sentence can be one teacher window and two student windows); the bridge is per word, so that does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from xdt.data.align import AlignedFeatures
from xdt.errors import XdtError

Pooling = Literal["first", "mean"]
POOLINGS: tuple[str, ...] = ("first", "mean")


def _token_positions(features: AlignedFeatures) -> tuple[np.ndarray, np.ndarray]:
    """(window of every token, position of every token inside its window), flat."""
    lengths = features.window_lengths()
    window = np.repeat(np.arange(features.num_windows, dtype=np.int64), lengths)
    position = np.arange(len(features.input_ids), dtype=np.int64) - np.repeat(features.offsets[:-1], lengths)
    return window, position


def word_ids(features: AlignedFeatures, word_offset: np.ndarray, side: str) -> np.ndarray:
    """The global word id at every word slot of `features` (-1 elsewhere); each word must have exactly one."""
    window, _ = _token_positions(features)
    slots = features.word_index >= 0
    sentence = features.window_sentence[window[slots]]
    gid = np.full(len(features.input_ids), -1, np.int64)
    gid[slots] = word_offset[sentence] + features.word_index[slots]
    counts = np.bincount(gid[slots], minlength=int(word_offset[-1]))
    if (counts != 1).any():
        bad = int(np.flatnonzero(counts != 1)[0])
        sent = int(np.searchsorted(word_offset, bad, side="right") - 1)
        raise XdtError(f"{side} alignment: word {bad - word_offset[sent]} of sentence {sent} has {int(counts[bad])} "
                       "slots, expected exactly one")
    return gid


@dataclass
class WordBridge:
    """Student word slots <-> teacher sub-word spans of the same sentences (see the module docstring)."""

    student: AlignedFeatures
    teacher: AlignedFeatures
    student_word: np.ndarray  # int64 [student tokens]: the global word id at each slot, -1 elsewhere
    teacher_window: np.ndarray  # int64 [words]: the teacher window holding each word
    teacher_first: np.ndarray  # int64 [words]: its first sub-word's position inside that window
    teacher_count: np.ndarray  # int64 [words]: its sub-words in that window (>= 1)

    @classmethod
    def build(cls, student: AlignedFeatures, teacher: AlignedFeatures) -> WordBridge:
        if len(student.sentence_words) != len(teacher.sentence_words) or \
                not np.array_equal(student.sentence_words, teacher.sentence_words):
            diff = np.flatnonzero(np.asarray(student.sentence_words[:len(teacher.sentence_words)])
                                  != np.asarray(teacher.sentence_words[:len(student.sentence_words)]))
            where = f"sentence {int(diff[0])}" if len(diff) else \
                f"{len(student.sentence_words)} sentences against {len(teacher.sentence_words)}"
            raise XdtError(f"teacher and student alignments are not of the same words ({where}); align the same "
                           "sentences with both tokenizers")
        word_offset = np.zeros(len(student.sentence_words) + 1, np.int64)
        np.cumsum(student.sentence_words, out=word_offset[1:])
        student_word = word_ids(student, word_offset, "student")
        teacher_word = word_ids(teacher, word_offset, "teacher")
        t_window, t_position = _token_positions(teacher)
        slots = np.flatnonzero(teacher_word >= 0)  # flat token indices, ascending
        # a word's sub-words run from its slot to the next slot of its window, or to the window's [SEP]
        window_end = teacher.offsets[t_window[slots] + 1] - 1
        following = np.append(slots[1:], len(teacher.input_ids))
        end = np.minimum(following, window_end)
        words = teacher_word[slots]
        n = int(word_offset[-1])
        first, count, win = (np.zeros(n, np.int64) for _ in range(3))
        win[words], first[words], count[words] = t_window[slots], t_position[slots], end - slots
        return cls(student, teacher, student_word, win, first, count)

    @property
    def num_words(self) -> int:
        return len(self.teacher_window)

    def slots(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(batch row, position, global word id) of every word slot of the student `windows`, row by row."""
        f = self.student
        lo, hi = f.offsets[windows], f.offsets[windows + 1]
        rows = np.repeat(np.arange(len(windows), dtype=np.int64), hi - lo)
        flat = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(windows) else np.zeros(0, np.int64)
        keep = self.student_word[flat] >= 0
        positions = flat - np.repeat(lo, hi - lo)
        return rows[keep], positions[keep], self.student_word[flat[keep]]

    def collate_teacher(self, words: np.ndarray, pad_id: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(teacher windows, their input_ids, attention_mask) holding `words`, one row per distinct window."""
        windows = np.unique(self.teacher_window[words])
        f = self.teacher
        starts, lengths = f.offsets[windows], f.offsets[windows + 1] - f.offsets[windows]
        width = int(lengths.max()) if len(windows) else 0
        ids = np.full((len(windows), width), pad_id, np.int64)
        mask = np.zeros((len(windows), width), np.int64)
        for row, (lo, length) in enumerate(zip(starts, lengths)):
            ids[row, :length] = f.input_ids[lo:lo + length]
            mask[row, :length] = 1
        return windows, torch.from_numpy(ids), torch.from_numpy(mask)

    def pool(self, states: torch.Tensor, windows: np.ndarray, words: np.ndarray, pooling: Pooling) -> torch.Tensor:
        """[len(words), D] from teacher outputs `states` [len(windows), T, D] of the sorted teacher `windows`."""
        row = torch.from_numpy(np.searchsorted(windows, self.teacher_window[words])).to(states.device)
        first = torch.from_numpy(self.teacher_first[words]).to(states.device)
        if pooling == "first":
            return states[row, first]
        if pooling != "mean":
            raise XdtError(f"distill.word_pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
        count = torch.from_numpy(self.teacher_count[words]).to(states.device)
        span = torch.arange(int(count.max()) if len(words) else 1, device=states.device)
        index = (first[:, None] + span).clamp_max(states.shape[1] - 1)
        weight = (span < count[:, None]).to(states.dtype)
        gathered = states[row[:, None], index]  # [W, S, D]
        return (gathered * weight[..., None]).sum(1) / count[:, None].to(states.dtype)

    def word_outputs(self, run_teacher: Callable[[torch.Tensor, torch.Tensor], dict], words: np.ndarray,
                     layers: Sequence[int], pooling: Pooling, pad_id: int) -> dict:
        """The teacher's per-word outputs for `words`: {"logits": [W, C], layer: [W, H] for each of `layers`}.
        `run_teacher(input_ids, attention_mask)` returns {"logits", "hidden_states"} of those windows."""
        windows, ids, mask = self.collate_teacher(words, pad_id)
        out = run_teacher(ids, mask)
        result = {"logits": self.pool(out["logits"], windows, words, pooling)}
        for x in layers:
            result[x] = self.pool(out["hidden_states"][x], windows, words, pooling)
        return result

    def batch_outputs(self, run_teacher: Callable[[torch.Tensor, torch.Tensor], dict], windows: np.ndarray,
                      width: int, layers: Sequence[int], num_hidden_states: int, pooling: Pooling,
                      pad_id: int) -> dict:
        """Teacher outputs for a student batch as the losses read them: `logits` [B, width, C] and `hidden_states`
        (indexed by teacher state, None where not asked) [B, width, H], each word's value at its student slot and
        zero elsewhere; `attentions` None (attention maps do not cross tokenizers)."""
        rows, positions, words = self.slots(windows)
        values = self.word_outputs(run_teacher, words, layers, pooling, pad_id)
        place = lambda v: scatter_words(v, rows, positions, len(windows), width)  # noqa: E731
        hidden = tuple(place(values[x]) if x in values else None for x in range(num_hidden_states)) \
            if layers else None
        return {"logits": place(values["logits"]), "hidden_states": hidden, "attentions": None}


def scatter_words(values: torch.Tensor, rows: np.ndarray, positions: np.ndarray, batch: int,
                  width: int) -> torch.Tensor:
    """Per-word `values` [W, D] placed at (row, position) of a zero [batch, width, D] tensor."""
    out = values.new_zeros((batch, width, values.shape[-1]))
    out[torch.from_numpy(rows).to(values.device), torch.from_numpy(positions).to(values.device)] = values
    return out
