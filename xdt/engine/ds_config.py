"""The DeepSpeed config a run uses: a file of `ds_configs/` with the run's values filled in.

Batch sizes, gradient accumulation, clipping and precision come from the run config, so the JSON never holds
"auto" when `deepspeed.initialize` sees it; a file that contradicts itself is refused with the key named.
"""

from __future__ import annotations

from xdt.config import DeepSpeedConfig, read_ds_file, resolve_ds_path
from xdt.errors import ConfigError

PRECISION_KEYS = {"bf16": "bf16", "fp16": "fp16"}


def build_ds_config(cfg: DeepSpeedConfig, micro_batch_size: int, world_size: int,
                    hidden_size: int | None = None) -> dict:
    """The config for `deepspeed.initialize`. `hidden_size` sizes ZeRO-3's buckets when the file leaves them out,
    as the HF integration's "auto" does (reduce bucket H^2, prefetch 0.9 H^2, persistence 10 H): DeepSpeed's own
    defaults (5e8 elements) allocate ~2 GB per rank whatever the model's size. ZeRO-3's optimizer sub-groups are
    1e7 elements unless the file says otherwise."""
    path = resolve_ds_path(cfg.config)
    ds = read_ds_file(path)
    accum = cfg.gradient_accumulation_steps
    if accum < 1:
        raise ConfigError(f"deepspeed.gradient_accumulation_steps: expected >= 1, got {accum}")
    for key, want in (("train_micro_batch_size_per_gpu", micro_batch_size), ("gradient_accumulation_steps", accum),
                      ("train_batch_size", micro_batch_size * accum * world_size)):
        if key in ds and ds[key] not in ("auto", want):
            raise ConfigError(f"deepspeed.config: {path} sets {key}={ds[key]} but the run needs {want} "
                              f"(micro batch {micro_batch_size} x accumulation {accum} x {world_size} ranks); "
                              "remove the key, xdt fills it")
        ds[key] = want
    ds["gradient_clipping"] = cfg.gradient_clipping
    for name in ("bf16", "fp16"):
        ds[name] = {**ds.get(name, {}), "enabled": cfg.precision == name}
    zero = ds.setdefault("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage == 3 and hidden_size:
        for key, value in (("reduce_bucket_size", hidden_size * hidden_size),
                           ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
                           ("stage3_param_persistence_threshold", 10 * hidden_size)):
            if zero.get(key, "auto") == "auto":
                zero[key] = value
    if stage == 3 and zero.get("sub_group_size", "auto") == "auto":
        # DeepSpeed's default (1e9 elements) makes a rank's whole partition one sub-group, so each optimizer step
        # briefly holds its fp32 gradient and torch Adam's intermediates at the size of the whole partition (XLM-R
        # base, 2 ranks, bf16: 0.8 GB more per rank during the step, which then set the peak); 1e7 bounds each to
        # 40 MB (a larger parameter is a sub-group of its own). Adam is elementwise: the update is the same.
        zero["sub_group_size"] = 10_000_000
    leftover = [k for k, v in _walk(ds) if v == "auto"]
    if leftover:
        raise ConfigError(f"deepspeed.config: {path} leaves {', '.join(leftover)} as \"auto\"; xdt fills only "
                          "batch sizes, accumulation, clipping and precision")
    return ds


def _walk(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, node


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
