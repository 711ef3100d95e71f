"""Distillation components: losses (masked, weighted), gradual unfreezing, optimiser, selection, the teacher cache
and the step; the loops that drive them are in `xdt.recipes`."""

from xdt.distill.losses import (TERMS, DistillLoss, HiddenProjector, attention_loss, hidden_loss, label_loss,
                                logit_loss, masked_mse)
from xdt.distill.unfreeze import (UnfreezeGroup, UnfreezePlan, keep_frozen_names, unfreeze_groups,
                                  word_embedding_names)

__all__ = [
    "TERMS", "DistillLoss", "HiddenProjector", "UnfreezeGroup", "UnfreezePlan", "attention_loss", "hidden_loss",
    "keep_frozen_names", "label_loss", "logit_loss", "masked_mse", "unfreeze_groups", "word_embedding_names",
]
