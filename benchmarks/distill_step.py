"""Time per distillation step (teacher forward + student forward/backward) against a student-only fine-tuning step,
beside the ratio FLOPs predict; and the logits stage with the teacher-output cache against the teacher on the fly.

Three modes, each with its own student and torch AdamW (the optimizer xdt.distill.optim builds), timed round-robin
(one step of each per round, so load from other jobs on the machine hits them alike; the order of the modes rotates
from round to round, so none is always the one that runs first), warm-up rounds excluded; ratios are the median of
the per-round ratios, step times the median over the timed rounds:

- `student_ce`: student forward, cross-entropy on labels, backward, optimizer step (fine-tuning);
- `distill_live`: teacher forward without gradients, student forward, logits MSE (DistillLoss, as stage 2),
  backward, optimizer step;
- `distill_cached`: the same, the teacher outputs read from a cache built beforehand (build time reported).

FLOPs come from torch.utils.flop_counter.FlopCounterMode on one step of each (matmuls and attention; elementwise
work and the optimizer are not counted). Predicted ratio = (teacher fwd + student fwd+bwd) / student fwd+bwd.
Targets: measured distill/student ratio within 1.25x of the predicted one; the cached logits stage >= 2x faster
than on the fly. The cache's build time (one teacher pass over every window) is printed beside the speed-up: it
is paid once per transfer set, the speed-up every epoch. Batches: `--batch` windows of exactly `--length` tokens,
random ids of the vocabulary. Prints the machine load at start and end, one JSON object (also written to `--out`
when given), then one summary line.

    python benchmarks/distill_step.py [--threads 1] [--steps 15] [--warmup 2] [--vocab-size 119547]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MBERT_VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "bert-base-multilingual-cased" / "vocab.txt"
MBERT_VOCAB_SIZE = 119547

from bench_common import LoadWatch, median_ratio, rotated  # noqa: E402  (benchmarks/, the script's own folder)


def shape(text: str) -> tuple[int, int]:
    layers, hidden = text.lower().split("x")
    return int(layers), int(hidden)


def bert(vocab: int, layers: int, hidden: int, labels: int, length: int, seed: int):
    from transformers import BertConfig, BertForTokenClassification

    import torch

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                     max_position_embeddings=max(512, length), num_labels=labels)
    return BertForTokenClassification(cfg)


def synthetic_features(num_windows: int, length: int, vocab: int, labels: int, seed: int):
    """Windows of exactly `length` tokens: [CLS]=101 ... [SEP]=102, every inner token a word's first sub-word."""
    import numpy as np

    from xdt.data.align import AlignedFeatures

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(num_windows, length), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    word = np.tile(np.arange(-1, length - 1, dtype=np.int32), (num_windows, 1))
    word[:, -1] = -1
    lab = rng.integers(0, labels, size=(num_windows, length)).astype(np.int16)
    lab[word < 0] = -100
    return AlignedFeatures(input_ids=ids.reshape(-1), labels=lab.reshape(-1), word_index=word.reshape(-1),
                           offsets=np.arange(num_windows + 1, dtype=np.int64) * length,
                           window_sentence=np.arange(num_windows, dtype=np.int32),
                           sentence_words=np.full(num_windows, length - 2, np.int32),
                           sentence_subwords=np.full(num_windows, length - 2, np.int32),
                           unk_words=np.zeros(num_windows, np.int32), truncated_words=np.zeros(num_windows, np.int32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per mode (the median counts)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=None,
                        help=f"default: the mBERT vocabulary's ({MBERT_VOCAB_SIZE}), read from ../shared/data "
                             "when present")
    # default: the pair, an mBERT-shaped teacher and an l6-h384 student with the mBERT vocabulary
    parser.add_argument("--student", type=shape, default=(6, 384), help="LAYERSxHIDDEN (default 6x384)")
    parser.add_argument("--teacher", type=shape, default=(12, 768), help="LAYERSxHIDDEN (default 12x768)")
    parser.add_argument("--labels", type=int, default=7)
    parser.add_argument("--freeze-embeddings", action="store_true",
                        help="student word embeddings frozen (student.freeze_embeddings): no [V, H] gradient or "
                             "optimizer update per step")
    parser.add_argument("--fused-adamw", action="store_true",
                        help="torch AdamW(fused=True) instead of xdt.distill.optim.make_optimizer's default AdamW")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    watch = LoadWatch("distill_step")

    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from xdt.data.batching import WindowBatcher
    from xdt.distill.losses import DistillLoss, label_loss
    from xdt.distill.optim import make_optimizer
    from xdt.distill.teacher_cache import TeacherCache, build_teacher_cache, features_content_id

    torch.set_num_threads(args.threads)
    vocab = args.vocab_size or (sum(1 for _ in open(MBERT_VOCAB, encoding="utf-8")) if MBERT_VOCAB.exists()
                                else MBERT_VOCAB_SIZE)
    rounds = args.warmup + args.steps
    features = synthetic_features(args.batch * rounds, args.length, vocab, args.labels, seed=0)
    batcher = WindowBatcher(features, pad_id=0)
    batches = [batcher.collate(np.arange(i * args.batch, (i + 1) * args.batch)) for i in range(rounds)]

    teacher = bert(vocab, *args.teacher, args.labels, args.length, seed=1).eval().requires_grad_(False)
    def new_student():
        model = bert(vocab, *args.student, args.labels, args.length, seed=2)
        if args.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.AdamW(trained, lr=1e-4, fused=True) if args.fused_adamw
               else make_optimizer(trained, lr=1e-4))
        return model, opt

    students, optimizers = {}, {}
    for m in ("student_ce", "distill_live", "distill_cached"):
        students[m], optimizers[m] = new_student()
    probe, probe_opt = new_student()  # times the optimizer step alone
    logits_loss = DistillLoss({"logits": 1.0})

    # ---- the cache: built once over every window the timed run reads
    cache_dir = Path(tempfile.mkdtemp(prefix="xdt_bench_cache"))
    keys = dict(content_id=features_content_id(features), tokenizer_fp="synthetic", max_seq_length=args.length)
    start = time.perf_counter()
    manifest = build_teacher_cache(teacher, features, cache_dir, layers=[], batch_size=args.batch,
                                   teacher_path=None, progress=False, **keys)
    build_s = time.perf_counter() - start
    cache = TeacherCache.open(cache_dir, teacher_hash=None, layers_needed=[], **keys)

    def teacher_forward(batch):
        with torch.no_grad():
            out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return {"logits": out.logits.float(), "hidden_states": None, "attentions": None}

    def step(mode: str, batch) -> None:
        student, opt = students[mode], optimizers[mode]
        if mode == "distill_live":
            teacher_out = teacher_forward(batch)
        elif mode == "distill_cached":
            teacher_out = cache.batch(batch["window"], batch["input_ids"].shape[1])
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if mode == "student_ce":
            loss = label_loss(out.logits, batch["labels"])
        else:
            loss, _ = logits_loss(out, teacher_out, mask=batch["word_index"] >= 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # ---- FLOPs of one step of each part
    def flops(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return int(counter.get_total_flops())

    def student_fwd_bwd():
        s = students["student_ce"]
        label_loss(s(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"]).logits,
                   batches[0]["labels"]).backward()
        s.zero_grad(set_to_none=True)

    def student_fwd():
        with torch.no_grad():
            students["student_ce"](input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"])

    f_teacher = flops(lambda: teacher_forward(batches[0]))
    f_student_fb = flops(student_fwd_bwd)
    f_student_f = flops(student_fwd)
    predicted = (f_teacher + f_student_fb) / f_student_fb
    predicted_cached = predicted  # the cached step does the student's work alone: ideal speed-up = predicted

    # ---- timing, round-robin
    modes = ("student_ce", "distill_live", "distill_cached")
    times: dict[str, list[float]] = {m: [] for m in modes}
    parts: dict[str, list[float]] = {"teacher_forward": [], "cache_read": [], "optimizer_step": []}
    for r, batch in enumerate(batches):
        for m in rotated(modes, r):
            t0 = time.perf_counter()
            step(m, batch)
            if r >= args.warmup:
                times[m].append(time.perf_counter() - t0)
        if r >= args.warmup:  # components, for the explanation of the gap to the FLOP prediction
            t0 = time.perf_counter()
            teacher_forward(batch)
            parts["teacher_forward"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cache.batch(batch["window"], batch["input_ids"].shape[1])
            parts["cache_read"].append(time.perf_counter() - t0)
            s, opt = probe, probe_opt  # a student of its own: the timed ones keep their trajectories
            for p in s.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            t0 = time.perf_counter()
            opt.step()
            parts["optimizer_step"].append(time.perf_counter() - t0)
            opt.zero_grad(set_to_none=True)

    med = {m: statistics.median(v) for m, v in times.items()}
    comp = {k: statistics.median(v) for k, v in parts.items()}
    measured = median_ratio(times["distill_live"], times["student_ce"])
    opt_s = comp["optimizer_step"]
    no_opt = median_ratio([t - opt_s for t in times["distill_live"]], [t - opt_s for t in times["student_ce"]])
    speedup = median_ratio(times["distill_live"], times["distill_cached"])
    within = max(predicted / measured, measured / predicted)
    params = {"student": sum(p.numel() for p in students["student_ce"].parameters()),
              "student_trained": sum(p.numel() for p in students["student_ce"].parameters() if p.requires_grad),
              "student_non_embedding": sum(p.numel() for n, p in students["student_ce"].named_parameters()
                                           if "embeddings" not in n),
              "teacher": sum(p.numel() for p in teacher.parameters())}
    result = {
        "benchmark": "distill_step",
        "threads": args.threads, "batch": args.batch, "length": args.length, "vocab_size": vocab,
        "student": {"layers": args.student[0], "hidden": args.student[1]},
        "teacher": {"layers": args.teacher[0], "hidden": args.teacher[1]},
        "parameters": params, "freeze_embeddings": args.freeze_embeddings,
        "optimizer": "torch AdamW fused" if args.fused_adamw else "torch AdamW (xdt make_optimizer)",
        "steps_timed": args.steps, "warmup_steps": args.warmup,
        "statistic": "ratios: median of per-round ratios, mode order rotated each round; times: median",
        "flops": {"teacher_forward": f_teacher, "student_forward": f_student_f,
                  "student_forward_backward": f_student_fb,
                  "teacher_over_student_forward": round(f_teacher / f_student_f, 3)},
        "median_step_ms": {m: round(1e3 * v, 2) for m, v in med.items()},
        "median_part_ms": {k: round(1e3 * v, 2) for k, v in comp.items()},
        # FLOP rates achieved: FLOPs predict time only as far as these are equal
        "achieved_gflops_per_s": {
            "teacher_forward": round(f_teacher / comp["teacher_forward"] / 1e9, 1),
            "student_forward_backward": round(f_student_fb / (med["student_ce"] - comp["optimizer_step"]) / 1e9, 1)},
        "distill_over_student": {"predicted_from_flops": round(predicted, 3), "measured": round(measured, 3),
                                 "ratio_of_median_times": round(med["distill_live"] / med["student_ce"], 3),
                                 "measured_without_optimizer_step": round(no_opt, 3),
                                 "off_by": round(within, 3), "target": "within 1.25x of predicted",
                                 "pass": within <= 1.25},
        "cached_logits_stage": {"speedup_over_live": round(speedup, 3),
                                "ideal_speedup_from_flops": round(predicted_cached, 3),
                                "cache_build_s": round(build_s, 3), "cache_windows": manifest["num_windows"],
                                "cache_bytes": int(sum(f.stat().st_size for f in cache_dir.rglob("*.npy"))),
                                "target": ">= 2x faster than the teacher on the fly", "pass": speedup >= 2.0},
    }
    result["pass"] = result["distill_over_student"]["pass"] and result["cached_logits_stage"]["pass"]
    result["machine_load"] = watch.finish()
    text = json.dumps(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    d = result["distill_over_student"]
    print(f"distill_step: distill {med['distill_live'] * 1e3:.1f} ms vs student-only {med['student_ce'] * 1e3:.1f} "
          f"ms per step = {measured:.2f}x (FLOPs predict {predicted:.2f}x, off by {within:.2f}x) "
          f"[{'PASS' if d['pass'] else 'FAIL'}: within 1.25x]; cached logits stage {med['distill_cached'] * 1e3:.1f} "
          f"ms = {speedup:.2f}x faster than on the fly, teacher/student fwd FLOPs "
          f"{f_teacher / f_student_f:.1f}x [{'PASS' if speedup >= 2 else 'FAIL'}: >= 2x], cache built once in "
          f"{build_s:.1f} s; median of paired per-round ratios, {args.steps} rounds; "
          f"{args.threads} thread(s), batch {args.batch}x{args.length}, vocab {vocab}, {watch.summary()}"
          + (", embeddings frozen" if args.freeze_embeddings else "") + (", fused AdamW" if args.fused_adamw else ""))
    import shutil

    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
