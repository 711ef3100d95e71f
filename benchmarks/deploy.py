"""What each deployment step costs and saves, language by language, on CPU.

Part 1 (a trained student; default: the quickstart student, trained with `xdt run` into --work if absent, or any
HF folder with --model and its data with --data): one row per artifact
  pytorch fp32 | trimmed (to the data's pieces, all splits) | onnx fp32 | onnx int8 | trimmed + int8
with the weights file size, folder size, parameter count, latency at batch 1 and throughput at batch 32 (length
--seq-len, medians of --runs forwards, random ids, --threads threads), and per-language F1 of `xdt eval` on the
--split set, its delta to the PyTorch model, and the share of words whose predicted label equals PyTorch's.

Part 2 (the issue's trimming goals on the real mBERT vocabulary; skipped, saying why, without ../shared/data):
an l6-h256 student with the real mBERT vocabulary (119,547 pieces) and RANDOM weights (untrained: sizes, latency
and identical-prediction checks do not need trained weights; its F1 means nothing and is not reported as a
score), trimmed to the train+dev+test files of en de ru ar hi es fi tr and to en alone: pieces used and kept,
size ratios, words of the trimming corpus that changed tokenization, and whether `xdt eval` gives identical
predictions (and F1) before and after trimming on the first --mbert-eval-sentences test sentences per language;
plus ONNX fp32 / int8 latency of the same shape.

Prints one JSON object, then one summary line; writes --results/deploy-cpu.json and deploy-cpu.md.
    .venv/bin/python benchmarks/deploy.py                         # defaults: about 5 minutes on 2 cores
    .venv/bin/python benchmarks/deploy.py --model DIR --data PATH --langs de,en
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xdt.deploy.onnx_export import export_onnx  # noqa: E402
from xdt.deploy.onnx_predictor import ONNX_FILE, OnnxTokenClassifier, is_onnx_folder  # noqa: E402
from xdt.deploy.source import no_progress_bars  # noqa: E402
from xdt.outputs import folder_bytes  # noqa: E402
from xdt.deploy.trim import trim_model  # noqa: E402
from xdt.eval.options import EvalOptions  # noqa: E402
from xdt.eval.run import evaluate  # noqa: E402
from bench_common import LoadWatch  # noqa: E402  (benchmarks/, the script's own folder)

DATA = ROOT.parent / "shared" / "data"
XTREME = DATA / "wikiann" / "xtreme"
MBERT = DATA / "vocab" / "bert-base-multilingual-cased"
MBERT_LANGS = ("en", "de", "ru", "ar", "hi", "es", "fi", "tr")
ISSUE = {"pieces_8": 55541, "pieces_en": 26069, "ratio_8": 1.8, "ratio_en": 2.5, "int8_f1_drop": 0.5,
         "int8_speedup_b1": 1.5}


# ------------------------------------------------------------------------------------------------ measuring


def load_runner(folder: Path):
    """(forward(ids, mask), vocabulary size, parameters) for an HF folder (PyTorch) or an ONNX folder."""
    from transformers import AutoModelForTokenClassification

    if is_onnx_folder(folder):
        predictor = OnnxTokenClassifier(folder, threads=torch.get_num_threads())
        return predictor.logits, predictor.config.vocab_size, predictor.manifest.get("torch_parameters")
    model = AutoModelForTokenClassification.from_pretrained(str(folder)).eval()

    def forward(ids, mask):
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits

    return forward, model.config.vocab_size, sum(p.numel() for p in model.parameters())


def median_ms(forward, batch: int, seq_len: int, vocab: int, runs: int) -> float:
    rng = np.random.default_rng(0)
    ids = rng.integers(min(5, vocab - 1), vocab, (batch, seq_len)).astype(np.int64)
    mask = np.ones_like(ids)
    for _ in range(3):
        forward(ids, mask)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        forward(ids, mask)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def weights_file(folder: Path) -> Path:
    return folder / ONNX_FILE if is_onnx_folder(folder) else folder / "model.safetensors"


def measure(folder: Path, args) -> dict:
    forward, vocab, params = load_runner(folder)
    b1 = median_ms(forward, 1, args.seq_len, vocab, args.runs)
    b32 = median_ms(forward, 32, args.seq_len, vocab, max(3, args.runs // 3))
    return {"path": str(folder), "weights_bytes": weights_file(folder).stat().st_size,
            "folder_bytes": folder_bytes(folder), "parameters": params, "vocab": vocab,
            "latency_b1_ms": round(b1, 3), "throughput_b32_sent_per_s": round(32 / (b32 / 1000), 1)}


def run_eval(folder: Path, data: str, langs, split: str, out: Path, args, max_sentences=None) -> dict:
    return evaluate(EvalOptions(model=str(folder), data=[data], out=str(out), langs=langs, split=split,
                                progress=False, threads=args.threads, max_sentences=max_sentences))


def label_agreement(a: Path, b: Path, langs) -> float:
    same = total = 0
    for lang in langs:
        pa = (a / "predictions" / f"{lang}.conll").read_text(encoding="utf-8").splitlines()
        pb = (b / "predictions" / f"{lang}.conll").read_text(encoding="utf-8").splitlines()
        for x, y in zip(pa, pb):
            if x.strip():
                total += 1
                same += x.split("\t")[2] == y.split("\t")[2]
    return same / total if total else float("nan")


def identical_predictions(a: Path, b: Path, langs) -> bool:
    return all((a / "predictions" / f"{lang}.conll").read_bytes() == (b / "predictions" / f"{lang}.conll").read_bytes()
               for lang in langs)


# ------------------------------------------------------------------------------------------------ part 1


def quickstart_student(work: Path, retrain: bool) -> tuple[Path, str]:
    run_dir = work / "quickstart"
    if retrain or not (run_dir / "run.json").is_file() or not (run_dir / "student" / "model.safetensors").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        print(f"training the quickstart student: xdt run configs/quickstart.yaml output.dir={run_dir}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "xdt", "run", str(ROOT / "configs" / "quickstart.yaml"),
                        f"output.dir={run_dir}"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    run = json.loads((run_dir / "run.json").read_text())
    return run_dir / "student", run["data"]


def part_student(args, work: Path) -> dict:
    if args.model:
        if not args.data:
            raise SystemExit("--model needs --data (the WikiAnn path to trim for and score on)")
        model, data = Path(args.model), args.data
        source = "given"
    else:
        model, data = quickstart_student(work, args.retrain)
        data = args.data or data
        source = "quickstart (xdt run configs/quickstart.yaml, trained here)"
    langs = args.langs.split(",") if args.langs else None
    arts = work / "artifacts"
    shutil.rmtree(arts, ignore_errors=True)
    built: dict[str, Path] = {"pytorch fp32": model}
    trim = trim_model(model, data, arts / "trimmed", langs=langs)
    built["trimmed"] = arts / "trimmed"
    exports = {}
    for name, src, q in (("onnx fp32", model, None), ("onnx int8", model, "int8"),
                         ("trimmed + int8", arts / "trimmed", "int8")):
        out = arts / name.replace(" + ", "-").replace(" ", "-")
        exports[name] = export_onnx(src, out, quantize=q, data=[data], langs=langs, split=args.split,
                                    int8_min_agreement=0.0)
        built[name] = out

    rows = {}
    base_dir = work / "eval" / "pytorch-fp32"
    for name, folder in built.items():
        row = measure(folder, args)
        out = work / "eval" / name.replace(" + ", "-").replace(" ", "-")
        report = run_eval(folder, data, langs, args.split, out, args)
        row["f1"] = {lang: e["f1"] for lang, e in report["languages"].items()}
        row["mean_f1"] = report["mean_f1"]
        rows[name] = row
        row["label_agreement_with_pytorch"] = label_agreement(base_dir, out, report["languages"])
        row["identical_predictions"] = identical_predictions(base_dir, out, report["languages"])
    base = rows["pytorch fp32"]
    for row in rows.values():
        row["f1_delta"] = {lang: round(f - base["f1"][lang], 2) for lang, f in row["f1"].items()}
        row["mean_f1_delta"] = round(row["mean_f1"] - base["mean_f1"], 2)
        row["speedup_b1"] = round(base["latency_b1_ms"] / row["latency_b1_ms"], 2)
        row["speedup_b32"] = round(row["throughput_b32_sent_per_s"] / base["throughput_b32_sent_per_s"], 2)
        row["size_ratio"] = round(base["weights_bytes"] / row["weights_bytes"], 2)
    int8 = rows["onnx int8"]
    goals = {
        "onnx_fp32_agreement_100": rows["onnx fp32"]["label_agreement_with_pytorch"] == 1.0,
        "int8_mean_f1_drop": -int8["mean_f1_delta"],
        "int8_mean_f1_drop_ok": -int8["mean_f1_delta"] <= ISSUE["int8_f1_drop"],
        "int8_speedup_b1": int8["speedup_b1"], "int8_speedup_b1_ok": int8["speedup_b1"] >= ISSUE["int8_speedup_b1"],
        "trimmed_identical_predictions": rows["trimmed"]["identical_predictions"],
    }
    return {"model": str(model), "model_source": source, "data": data, "split": args.split,
            "langs": sorted(base["f1"]), "rows": rows, "goals": goals,
            "trim": {k: trim[k] for k in ("pieces_before", "pieces_used", "pieces_kept", "size_ratio")}
            | {"words_changed": trim["corpus"]["words_changed"]},
            "parity": {name: e["parity"] for name, e in exports.items()}}


# ------------------------------------------------------------------------------------------------ part 2


def part_mbert(args, work: Path) -> dict:
    if not XTREME.is_dir() or not MBERT.is_dir():
        return {"skipped": f"real data not available: {XTREME} or {MBERT} is missing"}
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from xdt.config import STUDENT_PRESETS
    from xdt.data.sentence import WIKIANN_LABELS

    root = work / "mbert-l6-h256"
    shutil.rmtree(root, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(MBERT))
    p = STUDENT_PRESETS["l6-h256"]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=p["hidden_size"], num_hidden_layers=p["num_layers"],
                        num_attention_heads=p["num_heads"], intermediate_size=p["intermediate_size"],
                        id2label=dict(enumerate(WIKIANN_LABELS)),
                        label2id={x: i for i, x in enumerate(WIKIANN_LABELS)},
                        architectures=["BertForTokenClassification"])
    model = BertForTokenClassification(config).eval()
    model.save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    del model
    langs8 = list(args.mbert_langs.split(","))
    trims = {"8 languages": trim_model(root / "model", str(XTREME), root / "trimmed-8", langs=langs8),
             "en": trim_model(root / "model", str(XTREME), root / "trimmed-en", langs=["en"])}
    out = {"model": "l6-h256 BertForTokenClassification, mBERT cased vocabulary, RANDOM weights (untrained)",
           "langs": langs8, "corpus": f"{XTREME} train+dev+test", "trims": {}}
    n = args.mbert_eval_sentences
    base_eval = run_eval(root / "model", str(XTREME), langs8, "test", root / "eval" / "model", args, n)
    for name, rep in trims.items():
        folder = Path(rep["out"])
        langs = langs8 if name != "en" else ["en"]
        ev = run_eval(folder, str(XTREME), langs, "test", root / "eval" / folder.name, args, n)
        out["trims"][name] = {
            "pieces_before": rep["pieces_before"], "pieces_used": rep["pieces_used"], "pieces_kept": rep["pieces_kept"],
            "pieces_floor": rep["pieces_floor"], "floor_scripts": rep["floor_scripts"],
            "parameters_before": rep["parameters_before"], "parameters_after": rep["parameters_after"],
            "weights_bytes_before": rep["model_bytes_before"], "weights_bytes_after": rep["model_bytes_after"],
            "size_ratio": rep["size_ratio"],
            "folder_ratio": round(folder_bytes(root / "model") / rep["folder_bytes_after"], 3),
            "corpus_words": rep["corpus"]["words"], "words_changed": rep["corpus"]["words_changed"],
            "identical_predictions": identical_predictions(root / "eval" / "model", root / "eval" / folder.name,
                                                           langs),
            "f1_identical": all(ev["languages"][x]["f1"] == base_eval["languages"][x]["f1"] for x in langs),
            "eval_sentences_per_lang": n,
        }
    for name, src, q in (("onnx fp32", root / "model", None), ("onnx int8", root / "model", "int8"),
                         ("trimmed-8 + int8", root / "trimmed-8", "int8")):
        export_onnx(src, root / name.replace(" + ", "-").replace(" ", "-"), quantize=q, int8_min_agreement=0.0)
    rows = {}
    for name, folder in (("pytorch fp32", root / "model"), ("trimmed 8 languages", root / "trimmed-8"),
                         ("trimmed en", root / "trimmed-en"), ("onnx fp32", root / "onnx-fp32"),
                         ("onnx int8", root / "onnx-int8"), ("trimmed-8 + int8", root / "trimmed-8-int8")):
        rows[name] = measure(folder, args)
    base = rows["pytorch fp32"]
    for row in rows.values():
        row["speedup_b1"] = round(base["latency_b1_ms"] / row["latency_b1_ms"], 2)
        row["speedup_b32"] = round(row["throughput_b32_sent_per_s"] / base["throughput_b32_sent_per_s"], 2)
        row["size_ratio"] = round(base["weights_bytes"] / row["weights_bytes"], 2)
    out["rows"] = rows
    t8, ten = out["trims"]["8 languages"], out["trims"]["en"]
    out["goals"] = {
        "pieces_8": t8["pieces_used"], "pieces_8_as_issue": t8["pieces_used"] == ISSUE["pieces_8"],
        "pieces_en": ten["pieces_used"], "pieces_en_as_issue": ten["pieces_used"] == ISSUE["pieces_en"],
        "ratio_8": t8["size_ratio"], "ratio_8_ok": t8["size_ratio"] >= ISSUE["ratio_8"],
        "ratio_en": ten["size_ratio"], "ratio_en_ok": ten["size_ratio"] >= ISSUE["ratio_en"],
        "words_changed": t8["words_changed"] + ten["words_changed"],
        "identical_predictions": t8["identical_predictions"] and ten["identical_predictions"],
        "int8_speedup_b1": rows["onnx int8"]["speedup_b1"],
    }
    return out


# ------------------------------------------------------------------------------------------------ report


def rel(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else str(path)


def mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def markdown(result: dict) -> str:
    lines = [f"# Deployment on CPU ({result['threads']} thread(s), length {result['seq_len']}, medians)", ""]
    s = result.get("student")
    if s:
        langs = s["langs"]
        lines += [f"## Student: `{rel(s['model'])}` ({s['model_source']})", "",
                  f"Data: `{s['data']}`, split {s['split']}; F1 = `xdt eval` (seqeval default mode); "
                  "delta and label agreement against the PyTorch fp32 row.", "",
                  "| artifact | weights MB | folder MB | parameters | b1 ms | b1 speed-up | b32 sent/s | mean F1 | "
                  "delta | " + " | ".join(langs) + " | same label |",
                  "|---|" + "---:|" * (9 + len(langs))]
        for name, r in s["rows"].items():
            per = " | ".join(f"{r['f1'][x]:.2f} ({r['f1_delta'][x]:+.2f})" for x in langs)
            lines.append(f"| {name} | {mb(r['weights_bytes'])} | {mb(r['folder_bytes'])} | {r['parameters']:,} | "
                         f"{r['latency_b1_ms']:.2f} | {r['speedup_b1']:.2f}x | {r['throughput_b32_sent_per_s']:.0f} | "
                         f"{r['mean_f1']:.2f} | {r['mean_f1_delta']:+.2f} | {per} | "
                         f"{r['label_agreement_with_pytorch']:.2%} |")
        g = s["goals"]
        lines += ["", f"Goals: ONNX fp32 same label as PyTorch on every word: {g['onnx_fp32_agreement_100']}; "
                  f"int8 mean F1 delta {-g['int8_mean_f1_drop']:+.2f} (goal: a drop of at most 0.5: "
                  f"{g['int8_mean_f1_drop_ok']}); "
                  f"int8 {g['int8_speedup_b1']}x PyTorch fp32 at batch 1 (goal >= 1.5: {g['int8_speedup_b1_ok']}); "
                  f"trimmed: identical predictions {g['trimmed_identical_predictions']}.", ""]
    m = result.get("mbert")
    if m and "skipped" not in m:
        lines += ["## l6-h256 with the real mBERT vocabulary (random weights: sizes, speed, identical predictions)",
                  "", f"Trimming corpus: {m['corpus']}.", "",
                  "| trimmed to | pieces used | pieces kept | parameters | weights MB | smaller | words changed | "
                  "identical predictions |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for name, t in m["trims"].items():
            lines.append(f"| {name} | {t['pieces_used']:,} | {t['pieces_kept']:,} | {t['parameters_before']:,} -> "
                         f"{t['parameters_after']:,} | {mb(t['weights_bytes_before'])} -> "
                         f"{mb(t['weights_bytes_after'])} | {t['size_ratio']:.2f}x | {t['words_changed']} of "
                         f"{t['corpus_words']:,} | {t['identical_predictions']} (F1 identical "
                         f"{t['f1_identical']}, {t['eval_sentences_per_lang']} test sentences per language) |")
        lines += ["", "| artifact | weights MB | parameters | b1 ms | b1 speed-up | b32 sent/s | b32 speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in m["rows"].items():
            lines.append(f"| {name} | {mb(r['weights_bytes'])} | {r['parameters']:,} | {r['latency_b1_ms']:.2f} | "
                         f"{r['speedup_b1']:.2f}x | {r['throughput_b32_sent_per_s']:.0f} | {r['speedup_b32']:.2f}x |")
        lines.append("")
    elif m:
        lines += [f"mBERT part skipped: {m['skipped']}", ""]
    lines.append(f"Command: `{result['command']}`; {result['seconds']} s.")
    return "\n".join(lines) + "\n"


def summary(result: dict) -> str:
    parts = []
    s = result.get("student")
    if s:
        r = s["rows"]
        parts.append(f"student: onnx fp32 same labels {r['onnx fp32']['label_agreement_with_pytorch']:.2%}, "
                     f"int8 mean F1 {r['onnx int8']['mean_f1_delta']:+.2f} at {r['onnx int8']['speedup_b1']}x b1, "
                     f"trimmed {r['trimmed']['size_ratio']}x smaller F1 {r['trimmed']['mean_f1_delta']:+.2f}, "
                     f"trimmed+int8 {r['trimmed + int8']['size_ratio']}x smaller")
    m = result.get("mbert")
    if m and "skipped" not in m:
        t8, ten = m["trims"]["8 languages"], m["trims"]["en"]
        parts.append(f"mBERT l6-h256: 8 langs {t8['pieces_used']:,} pieces {t8['size_ratio']}x smaller, en "
                     f"{ten['pieces_used']:,} pieces {ten['size_ratio']}x smaller, words changed "
                     f"{t8['words_changed'] + ten['words_changed']}, identical predictions "
                     f"{t8['identical_predictions'] and ten['identical_predictions']}, int8 "
                     f"{m['rows']['onnx int8']['speedup_b1']}x b1")
    elif m:
        parts.append(f"mBERT part skipped ({m['skipped']})")
    return "SUMMARY " + "; ".join(parts) + f"; {result['seconds']} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="HF token-classification folder (default: the quickstart student)")
    p.add_argument("--data", help="WikiAnn path to trim for and score on (default: the quickstart run's data)")
    p.add_argument("--langs", help="comma-separated languages (default: every language of --data)")
    p.add_argument("--split", default="test")
    p.add_argument("--work", default=str(ROOT / "runs" / "deploy-bench"), help="artifacts and eval outputs")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="deploy-cpu.{json,md} here")
    p.add_argument("--retrain", action="store_true", help="train the quickstart student even if --work has one")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (1)")
    p.add_argument("--runs", type=int, default=30, help="timed forwards at batch 1 (batch 32: runs/3)")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--no-mbert", action="store_true", help="skip part 2 (the mBERT-vocabulary l6-h256)")
    p.add_argument("--mbert-langs", default=",".join(MBERT_LANGS))
    p.add_argument("--mbert-eval-sentences", type=int, default=300,
                   help="test sentences per language for part 2's identical-prediction check (300)")
    args = p.parse_args(argv)
    watch = LoadWatch("deploy")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "deploy", "device": "cpu", "threads": args.threads, "seq_len": args.seq_len,
              "runs": args.runs, "command": " ".join(["python benchmarks/deploy.py", *(argv or sys.argv[1:])]),
              "versions": {"torch": torch.__version__}}
    import onnxruntime

    result["versions"]["onnxruntime"] = onnxruntime.__version__
    with no_progress_bars():
        result["student"] = part_student(args, work)
        if not args.no_mbert:
            result["mbert"] = part_mbert(args, work)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine_load"] = watch.finish()
    text = json.dumps(result, indent=2, default=str)
    print(text)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "deploy-cpu.json").write_text(text + "\n", encoding="utf-8")
    (results / "deploy-cpu.md").write_text(markdown(result), encoding="utf-8")
    print(summary(result) + f"; {watch.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
