"""What ran where: versions, the git revision of the source tree, the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import numpy
import torch

from .._native import __version__


def versions() -> dict:
    """Versions of what ran (and the memory allocator preloaded, if any)."""
    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
             "resnetbk": __version__}
    try:
        import datasets  # optional at run time: reported where installed

        found["datasets"] = datasets.__version__
    except ImportError:  # pragma: no cover - a dependency; reported, not required here
        pass
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
    preloaded = [Path(p).name for p in os.environ.get("LD_PRELOAD", "").split(":") if "malloc" in p]
    found["allocator"] = ", ".join(preloaded) or "the C library's malloc"
    return found


def git_revision() -> Optional[str]:
    """The git revision of the source tree (None outside a checkout)."""
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                  capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return revision.stdout.strip() if revision.returncode == 0 else None


#: The revision of the code this process imported: read once, when this module is imported (with
#: the package, before any training), so a commit made while a long run trains does not relabel it.
IMPORTED_REVISION = git_revision()


def environment() -> tuple[dict, Optional[str]]:
    """``(versions(), the revision of the code this process runs)``."""
    return versions(), IMPORTED_REVISION


def machine() -> str:
    """The OS, the architecture, the CPU's model name and its logical CPUs, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"
