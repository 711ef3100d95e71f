"""bf16 matrix products with an fp32 re-check: fp32 labels at bf16 speed on CPUs with native bf16 dot products.

Matrix products and attention run in bf16; the residual stream, LayerNorms and classifier stay fp32. A word's label
a is safe when every margin l_a - l_c exceeds `threshold * |h| * |W_a - W_c|`; windows holding an unsafe word are
recomputed by the exact fp32 forward (xdt.eval.fast_bert) and their labels replace the bf16 ones. The threshold is
SAFETY times the worst bf16 error measured on calibration windows and on every re-checked word, and words are judged
again whenever it rises, so the labels are the fp32 path's. `threshold=inf` re-checks every window, `threshold=0`
none. The derivation and the measurements: docs/internals.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xdt.eval.fast_bert import FastBertTokenClassifier

SAFETY = 2.0  # threshold = SAFETY x the worst error ratio measured (calibration windows and re-checked words)
FLOOR = 4e-4  # ... and never below ~the smallest worst ratio seen on any model (3.7e-4, the random l6-h256)
CALIBRATION_WINDOWS = 96  # spread over the length order: the longest batch alone read 2x low on a trained model
# fewer windows than this in an uncalibrated model's first call: run them in fp32 alone (calibration computes its
# windows both ways, which would cost more than bf16 saves) and calibrate on a later, larger call
CALIBRATE_FROM = 4 * CALIBRATION_WINDOWS
CALIBRATION_BATCH = 8  # the sample spans every length: small batches keep its padding small
# bf16 attention as two batched products up to this many tokens: 1.3-2.2x the CPU flash kernel (SDPA) at 8-64 tokens
# (batch 32, 8 heads), which wins from ~112 on
BMM_ATTENTION_MAX = 96
GIVE_UP = 0.35  # re-checking more tokens than this (bf16 costs ~0.6 of fp32) saves nothing: run fp32 alone


def cpu_has_native_bf16() -> bool:
    """True where bf16 dot products are instructions (AVX512-BF16 or AMX), not emulated (slower than fp32)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return torch.backends.mkldnn.is_available() and bool({"avx512_bf16", "amx_bf16"} & set(line.split()))


class RecheckStats:
    """What the re-check did over a run (eval's timing and the benchmark report it)."""

    def __init__(self):
        self.windows = self.words = self.rechecked_windows = self.rechecked_words = self.labels_changed = 0
        self.fp32_windows = 0  # windows run by fp32 alone: after giving up, or before calibration
        self.calibration_windows = 0  # windows computed both ways to calibrate (their labels are the fp32 ones)
        self.calibration_ratio: float | None = None
        self.calibration_recheck_share: float | None = None  # of tokens, predicted on the calibration windows
        self.audit_ratio = 0.0  # the worst error ratio over the re-checked words
        self.threshold_raises = 0  # times a re-checked word raised the threshold
        self.threshold: float | None = None

    def as_dict(self) -> dict:
        return {"windows": self.windows, "words": self.words, "rechecked_windows": self.rechecked_windows,
                "rechecked_words": self.rechecked_words, "labels_changed_by_recheck": self.labels_changed,
                "fp32_only_windows": self.fp32_windows, "calibration_windows": self.calibration_windows,
                "threshold": self.threshold,
                "calibration_ratio": self.calibration_ratio, "audit_ratio": self.audit_ratio,
                "threshold_raises": self.threshold_raises}


class _Output:
    __slots__ = ("logits", "norms")

    def __init__(self, logits: torch.Tensor, norms: torch.Tensor | None):
        self.logits, self.norms = logits, norms


class Bf16RecheckBertTokenClassifier(torch.nn.Module):
    """Called like FastBertTokenClassifier with `rows`; the output's `norms` (|h| of each row, None where the logits
    are fp32's already) let `predict_label_ids` judge each word with `unsafe_rows` once the bf16 pass is over and
    re-run the windows of the unsafe ones through `exact` (the fp32 forward), reporting each to `audit`."""

    scores_rows = True
    precision = "bf16+fp32-recheck"

    def __init__(self, model: torch.nn.Module, threshold: float | None = None, give_up: bool = True):
        """`threshold`: None measures it (`calibrate`, before the first batch, then `audit`); a number is fixed
        (inf re-checks every window, 0 none). `give_up`: run fp32 alone where calibration predicts the re-check
        would cost more than bf16 saves."""
        super().__init__()
        self.exact = FastBertTokenClassifier(model)
        self.hf = model
        self.config = model.config
        self.threshold = threshold
        self.measured = threshold is None  # the audit may raise a measured threshold, never a given one
        self.give_up = give_up
        self.fp32_only = False
        self.stats = RecheckStats()
        self.layers = []
        with torch.no_grad():
            for p in self.exact.layers:
                q = dict(p)  # LayerNorms stay the fp32 modules
                for k in ("qkv", "out", "in", "ffn"):  # [out, in] contiguous bf16, the layout F.linear wants
                    q["w_" + k] = p["w_" + k].t().contiguous().to(torch.bfloat16)
                    q["b_" + k] = p["b_" + k].to(torch.bfloat16)
                self.layers.append(q)
            self.cls_w = model.classifier.weight.detach().float()
            self.cls_b = model.classifier.bias.detach().float()
            self.pair_norm = torch.cdist(self.cls_w, self.cls_w)  # |W_a - W_c|: the scale of a's margin over c

    @torch.no_grad()
    def hidden_bf16(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Final hidden states (fp32) at the `keep` rows (flat indices), with bf16 matmuls and attention."""
        b, length = input_ids.shape
        bf16 = torch.bfloat16
        x = self.hf.bert.embeddings(input_ids=input_ids)  # the residual stream stays fp32 (see the module doc)
        hidden = x.shape[-1]
        heads = self.exact.heads
        dim = hidden // heads
        mask = attention_mask.bool()[:, None, None, :]
        if length <= BMM_ATTENTION_MAX:  # -inf at the padding keys, per (window, head)
            bias = torch.zeros(b, heads, 1, length, dtype=bf16).masked_fill_(~mask, float("-inf"))
            bias = bias.view(b * heads, 1, length)
        x = x.reshape(b * length, hidden)
        last = len(self.layers) - 1
        for i, p in enumerate(self.layers):
            qkv = F.linear(x.to(bf16), p["w_qkv"], p["b_qkv"]).view(b, length, 3, heads, dim).permute(2, 0, 3, 1, 4)
            if length <= BMM_ATTENTION_MAX:
                q, k, v = (t.reshape(b * heads, length, dim) for t in qkv)
                scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=dim ** -0.5)
                ctx = torch.bmm(scores.softmax(-1), v).view(b, heads, length, dim)
            else:
                ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
            ctx = ctx.transpose(1, 2).reshape(b * length, hidden)
            if i == last:
                ctx, x = ctx[keep], x[keep]
            a = p["ln1"](F.linear(ctx, p["w_out"], p["b_out"]).float() + x)
            inner = F.gelu(F.linear(a.to(bf16), p["w_in"], p["b_in"]))
            x = p["ln2"](F.linear(inner, p["w_ffn"], p["b_ffn"]).float() + a)
        return x

    def worst_error(self, norms: torch.Tensor, logits: torch.Tensor, exact: torch.Tensor) -> float:
        """Worst |d(l_a - l_c)| / (|h| |W_a - W_c|) over rows and label pairs (0 for no rows): the error the
        threshold bounds."""
        if not len(norms):
            return 0.0
        d = logits - exact
        dd = (d[:, :, None] - d[:, None, :]).abs()
        scale = norms[:, None, None] * self.pair_norm
        off = ~torch.eye(len(self.cls_w), dtype=torch.bool)
        return float((dd / scale.clamp_min(1e-30))[:, off].max())

    def unsafe_rows(self, norms: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """bool [rows]: another label within reach of bf16's error (norms: |h| of each row)."""
        top = logits.argmax(1)
        margin = logits.gather(1, top[:, None]) - logits  # [rows, labels], 0 at the top label
        reach = self.threshold * norms[:, None] * self.pair_norm[top]
        reach.scatter_(1, top[:, None], -1.0)  # the top label against itself never counts
        return (margin <= reach).any(1)

    def audit(self, norms: torch.Tensor, logits: torch.Tensor, exact: torch.Tensor) -> None:
        """Re-checked rows: their bf16 logits against the fp32 ones. A worse error than the threshold allows for
        raises it (a measured threshold only); predict_label_ids then judges the unchecked words again."""
        ratio = self.worst_error(norms, logits, exact)
        self.stats.audit_ratio = max(self.stats.audit_ratio, ratio)
        if self.measured and SAFETY * ratio > self.threshold:
            self.set_threshold(ratio)
            self.stats.threshold_raises += 1

    def _bf16_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(|h|, fp32 classifier logits) at the `keep` rows, from the bf16 forward."""
        h = self.hidden_bf16(input_ids, attention_mask, keep)
        return h.norm(dim=1), torch.addmm(self.cls_b, h, self.cls_w.t())

    @property
    def needs_calibration(self) -> bool:
        return self.threshold is None

    @torch.no_grad()
    def calibrate(self, features, batch_size: int, pad_id: int, device: torch.device) -> list:
        """Measure this model's bf16 error on CALIBRATION_WINDOWS windows of every length and set the threshold.
        Returns their fp32 results, [(window indices, word_index [b, L], fp32 logits of the slots)], for
        predict_label_ids to keep; [] (and no threshold: fp32 alone) below CALIBRATE_FROM windows."""
        from xdt.eval.predict import padded_batches

        if features.num_windows < CALIBRATE_FROM:
            return []
        order = np.argsort(-features.window_lengths(), kind="stable")
        sample = np.unique(order[np.linspace(0, len(order) - 1, CALIBRATION_WINDOWS).astype(int)])
        worst, seen, results = 0.0, [], []
        for idx, ids, mask, words in padded_batches(features, min(batch_size, CALIBRATION_BATCH), pad_id, sample):
            ids, mask, rows = (torch.from_numpy(a).to(device) for a in (ids, mask, words >= 0))
            norms, logits = self._bf16_logits(ids, mask, rows.reshape(-1).nonzero().squeeze(1))
            exact = self.exact(input_ids=ids, attention_mask=mask, rows=rows).logits
            worst = max(worst, self.worst_error(norms, logits, exact))
            seen.append((norms, logits, rows, mask.sum(1)))
            results.append((idx, words, exact))
            self.stats.calibration_windows += len(idx)
            self.stats.windows += len(idx)
            self.stats.words += int(rows.sum())
        self.set_threshold(worst)
        self.stats.calibration_ratio = worst
        tokens = rechecked = 0  # the share of tokens the re-check would recompute at this threshold
        for norms, logits, rows, lengths in seen:
            unsafe = torch.zeros(len(rows), dtype=torch.bool)
            unsafe[rows.nonzero()[:, 0][self.unsafe_rows(norms, logits)]] = True
            tokens, rechecked = tokens + int(lengths.sum()), rechecked + int(lengths[unsafe].sum())
        self.stats.calibration_recheck_share = rechecked / max(tokens, 1)
        self.fp32_only = self.give_up and self.stats.calibration_recheck_share > GIVE_UP
        return results

    def set_threshold(self, ratio: float) -> None:
        self.threshold = self.stats.threshold = max(FLOOR, SAFETY * ratio)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None, **_) -> _Output:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if rows is not None:
            self.stats.windows += len(input_ids)
            self.stats.words += int(rows.sum())
        if rows is None or self.fp32_only or self.threshold is None:
            # full [b, L] logits, bf16 gave up, or not calibrated (predict_label_ids calibrates first): fp32 alone
            if rows is not None:
                self.stats.fp32_windows += len(input_ids)
            return _Output(self.exact(input_ids=input_ids, attention_mask=attention_mask, rows=rows).logits, None)
        norms, logits = self._bf16_logits(input_ids, attention_mask, rows.reshape(-1).nonzero().squeeze(1))
        return _Output(logits, norms)

    def note_recheck(self, windows: int, words: int, changed: int) -> None:
        self.stats.rechecked_windows += windows
        self.stats.rechecked_words += words
        self.stats.labels_changed += changed
