"""Gradual unfreezing, top-down and layer by layer (XtremeDistil's D3.2 / D4.2 strategies).

Groups, in the order they start training: head, projector, encoder layer L-1 ... 0, embeddings_project (factorized
students), embeddings. After ``apply(k)`` exactly the first k + 1 groups train; parameters in `keep_frozen` never
train, and a group they empty is dropped. Freezing is ``requires_grad=False``; build the optimizer per stage (or use
zero weight decay) where frozen weights must stay bit-identical. Why this order and the optimizer caveat:
docs/internals.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn
from transformers import PreTrainedModel

from xdt.config import StudentConfig


@dataclass
class UnfreezeGroup:
    name: str
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.params]


def _prefixed(module: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    return [(f"{prefix}.{n}", p) for n, p in module.named_parameters()]


def unfreeze_groups(model: PreTrainedModel, projector: nn.Module | None = None) -> list[UnfreezeGroup]:
    """Every parameter of `model` (and `projector`, names prefixed ``projector.``) in top-down order.

    Works for BERT-like models (BERT, ELECTRA, RoBERTa/XLM-R): `base_model` with `embeddings`,
    `encoder.layer` and optionally `embeddings_project` and `pooler`; everything outside `base_model` is head.
    """
    base = model.base_model
    if base is model or not hasattr(base, "encoder") or not hasattr(base, "embeddings"):
        raise ValueError(f"{type(model).__name__}: expected a task model around a BERT-like base model "
                         f"(base_model.embeddings, base_model.encoder.layer)")
    prefix = model.base_model_prefix
    base_ids = {id(p) for p in base.parameters()}
    head = UnfreezeGroup("head", [(n, p) for n, p in model.named_parameters() if id(p) not in base_ids])
    if getattr(base, "pooler", None) is not None:
        head.params += _prefixed(base.pooler, f"{prefix}.pooler")
    groups = [head]
    if projector is not None:
        groups.append(UnfreezeGroup("projector", _prefixed(projector, "projector")))
    layers = base.encoder.layer
    for i in reversed(range(len(layers))):
        groups.append(UnfreezeGroup(f"encoder.layer.{i}", _prefixed(layers[i], f"{prefix}.encoder.layer.{i}")))
    if hasattr(base, "embeddings_project"):
        groups.append(UnfreezeGroup("embeddings_project",
                                    _prefixed(base.embeddings_project, f"{prefix}.embeddings_project")))
    groups.append(UnfreezeGroup("embeddings", _prefixed(base.embeddings, f"{prefix}.embeddings")))
    placed = {id(p) for g in groups for _, p in g.params}
    missing = [n for n, p in model.named_parameters() if id(p) not in placed]
    if missing:
        raise ValueError(f"{type(model).__name__}: parameters outside the unfreeze groups: {missing[:5]}")
    return groups


def word_embedding_names(model: PreTrainedModel) -> list[str]:
    """Name of the word-embedding parameter (what `StudentConfig.freeze_embeddings` freezes)."""
    weight = model.get_input_embeddings().weight
    return [n for n, p in model.named_parameters() if p is weight]


def keep_frozen_names(model: PreTrainedModel, cfg: StudentConfig) -> list[str]:
    """Parameters no unfreeze step may train under `cfg`: the word embeddings when `freeze_embeddings`."""
    return word_embedding_names(model) if cfg.freeze_embeddings else []


class UnfreezePlan:
    """An ordered list of parameter groups; ``apply(k)`` trains the first k + 1 and freezes the rest.

        plan = UnfreezePlan(student, projector=None, keep_frozen=keep_frozen_names(student, cfg.student))
        for step in range(plan.num_steps):
            plan.apply(step)
            ... train steps_per_unfreeze steps ...
    """

    def __init__(self, model: PreTrainedModel, projector: nn.Module | None = None,
                 keep_frozen: Iterable[str] = ()):
        groups = unfreeze_groups(model, projector)
        known = {n for g in groups for n in g.names}
        self.keep_frozen = set(keep_frozen)
        unknown = sorted(self.keep_frozen - known)
        if unknown:
            raise ValueError(f"keep_frozen names no parameter of the model/projector: {unknown[:5]}")
        self._frozen = [p for g in groups for n, p in g.params if n in self.keep_frozen]
        for g in groups:
            g.params = [(n, p) for n, p in g.params if n not in self.keep_frozen]
        self.groups = [g for g in groups if g.params]

    @property
    def num_steps(self) -> int:
        return len(self.groups)

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def _count(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"unfreeze step must be a non-negative integer, got {step!r}")
        return min(step + 1, self.num_steps)  # past the last step everything (but keep_frozen) trains

    def apply(self, step: int) -> list[str]:
        """Set requires_grad: groups 0..step train, later groups and `keep_frozen` do not. Returns the names
        of the trainable parameters. A step past the last one trains every group."""
        n = self._count(step)
        for i, group in enumerate(self.groups):
            for _, p in group.params:
                p.requires_grad_(i < n)
        for p in self._frozen:
            p.requires_grad_(False)
        return self.trainable_names(step)

    def apply_all(self) -> list[str]:
        """Train every group (a stage without gradual unfreezing); `keep_frozen` stays frozen."""
        return self.apply(self.num_steps - 1)

    def trainable_names(self, step: int) -> list[str]:
        """Names of the parameters that train after ``apply(step)``, top-down."""
        return [n for g in self.groups[: self._count(step)] for n in g.names]
