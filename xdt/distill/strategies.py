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

from xdt.config import DistillConfig, RunConfig, StageConfig
from xdt.errors import ConfigError

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
    if distill.attention_loss != "none" and not any(s.losses.get("attention", 0) > 0 for s in stages):
        raise ConfigError(f"distill.attention_loss: is {distill.attention_loss!r} but strategy {name} has no "
                          "representation (hidden) stage to add the attention term to; choose a strategy with one "
                          "(D2, D3.1, D3.2, D4.1, D4.2) or set distill.attention_loss: none")
    return stages


def check_attention_loss(cfg: RunConfig) -> None:
    """Refuse a `distill.attention_loss` that no stage would use (see the module docstring)."""
    if cfg.distill.attention_loss == "none":
        return
    if cfg.distill.strategy is not None:
        strategy_stages(cfg.distill.strategy, cfg.distill)
    elif not any(s.losses.get("attention", 0) > 0 for s in cfg.stages):
        raise ConfigError(f"distill.attention_loss: is {cfg.distill.attention_loss!r} but no stage of `stages` "
                          "gives the attention term a positive weight; add `attention: 1.0` to the losses of a "
                          "stage (e.g. the one with `hidden`) or set distill.attention_loss: none")


def resolve_stages(cfg: RunConfig) -> list[StageConfig]:
    """The run's stages: the named strategy's, or the explicit `stages` list."""
    if cfg.distill.strategy is not None:
        return strategy_stages(cfg.distill.strategy, cfg.distill)
    check_attention_loss(cfg)
    return list(cfg.stages)
