"""Per-step metrics to JSONL and TensorBoard, written by rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path

from xdt.engine.distributed import is_main


class MetricsLog:
    def __init__(self, out_dir: str | Path, name: str, tensorboard: bool = True, resume_step: int | None = None):
        """`resume_step`: a resumed run drops what the killed run logged after its checkpoint, so the curve
        of a resumed run is the curve of an uninterrupted one."""
        self.enabled = is_main()
        self.path = Path(out_dir) / f"{name}.jsonl"
        self.writer = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()  # a fresh run: no curve of an earlier one
        self.file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard" / name),
                                        purge_step=None if resume_step is None else resume_step + 1)

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (str, bool)) else v)
                       for k, v in values.items()})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def progress_bar(total: int, desc: str):
    """tqdm on rank 0 when stderr is a terminal; batch logs get the per-phase log lines instead."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=True if not is_main() else None, dynamic_ncols=True)
