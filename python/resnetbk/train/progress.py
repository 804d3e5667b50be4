"""Progress on long work: a tqdm bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm import tqdm

from . import distributed


def progress_bar(total: int, desc: str, quiet: bool, unit: str = "step"):
    """A tqdm bar on a terminal; plain periodic lines when stderr is a file or a pipe (logs);
    None when ``quiet`` or not the main process."""
    if quiet or not distributed.is_main_process():
        return None
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, unit=unit)
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit=unit)


class PlainProgress:
    """Progress as one plain line every ``interval`` seconds: steps done, the figures, the ETA."""

    def __init__(self, total: int, desc: str, interval: float = 60.0, unit: str = "step"):
        self.total, self.desc, self.interval, self.unit = total, desc, interval, unit
        self.done, self.postfix = 0, {}
        self.start = self.last = time.perf_counter()

    def set_postfix(self, **figures) -> None:
        self.postfix = figures

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            eta = (now - self.start) / self.done * (self.total - self.done)
            figures = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
            figures = f", {figures}" if figures else ""
            print(f"{self.desc}: {self.unit} {self.done}/{self.total}{figures}, ETA {eta / 60:.1f} min",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def with_progress(on_batch, bar: Optional[object]):
    """``on_batch`` that also advances ``bar`` by one window (either may be None)."""
    if bar is None:
        return on_batch

    def advance(positions: int) -> None:
        bar.update(1)
        if on_batch is not None:
            on_batch(positions)

    return advance
