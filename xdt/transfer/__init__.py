"""Transfer sets: unlabeled and label-stripped sentences, sampled per language and augmented across languages.

    cfg = load_transfer_config("configs/transfer/wikiann_codeswitch.yaml", ["sampling.size=100000"])
    result = build_transfer(cfg, "runs/transfer")          # DIR/transfer.jsonl, labeled.jsonl, manifest.json
    for record in read_transfer(result.out): ...           # {"lang", "words", "source", "augmentation", ...}

Modules, in the order data flows: config -> sources -> dedup -> sampling -> dictionary/codeswitch/noise ->
writer -> build; stats reads a result; mock builds one from any WikiAnn folder.
"""

from xdt.transfer.build import BuildResult, build_transfer, read_transfer
from xdt.transfer.config import TransferConfig, load_transfer_config
from xdt.transfer.mock import build_mock_transfer
from xdt.transfer.stats import transfer_stats

__all__ = ["BuildResult", "TransferConfig", "build_mock_transfer", "build_transfer", "load_transfer_config",
           "read_transfer", "transfer_stats"]
