"""The paper's strategies (XtremeDistil, ACL 2020, Table 3) as lists of stages.

    D0-S  labels only, one model for all languages
    D1    labels + teacher logits, jointly
    D2    labels + logits + representations, jointly
    D3.1  S1 representations; S2 labels + logits
    D3.2  D3.1 with gradual unfreezing in S2
    D4.1  S1 representations; S2 logits; S3 labels
    D4.2  D4.1 with gradual unfreezing in S2 and S3 (the paper's best)

Representations and logits are learnt on the transfer set (unlabeled); labels on the labeled data; a joint stage
(`data: both`) takes one batch of each per step.
"""

from __future__ import annotations

from xdt.config import DistillConfig, RunConfig, StageConfig

STRATEGIES: dict[str, list[tuple[str, str, dict[str, float], bool]]] = {
    # name: [(stage name, data, loss weights, gradual unfreeze)]
    "D0-S": [("labels", "labeled", {"labels": 1.0}, False)],
    "D1": [("joint", "both", {"logits": 1.0, "labels": 1.0}, False)],
    "D2": [("joint", "both", {"hidden": 1.0, "logits": 1.0, "labels": 1.0}, False)],
    "D3.1": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits+labels", "both", {"logits": 1.0, "labels": 1.0}, False)],
    "D3.2": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits+labels", "both", {"logits": 1.0, "labels": 1.0}, True)],
    "D4.1": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits", "transfer", {"logits": 1.0}, False),
             ("labels", "labeled", {"labels": 1.0}, False)],
    "D4.2": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits", "transfer", {"logits": 1.0}, True),
             ("labels", "labeled", {"labels": 1.0}, True)],
}


def strategy_stages(name: str, distill: DistillConfig) -> list[StageConfig]:
    return [StageConfig(name=stage, data=data, losses=dict(losses), epochs=distill.epochs, steps=distill.steps,
                        gradual_unfreeze=gradual, lr=distill.lr, schedule=distill.schedule,
                        warmup_steps=distill.warmup_steps)
            for stage, data, losses, gradual in STRATEGIES[name]]


def resolve_stages(cfg: RunConfig) -> list[StageConfig]:
    """The run's stages: the named strategy's, or the explicit `stages` list."""
    if cfg.distill.strategy is not None:
        return strategy_stages(cfg.distill.strategy, cfg.distill)
    return list(cfg.stages)
