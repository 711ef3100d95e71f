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

`distill.attention_loss: mse | kl` adds an ``attention`` term of weight 1 to every preset stage that has the
``hidden`` term (the representation stage; D2's joint stage), as the paper's optional attention loss in S1. A
preset without such a stage (D0-S, D1) is refused, and so are explicit `stages` (strategy null) of which none
gives ``attention`` a positive weight: the option would otherwise do nothing.
"""

from __future__ import annotations

from xdt.config import STRATEGIES, DistillConfig, RunConfig, StageConfig, check_attention_loss

def _with_attention(losses: dict[str, float], distill: DistillConfig) -> dict[str, float]:
    """A preset stage's terms, plus ``attention: 1`` beside ``hidden`` when `distill.attention_loss` is set."""
    losses = dict(losses)
    if distill.attention_loss != "none" and losses.get("hidden", 0) > 0:
        losses.setdefault("attention", 1.0)
    return losses


def strategy_stages(name: str, distill: DistillConfig) -> list[StageConfig]:
    def steps(stage: str) -> int:
        return distill.representation_steps if stage == "representations" and distill.representation_steps \
            else distill.steps

    stages = [StageConfig(name=stage, data=data, losses=_with_attention(losses, distill), epochs=distill.epochs,
                          steps=steps(stage), gradual_unfreeze=gradual, lr=distill.lr, schedule=distill.schedule,
                          warmup_steps=distill.warmup_steps)
              for stage, data, losses, gradual in STRATEGIES[name]]
    return stages


def resolve_stages(cfg: RunConfig) -> list[StageConfig]:
    """The run's stages: the named strategy's, or the explicit `stages` list."""
    check_attention_loss(cfg.distill, cfg.stages)  # also for a config built without load_config's checks
    if cfg.distill.strategy is not None:
        return strategy_stages(cfg.distill.strategy, cfg.distill)
    return list(cfg.stages)
