"""Per-rank memory of parameters + gradients + optimizer state for ZeRO 0/1/2/3 with 2 gloo ranks.

Each stage runs as its own `torchrun --nproc_per_node 2` job on a BERT-shaped token classifier built the way xdt
builds students (in full, then partitioned by `deepspeed.initialize` under ZeRO-3; transformers 5's weight init
does not run under `deepspeed.zero.Init`), with a torch AdamW client optimizer, and two training steps. Memory is the bytes of every live tensor
storage of the rank (found through the garbage collector, each storage counted once) minus what was live before
the model was built, at its largest (after backward, and after the optimizer step, of the second step):
parameters, gradients, optimizer moments, fp32 master copies and DeepSpeed's flat buffers, nothing the allocator
merely caches. bf16 (the precision of the paper-scale configs) decides the target; fp32 is reported beside it:
in fp32 ZeRO keeps an fp32 master partition besides the fp32 parameters, so ZeRO-3's saving is smaller there.
Prints one JSON object and a summary line.

    python benchmarks/zero_memory.py [--layers 4 --hidden 512 --vocab 30522 --precisions bf16,fp32]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def worker(args) -> None:
    import deepspeed
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from xdt.config import DeepSpeedConfig
    from xdt.engine.distributed import init_distributed, rank, shutdown, world_size
    from xdt.engine.ds_config import build_ds_config

    torch.set_num_threads(1)
    init_distributed()
    ds_config = build_ds_config(DeepSpeedConfig(config=f"ds_configs/zero{args.stage}.json",
                                                precision=args.precision), args.batch, world_size(),
                                hidden_size=args.hidden)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden, num_labels=7)
    before = live_tensor_bytes()
    model = BertForTokenClassification(config)
    params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    torch.manual_seed(rank())
    peak = 0
    for _ in range(2):  # the second step has optimizer state from the first and its own gradients at once
        ids = torch.randint(1000, args.vocab, (args.batch, args.length))
        out = engine(input_ids=ids, labels=torch.randint(0, 7, (args.batch, args.length)))
        engine.backward(out.loss)
        peak = max(peak, live_tensor_bytes())
        engine.step()
        peak = max(peak, live_tensor_bytes())
    used = peak - before
    Path(args.result).with_suffix(f".rank{rank()}.json").write_text(json.dumps({"bytes": used, "params": params}))
    shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--precision", default="bf16", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage is not None:
        return worker(args)
    from bench_common import LoadWatch  # benchmarks/, the script's own folder

    watch = LoadWatch("zero_memory")

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            stages = {}
            for stage in (0, 1, 2, 3):
                result = Path(tmp) / f"{precision}-zero{stage}"
                cmd = [torchrun, "--standalone", "--nproc_per_node=2", __file__, "--stage", str(stage),
                       "--precision", precision, "--result", str(result), "--layers", str(args.layers),
                       "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--batch", str(args.batch),
                       "--length", str(args.length)]
                done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"ZeRO-{stage} {precision} failed:\n{done.stderr[-3000:]}")
                ranks = [json.loads(result.with_suffix(f".rank{r}.json").read_text()) for r in (0, 1)]
                stages[stage] = {"per_rank_bytes": [r["bytes"] for r in ranks], "params": ranks[0]["params"]}
            zero0 = max(stages[0]["per_rank_bytes"])
            for s in stages.values():
                s["per_rank_mib"] = [round(b / 2**20, 1) for b in s["per_rank_bytes"]]
                s["ratio_to_zero0"] = round(max(s["per_rank_bytes"]) / zero0, 3)
            results[precision] = stages
    first = next(iter(results))
    params = results[first][0]["params"]
    decisive = results.get("bf16", results[first])
    result = {"benchmark": "zero_memory", "ranks": 2, "params": params,
              "model": {"layers": args.layers, "hidden": args.hidden, "vocab": args.vocab},
              "precisions": results, "target": "ZeRO-3 per rank <= 0.6 x ZeRO-0 (bf16)",
              "pass": decisive[3]["ratio_to_zero0"] <= 0.6}
    result["machine_load"] = watch.finish()
    print(json.dumps(result))
    parts = [f"{p}: " + ", ".join(f"ZeRO-{k} {max(v['per_rank_mib'])} MiB ({v['ratio_to_zero0']}x)"
                                  for k, v in stages.items()) for p, stages in results.items()]
    print(f"zero_memory: {params / 1e6:.1f}M params, 2 ranks, per rank; " + "; ".join(parts)
          + f" [{'PASS' if result['pass'] else 'FAIL'}: ZeRO-3 <= 0.6x ZeRO-0 in bf16]; {watch.summary()}")


if __name__ == "__main__":
    main()
