"""Throughput of `xdt eval`'s inference path against a competent plain HF loop and HF `Trainer.predict`, and the
paper's speed-up protocol.

Part 1 (eval path): the first `--max-sentences-per-lang` test sentences of `--langs` (default de, ar, hi, fi; 2000
each: 55,211 words) from ../shared/data/wikiann/xtreme, and a random BERT token classifier with the real mBERT
vocabulary in a student shape (default l6-h256; or --model DIR). Every path starts from the same word-tokenized
sentences and ends with one label per word, tokenization included, fp32, same threads:
  - xdt: the model loaded by `xdt.eval.model.load_model` with `xdt eval`'s defaults (`--precision auto`: on a CPU
    with native bf16 dot products, bf16 matmuls with an fp32 re-check, xdt.eval.bf16_bert) -> Aligner (windows,
    first sub-word slots) -> `predict_label_ids` (length-sorted batches, dynamic padding) -> label names;
  - xdt at `--precision fp32` (xdt.eval.fast_bert alone), in the same rounds;
  - sorted HF loop (the baseline that counts): fast tokenizer over all sentences (`is_split_into_words`,
    `truncation=True, max_length=L`), sentences sorted by sub-word count, batches of `--hf-batch-size` (32) padded
    by `tokenizer.pad`, `torch.inference_mode()`, argmax, the label of each word's first sub-word;
  - stock `Trainer.predict` (a second row): `datasets.map` with the same tokenization, unsorted batches,
    `DataCollatorForTokenClassification`;
  - xdt with the HF forward (`load_model(fast=False)`): what xdt.eval.fast_bert wins.
  Only sentences that fit in L sub-words with every word owning a sub-word are compared (HF truncation then drops
  no word), so all paths label exactly the same words; the labels must be identical on every word.
  Rounds: each round times every path once, the order rotated from round to round; the speed-ups are the median
  of the per-round ratios of CPU time (`time.process_time`, all threads of the process) and of wall time.
  Achieved GFLOP/s: the FLOPs of an unpruned forward over xdt's padded batches (matmuls and attention; the formula
  without attention is checked against torch's FlopCounterMode on one batch, which does not count CPU attention)
  per CPU second of the xdt path, beside the machine's fp32 matmul peak measured here (a 2048^3 `torch.mm`, best
  of 3, at the same threads) at start and end, and the bf16 one (the same product in bf16).
  The re-check (untimed, after the rounds, over all compared words): windows and words re-checked by a fresh default
  model, the labels of bf16 alone (no re-check) that differ from fp32's, and the largest |bf16 - fp32| logit.

Part 2 (paper protocol): latency at batch 1 and throughput at batch 32 for sequence length 32, random weights and
token ids, for an mBERT-shaped teacher (BERT-base, 119547 vocabulary) and the XtremeDistilTransformers student
shapes with the mBERT vocabulary: l6-h256, l6-h384, l12-h384; speed-up = teacher time / student time, beside the
published 8.7x / 5.3x / 2.7x.

Prints the machine load at start and end, one JSON object, then a one-line summary. `--out FILE` also writes the
JSON. Goal (JSON key `vs_sorted_hf_loop`): xdt >= 1.3x the sorted HF loop in paired CPU time, identical labels.
    .venv/bin/python benchmarks/eval_throughput.py
    .venv/bin/python benchmarks/eval_throughput.py --skip-speed --rounds 7 --out benchmarks/results/eval-cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import LoadWatch, emit_json, median_ratio, rotated  # noqa: E402  (the script's own folder)
from xdt.data.align import Aligner  # noqa: E402
from xdt.data.sentence import WIKIANN_LABELS, Sentence  # noqa: E402
from xdt.eval.data import load_eval_data  # noqa: E402
from xdt.eval.predict import padded_batches, predict_label_ids, to_label_names  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PAPER_SPEEDUP = {"l6-h256": 8.7, "l6-h384": 5.3, "l12-h384": 2.7}
SHAPES = {  # layers, hidden, heads, intermediate
    "teacher (mBERT shape)": (12, 768, 12, 3072),
    "l6-h256": (6, 256, 8, 1024),
    "l6-h384": (6, 384, 12, 1536),
    "l12-h384": (12, 384, 12, 1536),
}
MBERT_VOCAB = 119547
GOAL = 1.3  # xdt over the sorted HF loop, paired CPU time


def random_model(folder: Path, vocab: Path, shape: str):
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    layers, hidden, heads, inter = SHAPES[shape]
    torch.manual_seed(0)
    labels = list(WIKIANN_LABELS)
    cfg = BertConfig(vocab_size=MBERT_VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, id2label=dict(enumerate(labels)),
                     label2id={x: i for i, x in enumerate(labels)})
    BertForTokenClassification(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(vocab)).save_pretrained(folder)
    return folder


def fitting(sentences: list[Sentence], tokenizer, max_len: int) -> list[Sentence]:
    """Sentences whose sub-words fit in `max_len` with specials and whose every word has a sub-word."""
    enc = tokenizer([list(s.words) for s in sentences], is_split_into_words=True, add_special_tokens=True,
                    truncation=False, return_attention_mask=False, return_token_type_ids=False)
    keep = []
    for i, s in enumerate(sentences):
        words = {w for w in enc.word_ids(i) if w is not None}
        if len(enc["input_ids"][i]) <= max_len and len(words) == len(s.words):
            keep.append(s)
    return keep


def run_xdt(loaded, sentences, max_len, batch_size) -> list[list[str]]:
    features = Aligner(loaded.tokenizer, max_len).align(sentences)
    flat = predict_label_ids(loaded.model, features, batch_size, loaded.tokenizer.pad_token_id, loaded.device)
    return to_label_names(flat, sentences, loaded.id2label)


def run_sorted_loop(model, tokenizer, sentences, id2label, max_len, batch_size) -> list[list[str]]:
    """The plain loop a competent user writes: one fast-tokenizer call, length-sorted batches, inference_mode."""
    enc = tokenizer([list(s.words) for s in sentences], is_split_into_words=True, truncation=True,
                    max_length=max_len)
    ids = enc["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pred: list[list[str]] = [[] for _ in sentences]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            best = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            for row, i in enumerate(idx):
                labels, previous, best_row = [], None, best[row].tolist()
                for j, w in enumerate(enc.word_ids(i)):
                    if w is not None and w != previous:
                        labels.append(id2label[best_row[j]])
                    previous = w
                pred[i] = labels
    return pred


def run_trainer(model, tokenizer, sentences, label2id, id2label, max_len, batch_size, workdir):
    import datasets
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"tokens": [list(s.words) for s in sentences],
                                     "ner_tags": [[label2id[t] for t in s.tags] for s in sentences]})

    def tokenize_and_align_labels(batch):  # the HF token-classification example, verbatim in spirit
        enc = tokenizer(batch["tokens"], truncation=True, max_length=max_len, is_split_into_words=True)
        all_labels = []
        for i, tags in enumerate(batch["ner_tags"]):
            previous, labels = None, []
            for w in enc.word_ids(batch_index=i):
                labels.append(-100 if w is None or w == previous else tags[w])
                previous = w
            all_labels.append(labels)
        enc["labels"] = all_labels
        return enc

    ds = ds.map(tokenize_and_align_labels, batched=True, remove_columns=["tokens", "ner_tags"],
                keep_in_memory=True)
    args = TrainingArguments(output_dir=str(workdir), per_device_eval_batch_size=batch_size, report_to=[],
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorForTokenClassification(tokenizer))
    out = trainer.predict(ds)
    best = np.argmax(out.predictions, axis=-1)
    return [[id2label[int(p)] for p, lab in zip(row, labels) if lab != -100]
            for row, labels in zip(best, out.label_ids)]


def matmul_peak_gflops(n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of one large square matmul at the current threads (best of 3): the machine's practical limit."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        torch.mm(a, b)
        best = min(best, time.process_time() - t0)
    return 2 * n ** 3 / best / 1e9


def forward_flops(config, batch: int, length: int, attention: bool = True) -> int:
    """FLOPs (2 per multiply-add) of a BERT token-classification forward on [batch, length]: projections, attention
    scores and context (unless `attention` is False), feed-forward, classifier."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = batch * length
    per_layer = 2 * tokens * (4 * h * h + 2 * h * inter) + attention * 4 * batch * length * length * h
    return layers * per_layer + 2 * tokens * h * config.num_labels


def eval_flops(model, tokenizer, sentences, max_len, batch_size) -> tuple[int, dict]:
    from torch.utils.flop_counter import FlopCounterMode

    features = Aligner(tokenizer, max_len).align(sentences)
    total, first = 0, None
    for _, ids, mask, _ in padded_batches(features, batch_size, tokenizer.pad_token_id):
        total += forward_flops(model.config, *ids.shape)
        first = first or (ids, mask)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=torch.from_numpy(first[0]), attention_mask=torch.from_numpy(first[1]))
    # FlopCounterMode has no formula for the CPU flash-attention kernel: the check leaves attention out
    counted = int(counter.get_total_flops())
    formula = forward_flops(model.config, *first[0].shape, attention=False)
    return total, {"first_batch_formula_without_attention": formula, "first_batch_flop_counter": counted,
                   "formula_over_counter": round(formula / counted, 4)}


def peaks() -> dict:
    return {"fp32": matmul_peak_gflops(), "bf16": matmul_peak_gflops(dtype=torch.bfloat16)}


SAFETY_NOTE = ("threshold = SAFETY x the worst |d(l_a - l_c)| / (|h| |W_a - W_c|) on CALIBRATION_WINDOWS windows and "
               "on every re-checked word (audit_ratio), at least FLOOR (xdt.eval.bf16_bert)")


def recheck_report(folder, tokenizer, sentences, max_len, batch_size) -> dict:
    """What bf16 alone would get wrong on these words and what the re-check of a fresh default model did."""
    from xdt.eval.bf16_bert import Bf16RecheckBertTokenClassifier
    from xdt.eval.model import load_model

    fresh = load_model(folder, device="cpu", dtype="fp32")  # the default, as `xdt eval` loads it
    if not isinstance(fresh.model, Bf16RecheckBertTokenClassifier):
        return {"precision": fresh.precision, "skipped": "the default runs fp32 here (no native bf16, or not BERT)"}
    features = Aligner(tokenizer, max_len).align(sentences)
    pad = tokenizer.pad_token_id
    cpu = torch.device("cpu")
    fp32 = fresh.model.exact
    labels = predict_label_ids(fresh.model, features, batch_size, pad, cpu)
    stats = fresh.model.stats
    alone = Bf16RecheckBertTokenClassifier(fresh.model.hf, threshold=0.0)  # threshold 0: no re-check
    exact = predict_label_ids(fp32, features, batch_size, pad, cpu)
    bf16_only = predict_label_ids(alone, features, batch_size, pad, cpu)
    max_delta, max_ratio = 0.0, 0.0
    with torch.no_grad():
        for _, ids, mask, words in padded_batches(features, batch_size, pad):
            ids, mask, rows = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(words >= 0)
            h = alone.hidden_bf16(ids, mask, rows.reshape(-1).nonzero().squeeze(1))
            got = torch.addmm(alone.cls_b, h, alone.cls_w.t())
            want = fp32(input_ids=ids, attention_mask=mask, rows=rows).logits
            max_delta = max(max_delta, float((got - want).abs().max()))
            max_ratio = max(max_ratio, alone.worst_error(h.norm(dim=1), got, want))
    return {"precision": fresh.precision, "threshold_rule": SAFETY_NOTE,
            "calibration_predicted_token_share": stats.calibration_recheck_share,
            "max_error_ratio_all_words": max_ratio,
            **stats.as_dict(),
            "share_windows_rechecked": round(stats.rechecked_windows / stats.windows, 4),
            "share_words_rechecked": round(stats.rechecked_words / stats.words, 4),
            "labels_differing_bf16_alone": int((bf16_only != exact).sum()),
            "labels_differing_after_recheck": int((labels != exact).sum()),
            "max_abs_delta_logit": max_delta}


def part_eval(args) -> dict:
    from seqeval.metrics import f1_score
    from transformers import AutoModelForTokenClassification

    from xdt.eval.model import load_model

    path = DATA / "wikiann" / "xtreme"
    if not path.is_dir():
        return {"skipped": f"no WikiAnn test data under {path}"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else random_model(
            Path(tmp) / "model", DATA / "vocab" / "bert-base-multilingual-cased", args.shape)
        loaded = load_model(folder, device="cpu", dtype="fp32")  # what `xdt eval` runs by default (auto precision)
        fp32 = load_model(folder, device="cpu", dtype="fp32", precision="fp32")
        hf_model = AutoModelForTokenClassification.from_pretrained(str(folder), use_safetensors=True).eval()
        tokenizer = loaded.tokenizer
        id2label = {int(k): v for k, v in hf_model.config.id2label.items()}
        label2id = {v: k for k, v in id2label.items()}
        data = load_eval_data([str(path)], "test", args.langs.split(","), max_sentences=args.max_sentences_per_lang)
        all_sentences = [s for d in data.languages.values() for s in d.sentences]
        sentences = fitting(all_sentences, tokenizer, args.max_seq_length)
        gold = [list(s.tags) for s in sentences]
        words = sum(len(s.words) for s in sentences)
        flops, flop_check = eval_flops(hf_model, tokenizer, sentences, args.max_seq_length, args.batch_size)
        peak_start = peaks()

        paths = {
            "xdt": lambda: run_xdt(loaded, sentences, args.max_seq_length, args.batch_size),
            "xdt_fp32": lambda: run_xdt(fp32, sentences, args.max_seq_length, args.batch_size),
            "sorted_hf_loop": lambda: run_sorted_loop(hf_model, tokenizer, sentences, id2label, args.max_seq_length,
                                                      args.hf_batch_size),
        }
        if not args.no_hf_forward_row:  # what xdt.eval.fast_bert wins, measured in the same rounds
            plain = load_model(folder, device="cpu", dtype="fp32", fast=False)
            paths["xdt_hf_forward"] = lambda: run_xdt(plain, sentences, args.max_seq_length, args.batch_size)
        if not args.no_trainer:
            paths["trainer_predict"] = lambda: run_trainer(hf_model, tokenizer, sentences, label2id, id2label,
                                                           args.max_seq_length, args.hf_batch_size,
                                                           Path(tmp) / "trainer")
        warm = sentences[:200]  # first calls pay for allocations and lazy imports
        run_xdt(loaded, warm, args.max_seq_length, args.batch_size)
        run_xdt(fp32, warm, args.max_seq_length, args.batch_size)
        run_sorted_loop(hf_model, tokenizer, warm, id2label, args.max_seq_length, args.hf_batch_size)
        cpu = {name: [] for name in paths}
        wall = {name: [] for name in paths}
        preds = {}
        for r in range(args.rounds):
            for name in rotated(list(paths), r):
                c0, w0 = time.process_time(), time.perf_counter()
                preds[name] = paths[name]()
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - w0)
        peak_end = peaks()
        timed_stats = getattr(loaded.model, "stats", None)
        recheck = recheck_report(folder, tokenizer, sentences, args.max_seq_length, args.batch_size)
        model_name = str(args.model or f"random BERT {args.shape} (mBERT vocabulary)")
        architecture = loaded.architecture

    def mismatched(name: str) -> int:
        return sum(a != b for p, q in zip(preds["xdt"], preds[name]) for a, b in zip(p, q))

    def versus(name: str) -> dict:
        bad = mismatched(name)
        out = {"cpu_time_ratio": round(median_ratio(cpu[name], cpu["xdt"]), 3),
               "wall_ratio": round(median_ratio(wall[name], wall["xdt"]), 3),
               "identical_labels": bad == 0, "mismatched_words": bad,
               "f1": float(100 * f1_score(gold, preds[name]))}
        return out

    result = {
        "languages": list(data.languages), "sentences_read": len(all_sentences), "sentences_compared": len(sentences),
        "words_compared": words, "batch_size_xdt": args.batch_size, "batch_size_hf": args.hf_batch_size,
        "max_seq_length": args.max_seq_length, "model": model_name, "xdt_architecture": architecture,
        "xdt_precision": loaded.precision, "rounds": args.rounds,
        "statistic": "median over rounds of per-round ratios (other path's time / xdt's time); order rotated",
        "cpu_seconds": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
        "wall_seconds": {k: [round(t, 3) for t in v] for k, v in wall.items()},
        "words_per_cpu_s": {k: round(words / statistics.median(v), 1) for k, v in cpu.items()},
        "xdt_f1": float(100 * f1_score(gold, preds["xdt"])),
        "vs_sorted_hf_loop": {**versus("sorted_hf_loop"), "target": f">= {GOAL}x in paired CPU time, identical labels"},
        "flops": {"forward_unpruned": flops, **flop_check,
                  "xdt_achieved_gflops_per_cpu_s": round(flops / statistics.median(cpu["xdt"]) / 1e9, 1),
                  "sorted_hf_loop_achieved_gflops_per_cpu_s":
                      round(flops / statistics.median(cpu["sorted_hf_loop"]) / 1e9, 1),
                  "matmul_peak_gflops": {k: {"start": round(peak_start[k], 1), "end": round(peak_end[k], 1)}
                                         for k in peak_start},
                  **{f"xdt_share_of_{k}_peak": round(flops / statistics.median(cpu["xdt"]) / 1e9
                                                     / max(peak_start[k], peak_end[k]), 3) for k in peak_start}},
        "recheck": recheck,
        # the timed model's re-check over the warm-up and every round (the warm-up is too small to calibrate on:
        # fp32 alone; the first round calibrates, every round audits)
        "xdt_timed_recheck": timed_stats.as_dict() if timed_stats is not None else None,
        "how_compared": "sentences whose sub-words (with [CLS]/[SEP]) fit max_seq_length and whose every word "
                        "has a sub-word, so HF truncation drops no word; tokenization included",
    }
    v = result["vs_sorted_hf_loop"]
    v["pass"] = bool(v["identical_labels"] and v["cpu_time_ratio"] >= GOAL)
    if "trainer_predict" in paths:
        result["vs_trainer_predict"] = versus("trainer_predict")
    result["vs_xdt_fp32"] = versus("xdt_fp32")
    if "xdt_hf_forward" in paths:
        result["vs_xdt_with_hf_forward"] = versus("xdt_hf_forward")
    return result


def time_forward(model, batch: int, seq: int, runs: int, warmup: int) -> float:
    ids = torch.randint(1000, MBERT_VOCAB, (batch, seq))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for _ in range(warmup):
            model(input_ids=ids, attention_mask=mask)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def part_speed(args) -> dict:
    from transformers import BertConfig, BertForTokenClassification

    results = {}
    for name, (layers, hidden, heads, inter) in SHAPES.items():
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=MBERT_VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=inter, num_labels=len(WIKIANN_LABELS))
        model = BertForTokenClassification(cfg).eval()
        lat = time_forward(model, 1, args.seq_len, args.runs, 2)
        thr = time_forward(model, 32, args.seq_len, max(2, args.runs // 4), 1)
        results[name] = {"layers": layers, "hidden": hidden, "heads": heads, "intermediate": inter,
                         "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                         "latency_ms_batch1": round(1000 * lat, 3),
                         "throughput_seq_per_s_batch32": round(32 / thr, 1)}
        del model
    teacher = results["teacher (mBERT shape)"]
    for name, paper in PAPER_SPEEDUP.items():
        r = results[name]
        r["speedup_batch1"] = round(teacher["latency_ms_batch1"] / r["latency_ms_batch1"], 2)
        r["speedup_batch32"] = round(r["throughput_seq_per_s_batch32"] / teacher["throughput_seq_per_s_batch32"], 2)
        r["paper_speedup"] = paper
    return {"seq_len": args.seq_len, "runs_batch1": args.runs, "runs_batch32": max(2, args.runs // 4),
            "statistic": "median forward time", "models": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--langs", default="de,ar,hi,fi", help="test languages of part 1 (de,ar,hi,fi)")
    p.add_argument("--max-sentences-per-lang", type=int, default=2000,
                   help="test sentences read per language (default 2000: 55,211 words for de,ar,hi,fi)")
    p.add_argument("--shape", default="l6-h256", choices=[k for k in SHAPES if k in PAPER_SPEEDUP],
                   help="student shape of the random part-1 model (l6-h256)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="xdt's batch size (32, the HF loop's; `xdt eval --batch-size`, whose default is 64)")
    p.add_argument("--hf-batch-size", type=int, default=32, help="batch size of the HF paths (32)")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, each path once per round (5)")
    p.add_argument("--no-trainer", action="store_true", help="leave out the stock Trainer.predict row")
    p.add_argument("--no-hf-forward-row", action="store_true",
                   help="leave out the row of xdt's path with the HF forward (load_model(fast=False))")
    p.add_argument("--model", help="token-classification folder for part 1 (default: a random --shape BERT)")
    p.add_argument("--runs", type=int, default=20, help="timed forwards at batch 1 (batch 32: runs/4)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: reproducible on a shared node; 0: torch's own choice)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    watch = LoadWatch("eval_throughput")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = {"benchmark": "eval_throughput", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "device": "cpu", "command": " ".join(["python benchmarks/eval_throughput.py", *(argv or sys.argv[1:])])}
    if not args.skip_eval:
        result["eval_path"] = part_eval(args)
    if not args.skip_speed:
        result["paper_protocol"] = part_speed(args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine_load"] = watch.finish()
    emit_json(result, args.out)
    parts = []
    ev = result.get("eval_path", {})
    if "vs_sorted_hf_loop" in ev:
        v, f = ev["vs_sorted_hf_loop"], ev["flops"]
        parts.append(f"xdt eval {v['cpu_time_ratio']}x the sorted HF loop in CPU time ({v['wall_ratio']}x wall), "
                     f"{ev['words_compared']:,} words, {v['mismatched_words']} labels differ "
                     f"[{'PASS' if v['pass'] else 'FAIL'}: >= {GOAL}x, identical]; "
                     f"{f['xdt_achieved_gflops_per_cpu_s']} GFLOP/s = {f['xdt_share_of_fp32_peak']:.0%} / "
                     f"{f['xdt_share_of_bf16_peak']:.0%} of the fp32 / bf16 matmul peaks "
                     f"({max(f['matmul_peak_gflops']['fp32'].values())} / "
                     f"{max(f['matmul_peak_gflops']['bf16'].values())} GFLOP/s)")
        parts.append(f"{ev['vs_xdt_fp32']['cpu_time_ratio']}x xdt --precision fp32")
        rc = ev.get("recheck", {})
        if "share_windows_rechecked" in rc:
            parts.append(f"re-check: {rc['share_windows_rechecked']:.1%} of windows, {rc['share_words_rechecked']:.1%} "
                         f"of words; bf16 alone {rc['labels_differing_bf16_alone']} labels differ, after "
                         f"{rc['labels_differing_after_recheck']}; max |d logit| {rc['max_abs_delta_logit']:.3g}")
        if "vs_xdt_with_hf_forward" in ev:
            parts.append(f"{ev['vs_xdt_with_hf_forward']['cpu_time_ratio']}x xdt with the HF forward")
        if "vs_trainer_predict" in ev:
            parts.append(f"{ev['vs_trainer_predict']['cpu_time_ratio']}x Trainer.predict")
    for name in PAPER_SPEEDUP:
        if "paper_protocol" in result:
            r = result["paper_protocol"]["models"][name]
            parts.append(f"{name} {r['speedup_batch1']}x@1/{r['speedup_batch32']}x@32 (paper {r['paper_speedup']}x)")
    print("SUMMARY " + "; ".join(parts) + f"; {result['seconds']} s; {watch.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
