"""What this machine's CPU runs fast, asked of torch at run time (nothing of the package imported).

bf16 autocast on a CPU pays off only with native bf16 instructions (x86: AVX-512 BF16 or AMX;
Arm: the BF16 extension). Without them oneDNN emulates bf16, and a matmul the size of the LM
head measured 20x slower than float32 (AMD Zen 3, AVX2 only: 1.4 against 27.7 GFLOP/s).
"""

from __future__ import annotations

import platform

import torch


def cpu_capability() -> str:
    """torch's name for the vector instructions its CPU kernels use here ("AVX512", "AVX2", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # older torch: the question cannot be asked
        return "unknown"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bf16 matmuls natively (then bf16 autocast can be faster than float32)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    # Elsewhere (Arm), oneDNN's own query: true where it has a bf16 path.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def slow_bf16_reason() -> str | None:
    """Why bf16 autocast would be slow on this CPU, in words; None when it has native bf16."""
    if cpu_has_native_bf16():
        return None
    return (f"this CPU (torch capability {cpu_capability()}) has no native bf16 (AVX-512 BF16 or AMX), where bf16 "
            "matmuls run about 20x slower than float32")
