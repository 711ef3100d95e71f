"""Throughput of `xdt eval`'s inference path against HF `Trainer.predict`, and the paper's speed-up protocol.

Part 1 (eval path): the test splits of ../shared/data (XTREME layout and raw WikiAnn), a tiny random BERT token
classifier with the real mBERT vocabulary (hidden 32, 1 layer, as the tests use; or --model DIR). Both paths
start from the same word-tokenized sentences and end with one label per word:
  - xdt:  Aligner (windows, first sub-word slots) -> length-sorted batches, dynamic padding -> argmax per word;
  - HF:   the standard recipe: `datasets.Dataset.map` with `truncation=True, max_length=L, is_split_into_words`,
          labels on first sub-words, `DataCollatorForTokenClassification`, `Trainer.predict`, argmax where the
          label is not -100.
  The comparison keeps only sentences that fit in L sub-words with every word owning at least one sub-word, so
  truncation drops nothing and both paths score exactly the same words; the F1 of both must be identical.
  Timed end to end (tokenization included), in the same process, same threads, same batch size, fp32.

Part 2 (paper protocol): latency at batch 1 and throughput at batch 32 for sequence length 32, random weights and
token ids, for an mBERT-shaped teacher (BERT-base, 119547 vocabulary) and the XtremeDistilTransformers student
shapes with the mBERT vocabulary: l6-h256, l6-h384, l12-h384; speed-up = teacher time / student time, beside the
published 8.7x / 5.3x / 2.7x.

Prints one JSON object, then a one-line summary. `--out FILE` also writes the JSON.
    .venv/bin/python benchmarks/eval_throughput.py                      # default: well under 5 minutes, 2 cores
    .venv/bin/python benchmarks/eval_throughput.py --max-sentences-per-lang 1000 --runs 50
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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xdt.data.align import Aligner  # noqa: E402
from xdt.data.sentence import WIKIANN_LABELS, Sentence  # noqa: E402
from xdt.eval.data import load_eval_data  # noqa: E402
from xdt.eval.predict import predict_label_ids, to_label_names  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PAPER_SPEEDUP = {"l6-h256": 8.7, "l6-h384": 5.3, "l12-h384": 2.7}
SHAPES = {  # layers, hidden, heads, intermediate
    "teacher (mBERT shape)": (12, 768, 12, 3072),
    "l6-h256": (6, 256, 8, 1024),
    "l6-h384": (6, 384, 12, 1536),
    "l12-h384": (12, 384, 12, 1536),
}
MBERT_VOCAB = 119547


def tiny_model(folder: Path, vocab: Path):
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    labels = list(WIKIANN_LABELS)
    cfg = BertConfig(vocab_size=MBERT_VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, id2label=dict(enumerate(labels)),
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


def run_xdt(model, tokenizer, sentences, id2label, max_len, batch_size) -> tuple[list[list[str]], float]:
    t0 = time.perf_counter()
    features = Aligner(tokenizer, max_len).align(sentences)
    flat = predict_label_ids(model, features, batch_size, tokenizer.pad_token_id, torch.device("cpu"))
    pred = to_label_names(flat, sentences, id2label)
    return pred, time.perf_counter() - t0


def run_trainer(model, tokenizer, sentences, label2id, id2label, max_len, batch_size, workdir):
    import datasets
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
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
    pred = [[id2label[int(p)] for p, lab in zip(row, labels) if lab != -100]
            for row, labels in zip(best, out.label_ids)]
    return pred, time.perf_counter() - t0


def part_eval(args) -> dict:
    from seqeval.metrics import f1_score
    from transformers import AutoModelForTokenClassification

    from xdt.data.tokenizer import load_tokenizer

    paths = [str(p) for p in (DATA / "wikiann" / "xtreme", DATA / "wikiann" / "raw") if p.is_dir()]
    if not paths:
        return {"skipped": f"no WikiAnn test data under {DATA / 'wikiann'}"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else tiny_model(Path(tmp) / "tiny", DATA / "vocab" /
                                                                "bert-base-multilingual-cased")
        model = AutoModelForTokenClassification.from_pretrained(str(folder), use_safetensors=True).eval()
        tokenizer = load_tokenizer(folder)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        label2id = {v: k for k, v in id2label.items()}
        data = load_eval_data(paths, "test", None, max_sentences=args.max_sentences_per_lang)
        all_sentences = [s for d in data.languages.values() for s in d.sentences]
        sentences = fitting(all_sentences, tokenizer, args.max_seq_length)
        gold = [list(s.tags) for s in sentences]
        words = sum(len(s.words) for s in sentences)
        run_xdt(model, tokenizer, sentences[:200], id2label, args.max_seq_length, args.batch_size)  # warm-up
        xdt_times, hf_times = [], []
        for _ in range(args.eval_repeats):
            xdt_pred, t = run_xdt(model, tokenizer, sentences, id2label, args.max_seq_length, args.batch_size)
            xdt_times.append(t)
            hf_pred, t = run_trainer(model, tokenizer, sentences, label2id, id2label, args.max_seq_length,
                                     args.batch_size, Path(tmp) / "trainer")
            hf_times.append(t)
    agree = sum(a == b for p, q in zip(xdt_pred, hf_pred) for a, b in zip(p, q))
    xdt_wps = words / min(xdt_times)
    hf_wps = words / min(hf_times)
    return {
        "languages": len(data.languages), "sentences_read": len(all_sentences), "sentences_compared": len(sentences),
        "words_compared": words, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length,
        "model": str(args.model or "tiny random BERT (hidden 32, 1 layer, mBERT vocabulary)"),
        "xdt_seconds": [round(t, 3) for t in xdt_times], "trainer_seconds": [round(t, 3) for t in hf_times],
        "xdt_words_per_s": round(xdt_wps, 1), "trainer_words_per_s": round(hf_wps, 1),
        "speedup": round(xdt_wps / hf_wps, 2),
        "xdt_f1": float(100 * f1_score(gold, xdt_pred)), "trainer_f1": float(100 * f1_score(gold, hf_pred)),
        "same_f1": bool(f1_score(gold, xdt_pred) == f1_score(gold, hf_pred)),
        "word_agreement": round(agree / words, 6),
        "how_compared": "sentences whose sub-words (with [CLS]/[SEP]) fit max_seq_length and whose every word "
                        "has a sub-word, so HF truncation drops no word; best of eval_repeats; tokenization "
                        "included",
    }


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
    p.add_argument("--max-sentences-per-lang", type=int, default=400,
                   help="test sentences read per language (default 400)")
    p.add_argument("--batch-size", type=int, default=64, help="eval batch size of both paths (64)")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--eval-repeats", type=int, default=2, help="timed passes of each eval path; best is kept")
    p.add_argument("--model", help="token-classification folder for part 1 (default: a tiny random BERT)")
    p.add_argument("--runs", type=int, default=20, help="timed forwards at batch 1 (batch 32: runs/4)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: reproducible on a shared node; 0: torch's own choice)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = {"benchmark": "eval_throughput", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "device": "cpu"}
    if not args.skip_eval:
        result["eval_path"] = part_eval(args)
    if not args.skip_speed:
        result["paper_protocol"] = part_speed(args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    parts = []
    ev = result.get("eval_path", {})
    if "speedup" in ev:
        parts.append(f"xdt eval {ev['xdt_words_per_s']:.0f} words/s vs Trainer.predict "
                     f"{ev['trainer_words_per_s']:.0f} ({ev['speedup']}x, F1 {ev['xdt_f1']:.2f} vs "
                     f"{ev['trainer_f1']:.2f}, same={ev['same_f1']})")
    for name in PAPER_SPEEDUP:
        if "paper_protocol" in result:
            r = result["paper_protocol"]["models"][name]
            parts.append(f"{name} {r['speedup_batch1']}x@1/{r['speedup_batch32']}x@32 (paper {r['paper_speedup']}x)")
    print("SUMMARY " + "; ".join(parts) + f"; {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
