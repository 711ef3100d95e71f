"""`xdt eval`, top to bottom: suite -> data -> model -> predictions -> scores -> report files."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from xdt.data.align import Aligner
from xdt.data.cache import align_cached
from xdt.engine.safe_load import check_safetensors
from xdt.errors import XdtError
from xdt.eval.data import EvalData, load_eval_data
from xdt.eval.model import LoadedModel, check_labels, load_model, trained_window
from xdt.eval.options import EvalOptions
from xdt.eval.predict import predict_label_ids, to_label_names
from xdt.eval.report import finalize, language_entry, write_all, write_predictions
from xdt.eval.scoring import score
from xdt.eval.suites import SCHEMES, Suite, default_reference, load_reference, load_suite
from xdt.outputs import check_out, staged_folder

REFERENCE_NAME = "XtremeDistil (ACL 2020) Table 17"
DEFAULT_WINDOW = 128  # sub-words per window of a model that does not record the one it was trained with


def shard_languages(langs: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Round-robin share: shard i of n takes languages i, i+n, i+2n, ... of the requested order."""
    if shard is None:
        return list(langs)
    index, count = shard
    return list(langs[index::count])


def _versions() -> dict:
    import numpy
    import seqeval
    import torch
    import transformers

    from xdt import __version__

    return {"xdt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "seqeval": getattr(seqeval, "__version__", "1.2.2+"), "numpy": numpy.__version__,
            "python": platform.python_version()}


def _check_options(opts: EvalOptions) -> None:
    if not opts.model:
        raise XdtError("--model DIR is required (a folder with config.json and model.safetensors)")
    if not opts.data:
        raise XdtError("--data PATH is required (a WikiAnn folder or file; repeat --data for several)")
    if not opts.out:
        raise XdtError("--out DIR is required")
    if opts.teacher and opts.compare:
        raise XdtError("--teacher and --compare both give the teacher column; pass one of them")
    if opts.batch_size < 1:
        raise XdtError(f"--batch-size {opts.batch_size}: expected a positive integer")
    if opts.max_seq_length is not None and opts.max_seq_length < 3:
        raise XdtError(f"--max-seq-length {opts.max_seq_length}: expected at least 3")
    if opts.max_sentences is not None and opts.max_sentences < 1:
        raise XdtError(f"--max-sentences {opts.max_sentences}: expected a positive integer")
    if opts.threads is not None and opts.threads < 1:
        raise XdtError(f"--threads {opts.threads}: expected a positive integer")
    if opts.scheme is not None and opts.scheme not in SCHEMES:
        raise XdtError(f"--scheme {opts.scheme!r}: expected one of {', '.join(SCHEMES)}")


def resolve_suite(opts: EvalOptions) -> Suite:
    if opts.suite is None:
        return Suite(name="custom", languages=tuple(opts.langs or ()), split=opts.split or "test",
                     scheme=opts.scheme or "IOB2")
    suite = load_suite(opts.suite)
    langs = suite.languages
    if opts.langs:
        outside = [x for x in opts.langs if x not in suite.languages]
        if outside:
            raise XdtError(f"--langs {','.join(outside)}: not in suite {suite.name} ({' '.join(suite.languages)})")
        langs = tuple(opts.langs)
    return Suite(name=suite.name, languages=langs, split=opts.split or suite.split, scheme=opts.scheme or suite.scheme,
                 description=suite.description, reference=suite.reference, path=suite.path)


def evaluate_model(loaded: LoadedModel, data: EvalData, opts: EvalOptions, scheme: str, pred_dir: Path,
                   label: str) -> tuple[dict[str, dict], dict]:
    """Per-language report entries and timings of one model over every language of `data`."""
    if loaded.max_positions is not None and opts.max_seq_length > loaded.max_positions:
        raise XdtError(f"--max-seq-length {opts.max_seq_length}: {loaded.path} has only {loaded.max_positions} "
                       "positions; lower it (long sentences are windowed, no word is lost)")
    all_tags = set().union(*(d.tags() for d in data.languages.values()))
    check_labels(loaded, all_tags, f"{data.split} data ({', '.join(data.paths)})")
    aligner = Aligner(loaded.tokenizer, opts.max_seq_length)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else None
    timing = {"align_s": 0.0, "inference_s": 0.0, "score_s": 0.0, "write_s": 0.0, "words": 0}
    entries: dict[str, dict] = {}
    for lang, lang_data in data.languages.items():
        t0 = time.perf_counter()
        sentences = lang_data.sentences
        content = lang_data.content_id(opts.max_sentences) if cache_dir else None
        features = align_cached(sentences, aligner, content, cache_dir)
        t1 = time.perf_counter()
        words = lang_data.words
        with tqdm(total=words, desc=f"{label} {lang}", unit="word", disable=not opts.progress or None,
                  leave=False, dynamic_ncols=True) as bar:
            flat = predict_label_ids(loaded.model, features, opts.batch_size, pad_id, loaded.device, bar)
        t2 = time.perf_counter()
        pred = to_label_names(flat, sentences, loaded.id2label)
        gold = [s.tags for s in sentences]
        scores = score(gold, pred, scheme)
        t3 = time.perf_counter()
        write_predictions(pred_dir / f"{lang}.conll", (s.words for s in sentences), gold, pred)
        t4 = time.perf_counter()
        entries[lang] = language_entry(scores, len(sentences), words, lang_data.files, t4 - t0)
        for key, dt in (("align_s", t1 - t0), ("inference_s", t2 - t1), ("score_s", t3 - t2), ("write_s", t4 - t3)):
            timing[key] += dt
        timing["words"] += words
    timing = {k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()}
    timing["precision"] = loaded.precision
    stats = getattr(loaded.model, "stats", None)  # xdt.eval.bf16_bert: what the fp32 re-check did
    if stats is not None:
        timing["recheck"] = stats.as_dict()
    seconds = timing["inference_s"]
    timing["inference_words_per_s"] = round(timing["words"] / seconds, 1) if seconds else None
    return entries, timing


def _compare_teacher(path: str, langs: list[str]) -> dict:
    try:
        other = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XdtError(f"--compare {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise XdtError(f"--compare {path}: not a JSON report: {err}") from None
    if not isinstance(other, dict) or not isinstance(other.get("languages"), dict):
        raise XdtError(f"--compare {path}: expected an xdt eval report.json with a `languages` mapping")
    for lang, entry in other["languages"].items():
        if "counts" not in entry or "f1" not in entry:
            raise XdtError(f"--compare {path}: languages.{lang} lacks f1/counts; expected a report of `xdt eval`")
    return {"source": str(path), "model": other.get("model"),
            "languages": {k: v for k, v in other["languages"].items() if k in langs}}


def _inputs(opts: EvalOptions) -> list[str | None]:
    return [opts.model, opts.teacher, opts.tokenizer, opts.teacher_tokenizer, opts.compare, *opts.data]


def evaluate(opts: EvalOptions) -> dict:
    t_start = time.perf_counter()
    _check_options(opts)
    check_out(opts.out, opts.overwrite, _inputs(opts))
    if opts.max_seq_length is None:  # one rule: the windows the model was trained with, as `xdt run` scores it
        opts = replace(opts, max_seq_length=trained_window(opts.model) or DEFAULT_WINDOW)
    suite = resolve_suite(opts)
    requested = list(suite.languages)
    share = shard_languages(requested, opts.shard) if requested else None
    if requested and not share:
        raise XdtError(f"--shard {opts.shard[0]}/{opts.shard[1]}: no language left for this shard "
                       f"({len(requested)} languages requested)")
    data = load_eval_data(opts.data, suite.split, share, opts.format, opts.max_sentences)
    if not requested:  # every language found, in sorted order, then this shard's share
        requested = list(data.languages)
        keep = set(shard_languages(requested, opts.shard))
        data.languages = {k: v for k, v in data.languages.items() if k in keep}
    if data.missing and not opts.allow_missing:
        raise XdtError(f"{len(data.missing)} language(s) have no {data.split} data under {', '.join(data.paths)}: "
                       f"{' '.join(data.missing)}; pass --allow-missing to evaluate the others and list these "
                       "as missing")
    if not data.languages:
        raise XdtError(f"no {data.split} data for any requested language under {', '.join(data.paths)}")
    t_read = time.perf_counter()

    for folder in (opts.model, opts.teacher):
        if folder:
            check_safetensors(folder)  # a truncated weights file is found before anything is written
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    # the whole report (predictions included) appears at once: a failure leaves no mix of two evaluations
    with staged_folder(opts.out, opts.overwrite, _inputs(opts)) as out:
        return _evaluate(opts, suite, data, requested, out, t_start, t_read)


def _evaluate(opts: EvalOptions, suite: Suite, data: EvalData, requested: list[str], out: Path, t_start: float,
              t_read: float) -> dict:
    student = load_model(opts.model, opts.tokenizer, opts.device, opts.dtype, precision=opts.precision)
    t_load = time.perf_counter()
    languages, timing = evaluate_model(student, data, opts, suite.scheme, out / "predictions", "model")
    timing.update({"read_data_s": round(t_read - t_start, 3), "load_model_s": round(t_load - t_read, 3)})
    model_info = student.describe()
    del student

    teacher = None
    if opts.teacher:
        loaded = load_model(opts.teacher, opts.teacher_tokenizer, opts.device, opts.dtype,
                            precision=opts.precision)
        t_entries, t_timing = evaluate_model(loaded, data, opts, suite.scheme, out / "teacher" / "predictions",
                                             "teacher")
        teacher = {"source": "evaluated", "model": loaded.describe(), "languages": t_entries}
        timing["teacher"] = t_timing
        del loaded
    elif opts.compare:
        teacher = _compare_teacher(opts.compare, list(data.languages))

    reference = load_reference(suite.reference) if suite.reference else default_reference()
    report = {
        "languages": languages,
        "missing": data.missing,
        "requested": requested,
        "suite": {"name": suite.name, "path": str(suite.path) if suite.path else None, "scheme": suite.scheme},
        "split": data.split,
        "shard": {"index": opts.shard[0], "count": opts.shard[1]} if opts.shard else None,
        "model": model_info,
        "data": {"paths": data.paths, "format": opts.format, "max_sentences": opts.max_sentences,
                 "skipped_lines": len(data.skipped)},
        "settings": {"batch_size": opts.batch_size, "max_seq_length": opts.max_seq_length,
                     "scheme": suite.scheme, "metric": "seqeval default (conlleval) mode; strict mode beside it"},
        "reference": {"source": reference.source, "source_name": REFERENCE_NAME, "columns": reference.columns},
        "versions": _versions(),
    }
    if teacher is not None:
        report["teacher"] = teacher
    finalize(report)
    timing["threads"] = torch.get_num_threads()
    timing["total_s"] = round(time.perf_counter() - t_start, 3)
    report["timing"] = timing
    write_all(report, out)
    return report


def options_dict(opts: EvalOptions) -> dict:
    return asdict(opts)
