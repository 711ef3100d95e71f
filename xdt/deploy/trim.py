"""`xdt trim`: a model folder + a corpus -> the same model with only the vocabulary pieces that corpus uses.

The pieces kept are those of every corpus word tokenized as the Aligner does, the special tokens and ids the config
names, and every single-character piece of the scripts seen; they keep their old order, the tokenizer's
`tokenizer.json` (WordPiece or Unigram) gets the new ids and the word-embedding rows are sliced. Checked before
anything is written: every corpus word tokenizes to the same pieces, and the logits on corpus sentences are the
original's. Teachers trim the same way. The steps and why no word changes: docs/internals.md.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xdt.data.discover import read_split
from xdt.data.readers import ReadOptions, ReadReport
from xdt.data.sentence import Sentence
from xdt.deploy.probe import first_sentences, probe_batches
from xdt.deploy.source import load_token_model, load_tokenizer_for, model_folder, no_progress_bars
from xdt.outputs import check_out, folder_bytes, staged_folder
from xdt.errors import XdtError

FLOORS = ("chars", "none")
CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
SLOW_TOKENIZER_FILES = ("vocab.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
                        "special_tokens_map.json", "added_tokens.json")
MANIFEST = "trim.json"


@dataclass
class Corpus:
    paths: list[str]
    words: Counter = field(default_factory=Counter)  # word -> occurrences over every split and language read
    languages: dict[str, dict] = field(default_factory=dict)  # lang -> {"sentences", "words"}
    probe: dict[str, list[Sentence]] = field(default_factory=dict)  # first sentences per language
    splits: list[str] = field(default_factory=list)
    skipped_lines: int = 0


def read_corpus(paths: list[str] | str, split: str | None = None, langs: list[str] | None = None,
                fmt: str | None = None, probe_per_lang: int = 16) -> Corpus:
    """Word counts of every sentence under `paths` (labels, if any, are ignored)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    corpus = Corpus(paths=[str(p) for p in paths])
    report = ReadReport()
    for path in paths:
        by_split = read_split(path, split, langs, fmt, ReadOptions(labels=None), report)
        for split_name, by_lang in by_split.items():
            if split_name not in corpus.splits:
                corpus.splits.append(split_name)
            for lang, sentences in by_lang.items():
                entry = corpus.languages.setdefault(lang, {"sentences": 0, "words": 0})
                entry["sentences"] += len(sentences)
                for s in sentences:
                    corpus.words.update(s.words)
                    entry["words"] += len(s.words)
                room = probe_per_lang - len(corpus.probe.get(lang, []))
                if room > 0:
                    corpus.probe.setdefault(lang, []).extend(sentences[:room])
    corpus.skipped_lines = len(report.skipped)
    if not corpus.words:
        where = ", ".join(corpus.paths)
        wanted = f" for languages {','.join(langs)}" if langs else ""
        raise XdtError(f"{where}: no sentences read{wanted}; expected WikiAnn files (XTREME, raw, XtremeDistil, "
                       "HF) or text, one sentence per line")
    return corpus


def char_script(ch: str) -> str:
    """The script of a letter or mark (the first word of its Unicode name: LATIN, CYRILLIC, ARABIC, CJK, ...);
    `COMMON` for digits, punctuation, symbols and spaces."""
    if unicodedata.category(ch)[0] not in "LM":
        return "COMMON"
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


class Vocabulary:
    """The backend model of a fast tokenizer as plain data: piece <-> id, unk, continuation prefix."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.spec = json.loads(tokenizer.backend_tokenizer.to_str())
        model = self.spec["model"]
        self.kind = model.get("type")
        if self.kind == "WordPiece":
            self.pieces = {piece: int(i) for piece, i in model["vocab"].items()}
            self.prefix = model.get("continuing_subword_prefix") or "##"
        elif self.kind == "Unigram":
            self.pieces = {entry[0]: i for i, entry in enumerate(model["vocab"])}
            self.prefix = "\u2581"  # sentencepiece's word-start marker
        else:
            raise XdtError(f"{tokenizer.name_or_path}: trimming supports WordPiece (BERT, mBERT) and Unigram (XLM-R) "
                           f"tokenizers; this one's model is {self.kind}")
        self.size = max(self.pieces.values()) + 1 if self.pieces else 0
        self.id_to_piece = {i: p for p, i in self.pieces.items()}
        for added in self.spec.get("added_tokens") or []:
            self.id_to_piece.setdefault(int(added["id"]), added["content"])

    def special_ids(self) -> dict[str, int]:
        """Every special token of the tokenizer (named ones and added tokens flagged special) -> its id."""
        tok = self.tokenizer
        out = {t: int(i) for t, i in zip(tok.all_special_tokens, tok.all_special_ids)}
        for added in self.spec.get("added_tokens") or []:
            if added.get("special"):
                out[added["content"]] = int(added["id"])
        return out

    def floor_ids(self, scripts: set[str]) -> set[int]:
        keep = set()
        for piece, i in self.pieces.items():
            core = piece[len(self.prefix):] if piece.startswith(self.prefix) and len(piece) > len(self.prefix) \
                else piece
            if len(core) == 1 and char_script(core) in scripts:
                keep.add(i)
        if self.kind == "Unigram" and self.spec["model"].get("byte_fallback"):
            keep |= {i for p, i in self.pieces.items() if len(p) == 6 and p.startswith("<0x") and p.endswith(">")}
        return keep

    def rebuilt(self, old2new: dict[int, int]) -> dict:
        """tokenizer.json content whose ids are the kept pieces' new ids."""
        spec = json.loads(json.dumps(self.spec))
        model = spec["model"]
        if self.kind == "WordPiece":
            model["vocab"] = {p: old2new[i] for p, i in sorted(self.pieces.items(), key=lambda kv: kv[1])
                              if i in old2new}
        else:
            model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in old2new]
            if model.get("unk_id") is not None:
                model["unk_id"] = old2new[int(model["unk_id"])]
        for added in spec.get("added_tokens") or []:
            added["id"] = old2new[int(added["id"])]
        if spec.get("post_processor"):
            spec["post_processor"] = _remap_processor(spec["post_processor"], old2new)
        return spec


def _remap_processor(proc: dict, old2new: dict[int, int]) -> dict:
    kind = proc.get("type")
    if kind == "TemplateProcessing":
        for entry in proc.get("special_tokens", {}).values():
            entry["ids"] = [old2new[int(i)] for i in entry["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            token, i = proc[key]
            proc[key] = [token, old2new[int(i)]]
    elif kind == "Sequence":
        proc["processors"] = [_remap_processor(p, old2new) for p in proc["processors"]]
    elif kind not in ("ByteLevel",):
        raise XdtError(f"tokenizer post-processor {kind}: not supported by trimming (expected TemplateProcessing, "
                       "BertProcessing, RobertaProcessing)")
    return proc


def word_pieces(tokenizer, words: list[str], batch: int = 20000) -> list[list[int]]:
    """The pieces of each word alone, as the Aligner tokenizes it (pre-tokenized, no special tokens)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    out: list[list[int]] = []
    for start in range(0, len(words), batch):
        encs = backend.encode_batch([[w] for w in words[start:start + batch]], is_pretokenized=True,
                                    add_special_tokens=False)
        out.extend(e.ids for e in encs)
    return out


def tokenization_changes(old_tok, new_tok, old2new: dict[int, int], words: Counter,
                         old_pieces: list[list[int]] | None = None) -> dict:
    """How many words (occurrences and distinct) the trimmed tokenizer splits differently from the original
    (compared in the new ids), and how many more of them become [UNK]. `old_pieces`: the original tokenizer's
    pieces of `list(words)`, when already computed."""
    distinct = list(words)
    old = old_pieces if old_pieces is not None else word_pieces(old_tok, distinct)
    new = word_pieces(new_tok, distinct)
    new_unk = new_tok.unk_token_id
    old_unk = old_tok.unk_token_id
    changed = changed_distinct = unk_before = unk_after = 0
    examples = []
    for w, a, b in zip(distinct, old, new):
        n = words[w]
        mapped = [old2new.get(i, -1) for i in a]
        unk_before += n * (a == [old_unk] or not a)
        unk_after += n * (b == [new_unk] or not b)
        if mapped != b:
            changed += n
            changed_distinct += 1
            if len(examples) < 5:
                examples.append(w)
    return {"words": int(sum(words.values())), "distinct_words": len(distinct), "words_changed": int(changed),
            "distinct_words_changed": changed_distinct, "unk_words_before": int(unk_before),
            "unk_words_after": int(unk_after), "examples_changed": examples}


def plan_trim(vocab: Vocabulary, corpus: Corpus, rows: int, config, floor: str = "chars",
              floor_min_share: float = 0.001) -> dict:
    """The ids to keep and why: {"keep": sorted old ids, "used": ids the corpus uses, ...}. The floor's scripts
    are those with at least `floor_min_share` of the corpus's characters (a stray CJK name in English text keeps
    its own pieces, as every corpus word does, but does not pull in the 13,550 CJK characters of mBERT)."""
    if floor not in FLOORS:
        raise XdtError(f"--floor {floor!r}: expected one of {', '.join(FLOORS)}")
    tok = vocab.tokenizer
    distinct = list(corpus.words)
    pieces = word_pieces(tok, distinct)
    used = {i for ids in pieces for i in ids}
    specials = vocab.special_ids()
    for name, i in specials.items():
        if i >= rows:
            raise XdtError(f"special token {name} (id {i}) has no row in the model's {rows}-row embedding: the "
                           "trimmed model would lose it; resize the model's embeddings to the tokenizer first")
        if vocab.id_to_piece.get(i) != name:
            raise XdtError(f"special token {name} (id {i}) is not in the tokenizer's vocabulary: the trimmed "
                           "model would lose it")
    beyond = sorted(i for i in used if i >= rows)
    if beyond:
        raise XdtError(f"tokenizer id {beyond[0]} ({vocab.id_to_piece.get(beyond[0])!r}) is beyond the model's "
                       f"{rows} embedding rows: tokenizer and model do not belong together")
    config_ids = {name: getattr(config, name) for name in CONFIG_TOKEN_IDS
                  if isinstance(getattr(config, name, None), int) and 0 <= getattr(config, name) < rows}
    chars: Counter = Counter()
    for w, n in corpus.words.items():
        for c in w:
            chars[char_script(c)] += n
    total = sum(chars.values()) or 1
    scripts = {s for s, n in chars.items() if n / total >= floor_min_share}
    floor_ids = vocab.floor_ids(scripts) if floor == "chars" else set()
    keep = sorted(used | set(specials.values()) | set(config_ids.values()) | {i for i in floor_ids if i < rows})
    return {"keep": keep, "used": used, "pieces": pieces, "specials": specials, "config_ids": config_ids,
            "scripts": sorted(scripts), "floor": len(floor_ids - used - set(specials.values()))}


def trim_model(model: str | Path, data: list[str] | str, out: str | Path, *, langs: list[str] | None = None,
               split: str | None = None, fmt: str | None = None, floor: str = "chars",
               floor_min_share: float = 0.001, tokenizer: str | Path | None = None,
               overwrite: bool = False) -> dict:
    """Write the trimmed model folder to `out` and return its report (also saved as `out/trim.json`)."""
    with no_progress_bars():
        return _trim(model, data, out, langs, split, fmt, floor, floor_min_share, tokenizer, overwrite)


def _trim(model, data, out, langs, split, fmt, floor, floor_min_share, tokenizer, overwrite) -> dict:
    t0 = time.perf_counter()
    inputs = [model, tokenizer, *([data] if isinstance(data, (str, Path)) else data)]
    check_out(out, overwrite, inputs)
    src = model_folder(model)
    torch_model = load_token_model(src)
    tok = load_tokenizer_for(src, tokenizer)
    vocab = Vocabulary(tok)
    corpus = read_corpus(data, split, langs, fmt)
    embedding = torch_model.get_input_embeddings()
    rows = embedding.num_embeddings
    if not 0 <= floor_min_share <= 1:
        raise XdtError(f"--floor-min-share {floor_min_share}: expected a fraction between 0 and 1")
    plan = plan_trim(vocab, corpus, rows, torch_model.config, floor, floor_min_share)
    keep = plan["keep"]
    old2new = {old: new for new, old in enumerate(keep)}

    params_before = sum(p.numel() for p in torch_model.parameters())
    with staged_folder(out, overwrite, inputs) as tmp:
        new_tok = _write_tokenizer(tok, vocab.rebuilt(old2new), tmp)
        _check_specials(vocab, new_tok, old2new)
        trimmed = _slice_embeddings(torch_model, keep, old2new)
        trimmed.save_pretrained(str(tmp), safe_serialization=True)
        changes = tokenization_changes(tok, new_tok, old2new, corpus.words, plan["pieces"])
        if changes["words_changed"]:
            raise RuntimeError(f"internal: {changes['words_changed']} corpus words changed tokenization after "
                               f"trimming (e.g. {changes['examples_changed']}); the kept pieces must cover them")
        parity = _check_parity(src, tok, tmp, new_tok, first_sentences(corpus.probe, 16), old2new)
        report = {
            "source": str(src), "data": corpus.paths, "splits": corpus.splits, "languages": corpus.languages,
            "floor": floor, "floor_min_share": floor_min_share, "floor_scripts": plan["scripts"],
            "tokenizer_model": vocab.kind,
            "pieces_before": len(vocab.pieces), "pieces_used": len(plan["used"]), "pieces_kept": len(keep),
            "pieces_floor": plan["floor"], "specials": {k: old2new[v] for k, v in plan["specials"].items()},
            "embedding_rows_before": rows, "embedding_rows_after": len(keep),
            "parameters_before": params_before, "parameters_after": sum(p.numel() for p in trimmed.parameters()),
            "model_bytes_before": (src / "model.safetensors").stat().st_size
            if (src / "model.safetensors").exists() else None,
            "model_bytes_after": (tmp / "model.safetensors").stat().st_size,
            "corpus": changes, "parity": parity, "skipped_lines": corpus.skipped_lines,
        }
        if report["model_bytes_before"]:
            report["size_ratio"] = round(report["model_bytes_before"] / report["model_bytes_after"], 3)
        report["folder_bytes_after"] = folder_bytes(tmp)  # weights, config and tokenizer (without trim.json)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / MANIFEST).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report["out"] = str(out)
    return report


def _write_tokenizer(tok, spec: dict, folder: Path):
    from transformers import AutoTokenizer

    tok.save_pretrained(str(folder))
    for name in SLOW_TOKENIZER_FILES:  # the old vocabulary must not come back through a slow-tokenizer file
        (folder / name).unlink(missing_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    new_tok = AutoTokenizer.from_pretrained(str(folder))
    expected = len(spec["model"]["vocab"])
    if new_tok.backend_tokenizer.get_vocab_size(with_added_tokens=True) != expected:
        raise RuntimeError(f"internal: the rebuilt tokenizer has {len(new_tok)} pieces, expected {expected}")
    return new_tok


def _check_specials(vocab: Vocabulary, new_tok, old2new: dict[int, int]) -> None:
    for name, old_id in vocab.special_ids().items():
        if new_tok.convert_tokens_to_ids(name) != old2new[old_id]:
            raise XdtError(f"special token {name}: the trimmed tokenizer maps it to "
                           f"{new_tok.convert_tokens_to_ids(name)}, not {old2new[old_id]}; it would be lost")


def _slice_embeddings(model, keep: list[int], old2new: dict[int, int]):
    old = model.get_input_embeddings()
    index = torch.tensor(keep, dtype=torch.long)
    pad = old.padding_idx
    new = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=old2new.get(pad) if pad is not None else None,
                             dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[index])
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    for name in CONFIG_TOKEN_IDS:
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            setattr(model.config, name, old2new.get(value))
    return model


@torch.no_grad()
def _check_parity(src: Path, old_tok, new_folder: Path, new_tok, sentences: list[Sentence],
                  old2new: dict[int, int]) -> dict:
    """The reloaded trimmed folder against the untouched original on corpus sentences: same ids (mapped), same
    logits."""
    original = load_token_model(src)
    trimmed = load_token_model(new_folder)
    lut = np.full(max(old2new) + 1, -1, dtype=np.int64)
    lut[list(old2new)] = list(old2new.values())
    max_diff, tokens, same = 0.0, 0, 0
    for (a_ids, a_mask), (b_ids, b_mask) in zip(probe_batches(old_tok, sentences), probe_batches(new_tok, sentences)):
        mapped = np.where(a_mask == 1, lut[np.minimum(a_ids, len(lut) - 1)], b_ids)
        if a_ids.shape != b_ids.shape or not np.array_equal(mapped, b_ids):
            raise RuntimeError("internal: the trimmed tokenizer gives other ids than the original on corpus sentences")
        a = original(input_ids=torch.from_numpy(a_ids), attention_mask=torch.from_numpy(a_mask)).logits
        b = trimmed(input_ids=torch.from_numpy(b_ids), attention_mask=torch.from_numpy(b_mask)).logits
        real = torch.from_numpy(a_mask).bool()
        max_diff = max(max_diff, float((a - b).abs()[real].max()))
        tokens += int(real.sum())
        same += int((a.argmax(-1) == b.argmax(-1))[real].sum())
    if max_diff > 1e-5 or same != tokens:
        raise RuntimeError(f"internal: the trimmed model's logits differ from the original's (max {max_diff:.3g})")
    return {"sentences": len(sentences), "tokens": tokens, "max_abs_logit_diff": max_diff,
            "argmax_agreement": same / tokens if tokens else None}


def summary_line(report: dict) -> str:
    mb = 1 / 1e6
    size = ""
    if report.get("model_bytes_before"):
        size = (f", model.safetensors {report['model_bytes_before'] * mb:.1f} MB -> "
                f"{report['model_bytes_after'] * mb:.1f} MB ({report['size_ratio']:.2f}x smaller)")
    c = report["corpus"]
    return (f"trimmed {report['source']} -> {report['out']}: {report['pieces_kept']:,} of {report['pieces_before']:,} "
            f"pieces kept ({report['pieces_used']:,} used by the corpus, {report['pieces_floor']:,} floor), "
            f"parameters {report['parameters_before']:,} -> {report['parameters_after']:,}{size}; corpus "
            f"{c['words']:,} words, {c['words_changed']} changed tokenization; logits max diff "
            f"{report['parity']['max_abs_logit_diff']:.2g}")
