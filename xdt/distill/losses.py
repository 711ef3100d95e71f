"""Distillation losses, masked to the positions that count, and their weighted sum.

Terms (names as in a stage's `losses` dict):

- ``hidden``: MSE between student hidden states, passed through dropout + a linear projection to the teacher width
  (`HiddenProjector`), and the teacher states the layer map pairs them with (stage 1 of the paper).
- ``attention``: MSE or KL between attention probability maps of paired layers (head-averaged when head counts
  differ).
- ``logits``: MSE on raw logits (the paper) or KL between temperature-softened distributions, times T^2.
- ``labels``: cross-entropy on gold labels (ignore_index -100).

The mask (bool or 0/1 float, shape = the positions, e.g. [B, T]) says which positions count: every word's first
sub-word or every non-pad token for NER, as the caller chooses; [CLS] for sequence classification; None = all.
Float values act as per-position weights. Every masked loss is a *mean over counted positions* (times feature
dims for MSE), so batches with more padding do not weigh less. ``mask_padding=False`` reproduces the released
code's quirk: it ignores the mask and averages over every position, padding included. A batch where nothing
counts gives 0 (still attached to the graph, so backward works). All terms are computed in float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xdt.config import LOSS_TERMS, TEACHER_TERMS, DistillConfig
from xdt.errors import ConfigError
from xdt.models.layer_map import resolve_layer_map

IGNORE_INDEX = -100
TERMS = LOSS_TERMS


# --------------------------------------------------------------------------------------------- helpers


def _weights(mask: torch.Tensor | None, positions: torch.Size, device: torch.device,
             mask_padding: bool) -> torch.Tensor:
    """Per-position float weights of shape `positions` (ones when unmasked or `mask_padding` is False)."""
    if mask is None or not mask_padding:
        return torch.ones(positions, dtype=torch.float32, device=device)
    if mask.shape != positions:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the positions {tuple(positions)}")
    return mask.to(device=device, dtype=torch.float32)


def _safe_div(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count; 0 (graph kept) when nothing counts, since total is then 0 too. No host sync, no NaN."""
    return total / count.clamp_min(1e-12)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
               mask_padding: bool = True) -> torch.Tensor:
    """``sum_p w_p * sum_d (pred - target)^2 / (D * sum_p w_p)`` over positions p (all but the last dim).

    Unmasked this is exactly `F.mse_loss(pred, target)` (mean over every element).
    """
    if pred.shape != target.shape:
        raise ValueError(f"student {tuple(pred.shape)} and teacher {tuple(target.shape)} shapes differ")
    w = _weights(mask, pred.shape[:-1], pred.device, mask_padding)
    sq = (pred.float() - target.detach().float()).pow(2).sum(-1)
    return _safe_div((sq * w).sum(), w.sum() * pred.shape[-1])


# --------------------------------------------------------------------------------------------- hidden states


class HiddenProjector(nn.Module):
    """Dropout + one Linear (student width -> teacher width) per mapped student hidden state.

    Why a projection: student and teacher widths differ, and even at equal width the paper learns the mapping
    rather than forcing the student into the teacher's basis. It is trained with the student in the
    representation stage, so it must go into the optimizer (or the DeepSpeed engine) with it.
    """

    def __init__(self, layer_map: Sequence[tuple[int, int]], student_hidden: int, teacher_hidden: int,
                 dropout: float = 0.1):
        super().__init__()
        if not layer_map:
            raise ValueError("layer_map maps no student state")
        self.layer_map = [(int(s), int(t)) for s, t in layer_map]
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.ModuleDict({str(s): nn.Linear(student_hidden, teacher_hidden) for s, _ in self.layer_map})

    def forward(self, student_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Projected student states, one per `layer_map` pair, in its order."""
        return [self.proj[str(s)](self.dropout(student_states[s])) for s, _ in self.layer_map]


def _check_states(states: Sequence[torch.Tensor] | None, index: int, who: str, what: str) -> None:
    if not states:
        raise ValueError(f"{who} {what} missing: run the model with output_{what}=True"
                         + (" and attn_implementation='eager' (sdpa returns no attention maps)"
                            if what == "attentions" else ""))
    if index >= len(states):
        raise ConfigError(f"distill.layer_map: {who} {what} index {index} out of range; the model returned "
                          f"{len(states)}")


def hidden_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                projector: HiddenProjector, mask: torch.Tensor | None = None,
                mask_padding: bool = True) -> torch.Tensor:
    """Mean over the projector's layer-map pairs of `masked_mse(projected student state, teacher state, mask)`.

    A mean over pairs (the released Keras code sums one MSE per output: the same up to the factor #pairs, which a
    stage weight absorbs). States are those of `output_hidden_states`: [B, T, width], index 0 = embeddings.
    """
    for s, t in projector.layer_map:
        _check_states(student_states, s, "student", "hidden_states")
        _check_states(teacher_states, t, "teacher", "hidden_states")
    losses = [masked_mse(p, teacher_states[t], mask, mask_padding)
              for p, (_, t) in zip(projector(student_states), projector.layer_map)]
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------------------------- attention


def attention_loss(student_attentions: Sequence[torch.Tensor], teacher_attentions: Sequence[torch.Tensor],
                   layer_map: Sequence[tuple[int, int]], kind: str = "mse", mask: torch.Tensor | None = None,
                   key_mask: torch.Tensor | None = None, mask_padding: bool = True) -> torch.Tensor:
    """Mean over paired layers of the distance between attention maps [B, heads, T_query, T_key].

    `layer_map` pairs hidden states; state k > 0 is the output of layer k, so its attention map is
    ``attentions[k - 1]``; pairs with state 0 on either side are skipped. When head counts differ both maps are
    averaged over heads first. `mask` [B, T] picks the query rows that count, `key_mask` [B, T] (the attention
    mask) the key columns. Per layer, with H heads after averaging:

    - ``mse``: ``sum (a_s - a_t)^2 * q[b,i] * k[b,j] / (H * sum_{b,i,j} q[b,i] * k[b,j])``;
    - ``kl``: ``sum_{b,h,i} q[b,i] * KL(a_t[b,h,i,:] || a_s[b,h,i,:]) / (H * sum q)``, the KL over counted keys.

    transformers returns the maps after attention dropout: in training mode the student's rows are rescaled
    and zeroed at random, so set the student's `attention_probs_dropout_prob` to 0 when this term matters.
    """
    pairs = [(s, t) for s, t in layer_map if s > 0 and t > 0]
    if not pairs:
        raise ConfigError("distill.layer_map: the attention loss needs a pair of encoder layers (state > 0)")
    if kind not in ("mse", "kl"):
        raise ConfigError(f"distill.attention_loss: expected 'mse' or 'kl', got {kind!r}")
    losses = []
    for s, t in pairs:
        _check_states(student_attentions, s - 1, "student", "attentions")
        _check_states(teacher_attentions, t - 1, "teacher", "attentions")
        a_s, a_t = student_attentions[s - 1].float(), teacher_attentions[t - 1].detach().float()
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
        if a_s.shape != a_t.shape:
            raise ValueError(f"attention maps differ in shape: student {tuple(a_s.shape)}, "
                             f"teacher {tuple(a_t.shape)}")
        batch, heads, length, _ = a_s.shape
        q = _weights(mask, torch.Size((batch, length)), a_s.device, mask_padding)
        k = _weights(key_mask, torch.Size((batch, length)), a_s.device, mask_padding)
        if kind == "mse":
            w = q[:, None, :, None] * k[:, None, None, :]
            losses.append(_safe_div(((a_s - a_t).pow(2) * w).sum(), w.sum() * heads))
        else:
            kl = torch.xlogy(a_t, a_t) - a_t * a_s.clamp_min(1e-12).log()
            rows = (kl * k[:, None, None, :]).sum(-1)  # [B, H, T]
            losses.append(_safe_div((rows * q[:, None, :]).sum(), q.sum() * heads))
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------------------------- logits, labels


def logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
               kind: str = "mse", temperature: float = 1.0, mask_padding: bool = True) -> torch.Tensor:
    """Distance to the teacher's logits [..., C], averaged over counted positions.

    - ``mse`` (the paper, raw logits, no temperature): `masked_mse`, i.e. also divided by C;
    - ``kl``: ``T^2 * sum_p w_p * KL(softmax(t_p / T) || softmax(s_p / T)) / sum_p w_p`` (T^2 keeps gradient
      magnitudes comparable across temperatures, as Hinton et al.).
    """
    if kind == "mse":
        return masked_mse(student_logits, teacher_logits, mask, mask_padding)
    if kind != "kl":
        raise ConfigError(f"distill.logit_loss: expected 'mse' or 'kl', got {kind!r}")
    if temperature <= 0:
        raise ConfigError(f"distill.temperature: expected a positive number, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         f"logits differ in shape")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    w = _weights(mask, kl.shape, kl.device, mask_padding)
    return _safe_div((kl * w).sum(), w.sum()) * temperature ** 2


def label_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy averaged over positions whose label is not -100 (and that `mask`, if given, counts).

    `mask_padding` does not apply: positions labelled -100 never count, as in every HF recipe.
    """
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none").reshape(labels.shape)
    w = (labels != IGNORE_INDEX).float()
    if mask is not None:
        w = w * _weights(mask, labels.shape, labels.device, True)
    return _safe_div((ce * w).sum(), w.sum())


# --------------------------------------------------------------------------------------------- combined


def _get(output: Any, name: str) -> Any:
    """A field of a transformers ModelOutput, a dict (e.g. cached teacher outputs) or any object."""
    if output is None:
        return None
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


class DistillLoss(nn.Module):
    """Weighted sum of the named terms; returns ``(total, {term: value})``.

    Terms with weight 0 are not computed (so a stage without ``attention`` needs no attention maps); the dict
    holds each computed term's unweighted value, detached, for logging (call `.item()` only when logging, to
    avoid a device sync per step). The projector is a submodule: train it with the student (e.g. wrap both in
    one `nn.ModuleDict` for `deepspeed.initialize`).
    """

    def __init__(self, weights: Mapping[str, float], *, projector: HiddenProjector | None = None,
                 logit_loss: str = "mse", temperature: float = 1.0, attention_loss: str = "none",
                 mask_padding: bool = True, layer_map: Sequence[tuple[int, int]] | None = None,
                 key: str = "losses"):
        super().__init__()
        for name, weight in weights.items():
            if name not in TERMS:
                raise ConfigError(f"{key}: unknown loss term {name!r}; expected some of {', '.join(TERMS)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"{key}.{name}: expected a non-negative weight, got {weight!r}")
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ConfigError(f"{key}: no loss term has a positive weight")
        if "hidden" in self.weights and projector is None:
            raise ValueError("the hidden term needs a HiddenProjector")
        if "attention" in self.weights and attention_loss not in ("mse", "kl"):
            raise ConfigError(f"distill.attention_loss: is {attention_loss!r} but {key}.attention has weight "
                              f"{self.weights['attention']}; set 'mse' or 'kl'")
        if logit_loss not in ("mse", "kl"):
            raise ConfigError(f"distill.logit_loss: expected 'mse' or 'kl', got {logit_loss!r}")
        if temperature <= 0:
            raise ConfigError(f"distill.temperature: expected a positive number, got {temperature}")
        self.projector = projector
        self.layer_map = list(layer_map) if layer_map is not None else (
            projector.layer_map if projector is not None else None)
        if "attention" in self.weights and self.layer_map is None:
            raise ValueError("the attention term needs a layer map (pass layer_map or a projector)")
        self.logit_kind, self.temperature = logit_loss, float(temperature)
        self.attention_kind, self.mask_padding = attention_loss, mask_padding

    @classmethod
    def from_config(cls, cfg: DistillConfig, weights: Mapping[str, float], *, student_layers: int,
                    teacher_layers: int, student_hidden: int, teacher_hidden: int,
                    projector: HiddenProjector | None = None, key: str = "losses") -> DistillLoss:
        """From `distill.*` and a stage's weights; builds a projector when ``hidden`` is weighted and none given.

        Pass the same projector to every stage that uses ``hidden`` so it keeps what it learnt.
        """
        uses_layers = weights.get("hidden", 0) > 0 or weights.get("attention", 0) > 0
        # only terms that pair layers read the map: a logits-only stage must not fail on it
        pairs = resolve_layer_map(cfg.layer_map, student_layers, teacher_layers) if uses_layers else None
        if projector is None and weights.get("hidden", 0) > 0:
            projector = HiddenProjector(pairs, student_hidden, teacher_hidden, cfg.projection_dropout)
        return cls(weights, projector=projector, logit_loss=cfg.logit_loss, temperature=cfg.temperature,
                   attention_loss=cfg.attention_loss, mask_padding=cfg.mask_padding, layer_map=pairs, key=key)

    @property
    def needs_hidden_states(self) -> bool:
        return "hidden" in self.weights

    @property
    def needs_attentions(self) -> bool:
        return "attention" in self.weights

    @property
    def needs_teacher(self) -> bool:
        return any(t in self.weights for t in TEACHER_TERMS)

    def forward(self, student: Any, teacher: Any = None, *, mask: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`student`/`teacher`: model outputs (or dicts) with `logits`, `hidden_states`, `attentions`.

        `mask` [B, T] picks the positions that count for the hidden, attention (query rows) and per-token logit
        terms; per-sequence logits [B, C] use every row. `attention_mask` (the model input) marks the keys of the
        attention term. `labels` feed the ``labels`` term, where -100 alone decides what counts.
        """
        if self.needs_teacher and teacher is None:
            raise ValueError(f"terms {sorted(self.weights)} need the teacher's outputs")
        values: dict[str, torch.Tensor] = {}
        if "hidden" in self.weights:
            values["hidden"] = hidden_loss(_get(student, "hidden_states"), _get(teacher, "hidden_states"),
                                           self.projector, mask, self.mask_padding)
        if "attention" in self.weights:
            values["attention"] = attention_loss(_get(student, "attentions"), _get(teacher, "attentions"),
                                                 self.layer_map,
                                                 self.attention_kind, mask, attention_mask, self.mask_padding)
        if "logits" in self.weights:
            logits = _get(student, "logits")
            per_sequence = logits.dim() == 2  # [B, C]: one prediction per sequence, no positions to mask
            values["logits"] = logit_loss(logits, _get(teacher, "logits"), None if per_sequence else mask,
                                          self.logit_kind, self.temperature, self.mask_padding)
        if "labels" in self.weights:
            if labels is None:
                raise ValueError("the labels term needs labels")
            values["labels"] = label_loss(_get(student, "logits"), labels, None)
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, {name: value.detach() for name, value in values.items()}
