"""Compile the BK-Core Triton kernels ahead of time for an NVIDIA target, without a GPU.

    python scripts/compile_triton_kernels.py [--arch 90]

Triton lowers each kernel to PTX and assembles it with the ptxas it ships, for float32 and
float64: proof that the kernels the interpreter tests on CPU also build for the card (compiled
code is what runs there; the interpreter executes the same Python with numpy). Prints one line
per kernel with its register count and spills. Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100/H200)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget

    from resnetbk.core import triton_kernels as k

    kernels = {  # name -> (kernel, its pointer arguments, its integer arguments)
        "ratios_run": (k._ratios_run_kernel, ("s_ptr", "kap_ptr", "x_in_ptr", "out_ptr"), ("rows", "n", "chunk")),
        "ratios_summary": (k._ratios_summary_kernel, ("s_ptr", "kap_ptr", "summary_ptr"), ("rows", "n", "chunk")),
        "ratios_prefix": (k._ratios_prefix_kernel, ("summary_ptr", "x_in_ptr"), ("rows", "n_chunks")),
        "linear_run": (k._linear_run_kernel, ("e_ptr", "m_ptr", "x_in_ptr", "out_ptr"), ("rows", "n", "chunk")),
        "linear_summary": (k._linear_summary_kernel, ("e_ptr", "m_ptr", "summary_ptr"), ("rows", "n", "chunk")),
        "linear_prefix": (k._linear_prefix_kernel, ("summary_ptr", "x_in_ptr"), ("rows", "n_chunks")),
    }
    target = GPUTarget("cuda", args.arch, 32)
    for precision in ("fp32", "fp64"):
        for name, (fn, pointers, ints) in kernels.items():
            signature = {p: f"*{precision}" for p in pointers} | {i: "i32" for i in ints} | {"BLOCK": "constexpr"}
            source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs={"BLOCK": k.BLOCK_ROWS})
            compiled = triton.compile(source, target=target, options={"num_warps": k.NUM_WARPS})
            meta = compiled.metadata
            print(f"sm_{args.arch} {precision} {name:15s} cubin {len(compiled.asm['cubin']):6d} bytes, "
                  f"{getattr(meta, 'num_warps', '?')} warps, shared {getattr(meta, 'shared', '?')} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
