"""Teacher word embeddings for a student vocabulary the teacher does not have (e.g. mBERT pieces, XLM-R teacher).

Each student piece is spelled out and tokenized by the teacher; its row is the mean of the teacher's rows for those
pieces. A word-initial piece (mBERT: no `##`) is tokenized as a word, with the teacher's word-start marker; a
continuation piece (`##ing`) as the inside of a word: with a SentencePiece (Unigram/BPE) teacher, its model's own
segmentation of the bare string, without the marker. Special tokens map by role ([CLS] -> <s>, [SEP] -> </s>, ...).
A piece the teacher can only spell as unknown keeps the teacher's unknown row. The result [V_student, D] then goes
through the same SVD/PCA as a shared vocabulary (`xdt.models.student`), or into a student cut from the teacher.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_ROLES = ("cls_token_id", "sep_token_id", "pad_token_id", "unk_token_id", "mask_token_id")


def _continuation_prefix(tokenizer) -> str | None:
    """The prefix that marks a piece as the inside of a word (WordPiece `##`); None when word starts are marked."""
    return getattr(tokenizer.backend_tokenizer.model, "continuing_subword_prefix", None)


def teacher_pieces(student_tok, teacher_tok) -> list[list[int]]:
    """For every student piece id, the teacher piece ids that spell it (never empty: the teacher's unknown)."""
    vocab = student_tok.get_vocab()
    pieces = [""] * len(student_tok)
    for piece, i in vocab.items():
        if i < len(pieces):
            pieces[i] = piece
    prefix = _continuation_prefix(student_tok)
    specials = {getattr(student_tok, r): getattr(teacher_tok, r) for r in _ROLES
                if getattr(student_tok, r) is not None and getattr(teacher_tok, r) is not None}
    unk = teacher_tok.unk_token_id
    inside = [p.startswith(prefix) if prefix else not p.startswith("\u2581") for p in pieces]
    surface = [p[len(prefix):] if prefix and is_in else p.lstrip("\u2581") for p, is_in in zip(pieces, inside)]

    starts = [i for i in range(len(pieces)) if not inside[i] and i not in specials]
    out: list[list[int]] = [[unk] for _ in pieces]
    encoded = teacher_tok([surface[i] for i in starts], add_special_tokens=False)["input_ids"] if starts else []
    marker = teacher_tok.get_vocab().get("\u2581")  # a bare word-start piece spells nothing of the word
    for i, ids in zip(starts, encoded):
        kept = [t for t in ids if t != marker]
        out[i] = kept or ids or [unk]
    backend = teacher_tok.backend_tokenizer
    t_prefix = _continuation_prefix(teacher_tok)
    t_vocab = teacher_tok.get_vocab()
    for i in range(len(pieces)):
        if not inside[i] or i in specials or not surface[i]:
            continue
        text = backend.normalizer.normalize_str(surface[i]) if backend.normalizer is not None else surface[i]
        if t_prefix is not None:  # a WordPiece teacher: its own continuation piece, else the word's spelling
            ids = [t_vocab[t_prefix + text]] if t_prefix + text in t_vocab else \
                teacher_tok(text, add_special_tokens=False)["input_ids"]
        else:  # SentencePiece: the model's segmentation of the bare string, no word-start marker
            ids = [t.id for t in backend.model.tokenize(text)]
        out[i] = ids or [unk]
    for s, t in specials.items():
        out[s] = [t]
    return out


def cross_vocab_embeddings(teacher_weight: torch.Tensor, student_tok, teacher_tok) -> torch.Tensor:
    """[len(student_tok), D]: each student piece as the mean teacher embedding of the pieces that spell it."""
    spelled = teacher_pieces(student_tok, teacher_tok)
    rows = torch.tensor([i for i, ids in enumerate(spelled) for _ in ids])
    cols = torch.tensor([t for ids in spelled for t in ids])
    weights = torch.tensor([1.0 / len(ids) for ids in spelled for _ in ids], dtype=torch.float64)
    if int(cols.max()) >= teacher_weight.shape[0]:
        raise ValueError(f"teacher tokenizer id {int(cols.max())} beyond its {teacher_weight.shape[0]} embedding rows")
    mix = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (len(spelled), teacher_weight.shape[0]),
                                  check_invariants=True)
    mapped = torch.sparse.mm(mix, teacher_weight.detach().double()).float()
    unk = teacher_tok.unk_token_id
    unknown = sum(1 for ids in spelled if ids == [unk])
    log.info("cross-vocabulary embeddings: %d student pieces from %d teacher rows; %d (%.1f%%) spelled as the "
             "teacher's unknown", len(spelled), teacher_weight.shape[0], unknown, 100.0 * unknown / len(spelled))
    return mapped
