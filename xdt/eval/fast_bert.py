"""A leaner CPU inference forward for HF `BertForTokenClassification`, reading the model's own weights.

On a CPU, eval time is ~80% fp32 matrix products already near the machine's matmul peak, so what is left to win is
work that is not needed, not faster kernels:
- query, key and value come from one [H, 3H] product instead of three (one pass over the activations);
- the last layer computes its attention output, feed-forward block and the classifier only at the rows eval reads
  (each word's first sub-word), not at continuation sub-words, [CLS], [SEP] or padding: keys and values still
  come from every row, so each kept row gets exactly the value the full forward gives it;
- no dropout modules, no attention-mask conversions, no output dataclasses.
The embeddings and LayerNorms are the HF modules themselves. Labels equal the HF forward's on every word (tests and
benchmarks/eval_throughput.py check it); logits differ by float rounding only (the fused product sums the same
terms). Anything that is not a plain absolute-position, exact-GELU BERT encoder on fp32 CPU keeps the HF forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _Output:
    __slots__ = ("logits",)

    def __init__(self, logits: torch.Tensor):
        self.logits = logits


def supports(model: torch.nn.Module) -> bool:
    """True for a plain BERT token classifier this forward reproduces (anything else keeps HF's forward)."""
    if type(model).__name__ != "BertForTokenClassification" or not hasattr(model, "bert"):
        return False
    cfg = model.config
    try:
        param = next(model.parameters())
    except StopIteration:
        return False
    return (param.device.type == "cpu" and param.dtype == torch.float32 and not model.training
            and getattr(cfg, "hidden_act", None) == "gelu"
            and getattr(cfg, "position_embedding_type", "absolute") in (None, "absolute")
            and not getattr(cfg, "is_decoder", False) and not getattr(cfg, "add_cross_attention", False)
            and cfg.hidden_size % cfg.num_attention_heads == 0
            and type(model.bert.embeddings).__name__ == "BertEmbeddings")


class FastBertTokenClassifier(torch.nn.Module):
    """Called like the HF model (`(input_ids=, attention_mask=).logits`, [b, L, labels]); with `rows` (bool [b, L])
    it returns the logits of those rows only ([rows, labels], row-major), the call `predict_label_ids` makes."""

    scores_rows = True  # predict_label_ids passes the rows it reads

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.hf = model  # embeddings, LayerNorms and classifier are its own modules; weights are shared
        self.config = model.config
        self.heads = model.config.num_attention_heads
        self.layers = []
        with torch.no_grad():
            for layer in model.bert.encoder.layer:
                att = layer.attention
                q, k, v = att.self.query, att.self.key, att.self.value
                self.layers.append({
                    # [in, out] views of [out, in] weights, as F.linear hands them to the same matmul
                    "w_qkv": torch.cat([q.weight, k.weight, v.weight]).t(),
                    "b_qkv": torch.cat([q.bias, k.bias, v.bias]),
                    "w_out": att.output.dense.weight.t(), "b_out": att.output.dense.bias, "ln1": att.output.LayerNorm,
                    "w_in": layer.intermediate.dense.weight.t(), "b_in": layer.intermediate.dense.bias,
                    "w_ffn": layer.output.dense.weight.t(), "b_ffn": layer.output.dense.bias,
                    "ln2": layer.output.LayerNorm,
                })

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None, **_) -> _Output:
        b, length = input_ids.shape
        x = self.hf.bert.embeddings(input_ids=input_ids)
        hidden = x.shape[-1]
        heads, dim = self.heads, hidden // self.heads
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keys = attention_mask.bool()[:, None, None, :]  # which keys each query may attend to
        x = x.reshape(b * length, hidden)
        keep = rows.reshape(-1).nonzero().squeeze(1) if rows is not None else None
        last = len(self.layers) - 1
        for i, p in enumerate(self.layers):
            qkv = torch.addmm(p["b_qkv"], x, p["w_qkv"]).view(b, length, 3, heads, dim).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=keys)
            ctx = ctx.transpose(1, 2).reshape(b * length, hidden)
            if i == last and keep is not None:  # from here on each row is computed alone: keep the rows eval reads
                ctx, x = ctx[keep], x[keep]
            a = p["ln1"](torch.addmm(p["b_out"], ctx, p["w_out"]) + x)
            x = p["ln2"](torch.addmm(p["b_ffn"], F.gelu(torch.addmm(p["b_in"], a, p["w_in"])), p["w_ffn"]) + a)
        logits = self.hf.classifier(x)
        return _Output(logits if keep is not None else logits.view(b, length, -1))
