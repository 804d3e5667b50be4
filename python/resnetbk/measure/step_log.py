"""The per-step metrics log: ``<model>_steps.csv`` (and TensorBoard event files on request).

One row per optimizer step: ``step`` (1-based), ``epoch``, ``lr`` (the rate the step used),
``loss`` (the step's mean next-token NLL), ``total_loss`` (with the weighted auxiliary terms),
``grad_norm`` (global, before clipping), ``tokens_per_second`` (this step alone),
``flops_traced`` (1 if the FLOPs tracer priced this step; such steps are slower), ``skipped``
(1 if the loss or gradient was not finite), then one column per named auxiliary loss term
(weighted, as added to the loss). On ``--resume`` the rows after the checkpoint are dropped:
they are trained again.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

BASE_COLUMNS = ("step", "epoch", "lr", "loss", "total_loss", "grad_norm", "tokens_per_second", "flops_traced",
                "skipped")


class StepLog:
    """Appends rows to ``path``; ``keep_steps`` (on resume) keeps only rows with ``step <= keep_steps``.
    The auxiliary-term columns are those of the first row written (or of the kept file)."""

    def __init__(self, path: str | Path, *, keep_steps: Optional[int] = None,
                 tensorboard_dir: Optional[str | Path] = None):
        self.path = Path(path)
        self.columns, self._kept = self._read_kept(keep_steps)
        self._file = self._writer = None
        self._tensorboard = _tensorboard_writer(tensorboard_dir) if tensorboard_dir is not None else None

    def _read_kept(self, keep_steps: Optional[int]) -> tuple:
        if keep_steps is None or not self.path.is_file():
            return None, []
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) <= keep_steps]
            return reader.fieldnames, rows

    def _open(self, terms: dict) -> None:
        if self.columns is None:
            self.columns = list(BASE_COLUMNS) + [f"aux_{name}" for name in terms]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(self._kept)

    def write(self, row: dict) -> None:
        terms = row.pop("terms", {})
        if self._writer is None:
            self._open(terms)
        row.update({f"aux_{k}": v for k, v in terms.items()})
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        if self._tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"train/{key}", value, row["step"])

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        if self._file is None and self._kept:  # nothing new was trained: keep what was there
            self._open({})
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _cell(value):
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


def _tensorboard_writer(folder):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is optional
        raise ValueError("--tensorboard: the optional 'tensorboard' package is not installed; "
                         "pip install tensorboard, or run without --tensorboard") from exc
    return SummaryWriter(log_dir=str(folder))


def read_steps(path: str | Path) -> list:
    """The rows of a steps CSV as dicts of floats (empty cells: NaN)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]
