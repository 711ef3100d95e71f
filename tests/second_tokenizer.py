"""A second, real tokenizer for cross-tokenizer tests: a SentencePiece-style unigram model (Metaspace, <s>/</s>, as
XLM-R's) trained on the given text with the `tokenizers` library, and a random BERT teacher folder that uses it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def build_unigram_tokenizer(texts: Iterable[str], folder: Path, vocab_size: int = 2000):
    """Train a unigram tokenizer on `texts`, save it as an HF fast tokenizer in `folder`, and return it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0..3, mask last
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      shrinking_factor=0.75, n_sub_iterations=2)
    tok.train_from_iterator(list(texts), trainer)
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
