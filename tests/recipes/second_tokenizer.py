"""A second, real tokenizer for cross-tokenizer tests: a SentencePiece-style unigram model (Metaspace, <s>/</s>, as
XLM-R's) counted from the given text, and a random BERT teacher folder that uses it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def build_unigram_tokenizer(texts: Iterable[str], folder: Path, vocab_size: int = 2000):
    """A unigram tokenizer for `texts`, saved as an HF fast tokenizer in `folder`, and returned.

    Its pieces are counted here rather than trained by `tokenizers`' UnigramTrainer, whose result changes from run
    to run (it works in parallel): every character, then the most frequent word-initial (with the word-start marker
    ▁) and word-inner substrings of 2-6 characters, scored by log frequency. Deterministic for the same text."""
    import math
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0..3, mask last
    norm = normalizers.NFKC()
    chars: Counter = Counter()
    grams: Counter = Counter()
    for text in texts:
        for word in norm.normalize_str(text).split():
            marked = "\u2581" + word
            chars.update(marked)
            for i in range(len(marked)):
                for n in range(2, 7):
                    if i + n <= len(marked) and not (i > 0 and marked[i] == "\u2581"):
                        grams[marked[i:i + n]] += 1
    room = max(0, vocab_size - len(specials) - len(chars))
    kept = sorted(grams.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0]))[:room]
    total = sum(chars.values()) + sum(c for _, c in kept)
    pieces = [(p, 0.0) for p in specials]
    pieces += [(p, math.log(c / total)) for p, c in sorted(chars.items())]
    pieces += [(p, math.log(c / total)) for p, c in sorted(kept)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3))
    tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def build_teacher_folder(tokenizer, folder: Path, *, layers: int = 2, hidden: int = 96, heads: int = 2,
                         max_positions: int = 128, seed: int = 0) -> Path:
    """A random BERT encoder (no head) of the tokenizer's vocabulary, saved with the tokenizer: a teacher.model
    whose tokenizer is not the student's."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        pad_token_id=tokenizer.pad_token_id, max_position_embeddings=max_positions)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
