"""Peak memory, measured honestly on CPU and CUDA.

On CPU the process's high-water mark (``VmHWM``) includes the imports and the data (about 1.1 GB
before any model exists), so besides it we report the peak *above* a baseline taken after data
loading: Linux lets a process reset its high-water mark to its current resident set by writing
``5`` to ``/proc/self/clear_refs``. Where that is not possible (not Linux, or not allowed) the
figure above the baseline is ``None`` and the reason says why.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> Optional[float]:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def current_rss_mb() -> Optional[float]:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark since start (or since the last reset), MiB."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    per_mb = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current resident set; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class PeakMemory:
    """Peak memory over a stretch of work: ``start()`` after data loading, ``stop()`` at the end."""

    device: torch.device
    baseline_mb: Optional[float] = None
    reset_ok: bool = False
    peak_before_mb: float = 0.0  # the high-water mark before the reset (imports, data)

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.reset_ok = True
            return
        self.peak_before_mb = peak_rss_mb()
        self.reset_ok = reset_peak_rss()
        self.baseline_mb = current_rss_mb()

    def figures(self) -> dict:
        """``peak_mb`` (the process's whole high-water mark, or CUDA's max allocated),
        ``above_baseline_mb`` (the peak minus the resident memory when ``start()`` ran; None if
        the mark could not be reset), and ``method`` in words."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            return {"peak_mb": peak, "above_baseline_mb": peak - (self.baseline_mb or 0.0),
                    "method": "cuda max_memory_allocated; above the allocation after data loading and model set-up"}
        since = peak_rss_mb()
        peak = max(since, self.peak_before_mb)
        if not self.reset_ok or self.baseline_mb is None:
            return {"peak_mb": peak, "above_baseline_mb": None,
                    "method": "peak RSS of the process (ru_maxrss); the high-water mark could not be reset here, "
                              "so no figure above the baseline"}
        return {"peak_mb": peak, "above_baseline_mb": since - self.baseline_mb,
                "method": "peak RSS of the process (VmHWM); above_baseline: the high-water mark since data loading "
                          "and model set-up (reset through /proc/self/clear_refs) minus the resident set at that point"}
