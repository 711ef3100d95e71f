"""`xdt eval`: per-language WikiAnn evaluation of any HF token-classification model.

One module per arrow of the data path:
  suites.py     eval/<suite>.yaml and the published reference table -> `Suite`, `Reference`
  data.py       data paths -> `LangData` per language (sentences, files), missing languages
  model.py      a local HF model folder -> `LoadedModel` (model, tokenizer, labels, device, dtype)
  fast_bert.py  a plain BERT's CPU forward without the work eval does not read (same labels)
  predict.py    aligned windows -> batched, length-sorted inference -> one label per word
  scoring.py    gold and predicted tags -> seqeval counts (default and strict mode) -> P/R/F1
  report.py     per-language scores -> report.json, per_language.csv, report.md, predictions/<lang>.conll
  plots.py      f1_per_language.png
  merge.py      shard reports -> the report of a single run
  run.py        the `xdt eval` command, top to bottom
  cli.py        argparse wiring (`add_eval_parser`)
"""
