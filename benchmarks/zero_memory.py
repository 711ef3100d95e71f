"""Per-rank memory of ZeRO 0/1/2/3 with 2 gloo ranks: training-state tensor bytes and peak process RSS.

Each stage runs as its own `torchrun --nproc_per_node 2` job: a token classifier built the way xdt builds its
models (`xdt.engine.zero3`: under ZeRO-3 partitioned as it is built, `deepspeed.zero.Init`; "3-whole" is ZeRO-3
with `deepspeed.zero_init: false`, built whole and partitioned by `deepspeed.initialize`), a torch AdamW client
optimizer, and two training steps (batch 4 x 32 tokens). Two models, random weights:

- bert-28.5M: a BERT of 4 layers x 512, 30,522 pieces;
- xlmr-base: XLM-R base's shape (12 layers x 768, 250,002 pieces, 278M parameters).

Two figures per rank:

- tensor bytes: every live CPU tensor storage (found through the garbage collector, each counted once) minus what
  was live before the model was built, at its largest (after backward and after the optimizer step of the second
  step): parameters, gradients, optimizer moments, fp32 master copies, DeepSpeed's flat buffers; nothing the
  allocator merely caches, no transient inside a call;
- peak RSS: the process's resident-set high-water mark (`ru_maxrss`) at the end, read in each rank: everything the
  rank ever held at once, the whole model built before partitioning included, plus the ~0.5 GB of Python, torch,
  DeepSpeed and transformers every rank carries (`rss_base`, the RSS just before the model is built).

bf16 (the precision of the paper-scale configs) decides the targets; fp32 is reported beside it (ZeRO keeps an
fp32 master partition besides fp32 parameters there, so ZeRO-3's saving is smaller). Targets: ZeRO-3 tensor bytes
<= 0.6x ZeRO-0's (bert-28.5M), ZeRO-3 peak RSS <= 0.6x ZeRO-0's (xlmr-base, `rss_ratio_zero3`).
Prints one JSON object and a summary line.

    python benchmarks/zero_memory.py [--models bert-28.5M,xlmr-base --precisions bf16,fp32 --stages 0,1,2,3,3-whole]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (transformers class, config keyword arguments)
    "bert-28.5M": ("BertForTokenClassification", dict(vocab_size=30522, hidden_size=512, num_hidden_layers=4,
                                                      num_attention_heads=8, intermediate_size=2048)),
    "xlmr-base": ("XLMRobertaForTokenClassification", dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                                                           num_attention_heads=12, intermediate_size=3072,
                                                           max_position_embeddings=514, type_vocab_size=1,
                                                           pad_token_id=1, bos_token_id=0, eos_token_id=2)),
}
STAGES = ("0", "1", "2", "3", "3-whole")


def live_tensor_bytes() -> int:
    import torch

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
        except (RuntimeError, ReferenceError):
            continue
    return sum(storages.values())


def rss_now() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def worker(args) -> None:
    import deepspeed
    import torch
    import transformers

    from xdt.config import DeepSpeedConfig
    from xdt.engine.distributed import init_distributed, rank, shutdown, world_size
    from xdt.engine.ds_config import build_ds_config
    from xdt.engine.zero3 import build_config, build_model, zero3_build

    torch.set_num_threads(1)
    init_distributed()
    cls_name, shape = MODELS[args.model]
    stage = args.stage.split("-")[0]
    ds_cfg = DeepSpeedConfig(config=f"ds_configs/zero{stage}.json", precision=args.precision,
                             zero_init=args.stage != "3-whole")
    ds_config = build_ds_config(ds_cfg, args.batch, world_size(), hidden_size=shape["hidden_size"])
    cls = getattr(transformers, cls_name)
    config = cls.config_class(num_labels=7, **shape)
    rss_base = rss_now()
    before = live_tensor_bytes()
    torch.manual_seed(0)
    with zero3_build(build_config(ds_cfg, ds_config)):  # partitioned as built on ZeRO-3 (not 3-whole)
        model = build_model(cls, config)
    params = sum(getattr(p, "ds_numel", None) or p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    torch.manual_seed(rank())
    peak = 0
    for _ in range(2):  # the second step has optimizer state from the first and its own gradients at once
        ids = torch.randint(1000, shape["vocab_size"], (args.batch, args.length))
        out = engine(input_ids=ids, labels=torch.randint(0, 7, (args.batch, args.length)))
        engine.backward(out.loss)
        peak = max(peak, live_tensor_bytes())
        engine.step()
        peak = max(peak, live_tensor_bytes())
    result = {"bytes": peak - before, "params": params, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
              * 1024, "rss_base": rss_base}
    Path(f"{args.result}.rank{rank()}.json").write_text(json.dumps(result))  # not with_suffix: "28.5M" has a dot
    shutdown()


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="bf16", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage is not None:
        return worker(args)
    from bench_common import LoadWatch  # benchmarks/, the script's own folder

    stages = args.stages.split(",")
    if not {"0", "3"} <= set(stages) or not set(stages) <= set(STAGES):
        sys.exit(f"--stages: choose from {', '.join(STAGES)}, with 0 and 3 (the ratios are to ZeRO-0)")
    watch = LoadWatch("zero_memory")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            results[model] = {"params": None, "precisions": {}}
            for precision in args.precisions.split(","):
                runs = {}
                for stage in stages:
                    result = Path(tmp) / f"{model}-{precision}-zero{stage}"
                    cmd = [torchrun, "--standalone", "--nproc_per_node=2", __file__, "--model", model, "--stage",
                           stage, "--precision", precision, "--result", str(result), "--batch", str(args.batch),
                           "--length", str(args.length)]
                    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                    if done.returncode != 0:
                        sys.exit(f"{model} ZeRO-{stage} {precision} failed:\n{done.stderr[-3000:]}")
                    ranks = [json.loads(Path(f"{result}.rank{r}.json").read_text()) for r in (0, 1)]
                    results[model]["params"] = ranks[0]["params"]
                    runs[stage] = {key: [r[key] for r in ranks] for key in ("bytes", "rss_peak", "rss_base")}
                zero0 = runs["0"]
                for run in runs.values():
                    run["tensor_mib"] = [mib(b) for b in run["bytes"]]
                    run["rss_peak_mib"] = [mib(b) for b in run["rss_peak"]]
                    run["rss_base_mib"] = [mib(b) for b in run["rss_base"]]
                    run["tensor_ratio_to_zero0"] = round(max(run["bytes"]) / max(zero0["bytes"]), 3)
                    run["rss_ratio_to_zero0"] = round(max(run["rss_peak"]) / max(zero0["rss_peak"]), 3)
                results[model]["precisions"][precision] = runs

    def decisive(model: str) -> dict | None:
        if model not in results:
            return None
        precisions = results[model]["precisions"]
        return precisions.get("bf16") or next(iter(precisions.values()))

    small, large = decisive("bert-28.5M"), decisive("xlmr-base")
    result = {"benchmark": "zero_memory", "ranks": 2, "models": results,
              "targets": {"tensor_ratio_zero3": "ZeRO-3 tensor bytes per rank <= 0.6 x ZeRO-0's (bert-28.5M, bf16)",
                          "rss_ratio_zero3": "ZeRO-3 peak RSS per rank <= 0.6 x ZeRO-0's (xlmr-base, bf16)"},
              "tensor_ratio_zero3": small["3"]["tensor_ratio_to_zero0"] if small else None,
              "rss_ratio_zero3": large["3"]["rss_ratio_to_zero0"] if large else None}
    checks = [v <= 0.6 for v in (result["tensor_ratio_zero3"], result["rss_ratio_zero3"]) if v is not None]
    result["pass"] = all(checks)
    result["machine_load"] = watch.finish()
    print(json.dumps(result))
    parts = []
    for model, entry in results.items():
        for precision, runs in entry["precisions"].items():
            parts.append(f"{model} ({entry['params'] / 1e6:.1f}M) {precision}: " + ", ".join(
                f"ZeRO-{s} {max(r['tensor_mib'])} MiB tensors / {max(r['rss_peak_mib'])} MiB RSS "
                f"({r['tensor_ratio_to_zero0']}x / {r['rss_ratio_to_zero0']}x)" for s, r in runs.items()))
    print("zero_memory: 2 ranks, per rank; " + "; ".join(parts)
          + f" [{'PASS' if result['pass'] else 'FAIL'}: ZeRO-3 tensors {result['tensor_ratio_zero3']}x, "
            f"peak RSS {result['rss_ratio_zero3']}x (targets <= 0.6x)]; {watch.summary()}")


if __name__ == "__main__":
    main()
