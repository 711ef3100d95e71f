"""ZeRO-3 without a full model on any rank: models built partitioned (`deepspeed.zero.Init`) and written through
`GatheredParameters`.

Under ZeRO-3, `deepspeed.initialize` partitions a model that was built whole, so every rank first holds all of it
(and, for a 278M-parameter XLM-R, its fp32 copy besides the training state). Built inside `zero3_build`, each
layer is partitioned as soon as its constructor returns:

- `from_pretrained` (teacher folders, `student.init_from`) goes through transformers' own ZeRO-3 integration: a
  live `HfDeepSpeedConfig` makes it build under `zero.Init` and load the checkpoint layer by layer;
- `build_model(cls, config)` (random teachers and students) builds under `zero.Init` too, but not through
  `cls._from_config`: transformers skips torch's per-layer init there and re-draws the weights on rank 0 in
  another order, so a seed would give another model than an unpartitioned build. Here the layers draw exactly as
  they do unpartitioned, and each sub-model's `post_init` initialisation runs at the same point, on its
  gathered parameters, on every rank: the weights are bit-identical to `cls(config)`'s (fp32 and bf16 checked)
  and every rank's RNG stream ends where it would.

Writes into a partitioned model (SVD embeddings, copying the teacher) go through `gathered(params, write=True)`;
reads through `gathered(params)`. Both are no-ops for ordinary parameters, so one code path serves every stage.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from xdt.config import DeepSpeedConfig

log = logging.getLogger(__name__)
_active: list = []  # the HfDeepSpeedConfig of the zero3_build being run


def build_config(cfg: DeepSpeedConfig, ds_config: dict) -> dict | None:
    """The config `zero3_build` partitions models by: the run's on ZeRO stage 3 (unless `deepspeed.zero_init` is
    false), None otherwise."""
    from xdt.engine.ds_config import zero_stage

    return ds_config if cfg.zero_init and zero_stage(ds_config) == 3 else None


@contextmanager
def zero3_build(ds_config: dict | None):
    """Models built inside (`from_pretrained`, `build_model`) are partitioned by `ds_config` (ZeRO stage 3) as
    they are built; None: built whole, as without this context. Every rank must build the same models."""
    if ds_config is None:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    _active.append(HfDeepSpeedConfig(ds_config))  # transformers holds only a weak reference: keep it alive here
    try:
        yield
    finally:
        _active.pop()
        unset_hf_deepspeed_config()  # a later from_pretrained (export, eval) loads whole again


def building_partitioned() -> bool:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def from_pretrained(auto, folder: str, **kwargs):
    """`auto.from_pretrained(folder, ignore_mismatched_sizes=True, **kwargs)`, also inside `zero3_build`.

    There transformers loads the checkpoint into the partitioned model as it is (rank 0 reads it, one layer gathered
    at a time) and fails on a tensor of another shape, typically a head of another label set, where a whole build
    re-initialises it. Such tensors are left out of what it loads, so they are initialised anew, as unpartitioned."""
    if not building_partitioned():
        return auto.from_pretrained(folder, ignore_mismatched_sizes=True, **kwargs)
    from transformers import AutoConfig
    from transformers.modeling_utils import load_state_dict

    files = sorted(Path(folder).glob("*.safetensors")) or sorted(Path(folder).glob("pytorch_model*.bin"))
    # every rank reads shapes only (meta tensors), as transformers' own ZeRO-3 load does on ranks other than 0
    shapes = {k: v.shape for f in files for k, v in load_state_dict(str(f), map_location="meta").items()}
    config_keys = {"num_labels", "id2label", "label2id", "trust_remote_code"}
    config = AutoConfig.from_pretrained(folder, **{k: v for k, v in kwargs.items() if k in config_keys})
    cls, expected = _expected_shapes(auto, config, kwargs.get("trust_remote_code", False))
    mismatched = {k for k, shape in shapes.items() if k in expected and expected[k] != shape}
    if not mismatched:
        return _only_used_conversions(auto.from_pretrained(folder, **kwargs))
    log.info("%s: loaded partitioned without %s (another shape than the model's: initialised anew)", folder,
             ", ".join(sorted(mismatched)))
    state = {}
    for f in files:  # rank 0 reads the values, the other ranks the shapes (transformers keeps rank 0's)
        state.update(load_state_dict(str(f), map_location="cpu" if torch.distributed.get_rank() == 0 else "meta",
                                     weights_only=True))
    rest = {k: v for k, v in kwargs.items() if k not in config_keys}
    return _only_used_conversions(cls.from_pretrained(
        None, config=config, state_dict={k: v for k, v in state.items() if k not in mismatched}, **rest))


def _only_used_conversions(model):
    """Keep the key renamings the load applied, as a whole load does: transformers' ZeRO-3 load keeps all of them,
    so `save_pretrained` would write legacy names (LayerNorm gamma/beta) for keys that never had them."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if c.was_used()]
    return model


def _expected_shapes(auto, config, trust_remote_code: bool) -> tuple[type, dict[str, torch.Size]]:
    """The class `auto` builds from `config` and its parameter shapes, from a build on the meta device with
    transformers' ZeRO-3 switch off (no memory, no collective)."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        with torch.device("meta"):
            model = auto.from_config(config, trust_remote_code=trust_remote_code)
        return type(model), {k: v.shape for k, v in model.state_dict().items()}
    finally:
        set_hf_deepspeed_config(_active[-1])


def build_model(cls, *args, **kwargs):
    """`cls(*args, **kwargs)` (a transformers model from its config, or any torch module), partitioned inside
    `zero3_build` with the weights an unpartitioned build draws."""
    if not building_partitioned():
        return cls(*args, **kwargs)
    import deepspeed
    from transformers.integrations.deepspeed import deepspeed_config

    with deepspeed.zero.Init(config_dict_or_path=deepspeed_config()), _post_init_gathered():
        return cls(*args, **kwargs)


@contextmanager
def _post_init_gathered():
    """`PreTrainedModel.init_weights` (what `post_init` runs) on gathered parameters while `zero.Init` builds.

    Unpatched it would write into the empty shards zero.Init leaves (and fail on the padding row); skipping it and
    re-initialising afterwards (as `_from_config` does) would draw in another order than an unpartitioned build,
    where a sub-model (BertModel) is initialised before its parent's head layer is even built."""
    from transformers import PreTrainedModel
    from transformers.initialization import guard_torch_init_functions

    original = PreTrainedModel.init_weights

    def init_weights(self):
        is_custom = self.is_custom_code()

        def visit(module, fn):  # transformers' smart_apply: children first, each sub-model with its own init
            for child in module.children():
                visit(child, child._initialize_weights if isinstance(child, PreTrainedModel) else fn)
            if getattr(module, "_is_hf_initialized", False):
                return  # a sub-model initialised by its own post_init: not gathered again
            params = list(module.parameters(recurse=False))  # _init_weights may touch direct children's too
            params += [p for c in module.children() if not isinstance(c, PreTrainedModel)
                       for p in c.parameters(recurse=False)]
            # every rank draws (the same values: same seed), so each rank's RNG stream continues as unpartitioned
            with gathered(params, write=True):
                fn(module, is_custom)

        with torch.no_grad(), guard_torch_init_functions():
            visit(self, self._initialize_weights)
        self.tie_weights(recompute_mapping=False)

    PreTrainedModel.init_weights = init_weights
    try:
        yield
    finally:
        PreTrainedModel.init_weights = original


def is_partitioned(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gathered(params, write: bool = False):
    """The full values of `params` inside the context (a collective: every rank enters it). With `write`, what rank 0
    holds at exit is partitioned back to every rank. A no-op for parameters that are not partitioned."""
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if write else None)


def frozen_config(ds_config: dict, dtype: torch.dtype) -> dict:
    """The run's ZeRO-3 config for a frozen model (the teacher during distillation): no optimizer, and the model's
    own precision (bf16 on GPUs whatever the student trains in), which zero.Init gives the parameters it creates."""
    import copy

    config = copy.deepcopy(ds_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config.get("zero_optimization", {}).pop("offload_optimizer", None)
    for name, kind in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        config[name] = {**config.get(name, {}), "enabled": dtype == kind}
    return config


def frozen_engine(model: torch.nn.Module, config: dict):
    """A DeepSpeed engine without optimizer around a partitioned, frozen model built under `frozen_config`: its
    hooks gather each layer's parameters for the forward and release them after, so the model is called as usual.
    Every rank must call the model the same number of times (the training loop does)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine
