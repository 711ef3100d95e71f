"""Word-level noise (TinyBERT-style augmentation): masking, same-language replacement, masked-LM replacement.

Each copy changes `word_ratio` x the sentence length words (rounded at random, at least 1) among the words with a
letter (outside entities when `augment.entities` is keep); one word stays one word, so tags stay aligned.

- `mask`: the word becomes the mask token (`[MASK]`, mBERT's).
- `replace`: the word's core becomes a random word of the same language, drawn from a reservoir of sentences of
  the sources (`vocab_sentences` per language, a uniform sample taken in the first pass, so frequent words are drawn
  more often); punctuation and case pattern are kept.
- `mlm`: TinyBERT's: the chosen words are masked (one mask token per word) and the masked LM's top-k predictions
  that are whole words (no `##` piece, no special token, with a letter, not the original word) are the candidates,
  one drawn uniformly. Sentences are batched; words beyond `max_length` sub-words are left as they are.
"""

from __future__ import annotations

import random
from pathlib import Path

from xdt.errors import XdtError
from xdt.transfer.codeswitch import Change, Item, changeable, words_to_change
from xdt.transfer.config import MaskConfig, MlmConfig, ReplaceConfig
from xdt.transfer.words import has_letter, match_case, split_affixes


class Masker:
    name = "mask"

    def __init__(self, cfg: MaskConfig, keep_entities: bool):
        self.cfg = cfg
        self.keep_entities = keep_entities

    def apply_batch(self, items: list[Item], rng: random.Random) -> list[Change | None]:
        out: list[Change | None] = []
        for item in items:
            positions = changeable(item, self.keep_entities)
            if not positions:
                out.append(None)
                continue
            k = words_to_change(len(item.words), self.cfg.word_ratio, len(positions), rng)
            chosen = sorted(rng.sample(positions, k))
            words = list(item.words)
            for i in chosen:
                words[i] = self.cfg.token
            out.append(Change(tuple(words), tuple((i, "mask") for i in chosen)))
        return out


class Reservoir:
    """A uniform sample of `size` sentences per language from a stream (Algorithm R), for replacement words."""

    def __init__(self, size: int, rng: random.Random):
        self.size = size
        self.rng = rng
        self.seen: dict[str, int] = {}
        self.samples: dict[str, list[tuple[str, ...]]] = {}

    def add(self, lang: str, words: tuple[str, ...]) -> None:
        n = self.seen.get(lang, 0)
        sample = self.samples.setdefault(lang, [])
        if n < self.size:
            sample.append(words)
        else:
            j = self.rng.randrange(n + 1)
            if j < self.size:
                sample[j] = words
        self.seen[lang] = n + 1

    def vocabulary(self) -> dict[str, list[str]]:
        """Per language, the word cores of the sample (with repeats: frequent words weigh more)."""
        vocab = {}
        for lang, sentences in sorted(self.samples.items()):
            vocab[lang] = [core for words in sentences for w in words
                           if has_letter(core := split_affixes(w)[1])]
        return vocab


class Replacer:
    name = "replace"

    def __init__(self, cfg: ReplaceConfig, vocabulary: dict[str, list[str]], keep_entities: bool):
        self.cfg = cfg
        self.vocab = vocabulary
        self.keep_entities = keep_entities

    def apply_batch(self, items: list[Item], rng: random.Random) -> list[Change | None]:
        out: list[Change | None] = []
        for item in items:
            vocab = self.vocab.get(item.lang, [])
            positions = changeable(item, self.keep_entities)
            if not positions or len(set(vocab[:1000])) < 2:
                out.append(None)
                continue
            k = words_to_change(len(item.words), self.cfg.word_ratio, len(positions), rng)
            chosen = sorted(rng.sample(positions, k))
            words = list(item.words)
            changed = []
            for i in chosen:
                prefix, core, suffix = split_affixes(words[i])
                for _ in range(10):  # a word other than the original (the vocabulary has repeats)
                    new = vocab[rng.randrange(len(vocab))]
                    if new.lower() != core.lower():
                        words[i] = prefix + match_case(core, new) + suffix
                        changed.append((i, "replace"))
                        break
            out.append(Change(tuple(words), tuple(changed)) if changed else None)
        return out


class MlmReplacer:
    name = "mlm"

    def __init__(self, cfg: MlmConfig, model_dir: str | Path, keep_entities: bool):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.cfg = cfg
        self.keep_entities = keep_entities
        self.torch = torch
        from xdt.engine.safe_load import check_model_weights

        if Path(model_dir).is_dir():
            check_model_weights(model_dir)  # safetensors only: a pickled .bin is refused before torch opens it
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self.model = AutoModelForMaskedLM.from_pretrained(str(model_dir), local_files_only=True,
                                                              use_safetensors=True)
        except (OSError, ValueError) as err:
            raise XdtError(f"{model_dir}: cannot load a masked LM and its tokenizer: {err}") from None
        if not self.tokenizer.is_fast or self.tokenizer.mask_token is None:
            raise XdtError(f"{model_dir}: the MLM teacher needs a fast tokenizer with a mask token")
        self.model.eval().to(cfg.device)
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_ids)
        usable = [i < self.model.config.vocab_size and i not in special and not t.startswith("##")
                  and has_letter(t) and not t.startswith("[") for i, t in enumerate(vocab)]
        usable += [False] * max(0, self.model.config.vocab_size - len(usable))
        self.usable = torch.tensor(usable[: self.model.config.vocab_size])
        self.vocab = vocab

    def apply_batch(self, items: list[Item], rng: random.Random) -> list[Change | None]:
        torch = self.torch
        out: list[Change | None] = [None] * len(items)
        plans = []
        for b, item in enumerate(items):
            positions = changeable(item, self.keep_entities)
            if positions:
                k = words_to_change(len(item.words), self.cfg.word_ratio, len(positions), rng)
                plans.append((b, sorted(rng.sample(positions, k))))
        for start in range(0, len(plans), self.cfg.batch_size):
            chunk = plans[start:start + self.cfg.batch_size]
            masked = [[self.tokenizer.mask_token if i in set(chosen) else w for i, w in enumerate(items[b].words)]
                      for b, chosen in chunk]
            enc = self.tokenizer(masked, is_split_into_words=True, truncation=True, max_length=self.cfg.max_length,
                                 padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.cfg.device) for k, v in enc.items()}).logits.float().cpu()
            logits[:, :, ~self.usable] = float("-inf")
            top = logits.topk(self.cfg.top_k + 1, dim=-1).indices
            for row, (b, chosen) in enumerate(chunk):
                token_of = {}
                for j, w in enumerate(enc.word_ids(row)):
                    if w is not None and w not in token_of:
                        token_of[w] = j
                words = list(items[b].words)
                changed = []
                for i in chosen:
                    if i not in token_of:  # truncated away
                        continue
                    prefix, core, suffix = split_affixes(words[i])
                    cands = [self.vocab[t] for t in top[row, token_of[i]].tolist()]
                    cands = [c for c in cands if c.lower() != core.lower()][: self.cfg.top_k]
                    if cands:
                        words[i] = prefix + match_case(core, cands[rng.randrange(len(cands))]) + suffix
                        changed.append((i, "mlm"))
                if changed:
                    out[b] = Change(tuple(words), tuple(changed))
        return out
