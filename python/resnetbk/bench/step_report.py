"""``python -m resnetbk.bench step``: where a training step's time goes, measured.

Per model at the original benchmark's shape (batch 32, 128 tokens, d_model 64, 4 layers, the
WikiText-2 vocabulary of 33,278; float32, random tokens): the loop's own step
(``train.step.train_step``, gradient clipping and AdamW included) timed over ``--steps`` steps
(median), its FLOPs from one traced step (``flops.FlopsTracer``) and so the achieved GFLOP/s,
beside the machine's own float32 GEMM peak measured in the same run (a square sgemm) and their
ratio. The time breakdown comes from ``torch.profiler`` over ``--profile-steps`` steps: every
op's own (self) time, attributed to the part of the step it ran in by the ranges the step names
(``step.forward``, ``step.backward``, ``step.clip``, ``step.optimizer``; the fused LM head's
``lm_head.gradient``, its backward work done in the forward) and by hooks on the model's
modules (the head, the blocks); what no op accounts for is Python and dispatch. The batch
(cutting the window from the token streams) is timed on its own. Peak RSS of a step is given
(from before the model is built, through its untraced steps) beside its float32 floor:
parameters, their gradients, AdamW's two moments, and the activations the forward saves for the
backward (counted by ``torch.autograd.graph.saved_tensors_hooks``). The models run one after the
other in one process: a later one may reuse memory the allocator kept from an earlier one.

Nothing is asserted about speed; ratios side by side in one run are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.modules import module as module_hooks
from torch.profiler import ProfilerActivity, profile, record_function

from .. import data as wt2
from .. import methods
from ..flops import FlopsTracer
from ..jsonfile import write_json_atomic
from ..measure.environment import environment, machine
from ..measure.memory import current_rss_mb, peak_rss_mb, reset_peak_rss
from ..models import ModelOptions
from ..train.optim import make_optimizer
from ..train.step import train_step
from .config import MODEL_NAMES, BenchmarkConfig, model_config
from .recipe import make_model

DEFAULT_MODELS = ("transformer_baseline", "resnet_bk_baseline")
PARTS = ("head forward", "head backward", "blocks forward", "blocks backward", "optimizer", "clipping",
         "other ops", "python and dispatch")


def gemm_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The float32 GFLOP/s of a square ``size``^3 matmul on this machine now (median of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def saved_activation_mb(model, inputs, targets) -> float:
    """MiB of the tensors one training forward saves for its backward (each storage once)."""
    storages: dict = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (a view of nothing to count)
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nll, _ = model(inputs, targets)
    del nll
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def _category(event, vocab: int) -> str:
    """The part of the step a profiler event ran in, from its enclosing ranges."""
    names, parent = [], event
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    if "step.optimizer" in names:
        return "optimizer"
    if "step.clip" in names:
        return "clipping"
    if "lm_head.gradient" in names:
        return "head backward"
    if "step.forward" in names:
        if "model.head" in names:
            return "head forward"
        return "blocks forward" if "model.blocks" in names else "other ops"
    if "step.backward" in names:  # autograd's nodes: the head's are the ones on vocabulary-sized tensors
        shapes = [d for shape in (event.input_shapes or []) for d in shape]
        return "head backward" if vocab in shapes else "blocks backward"
    return "other ops"


def _module_ranges(model):
    """Profiler ranges around the LM head and around each block (installed for the profile only)."""
    entered: dict = {}
    names = {id(model.lm_head): "model.head", **{id(b): "model.blocks" for b in model.blocks}}

    def enter(module, args):
        name = names.get(id(module))
        if name is not None:
            entered.setdefault(id(module), []).append(record_function(name).__enter__())

    def leave(module, args, output):
        if id(module) in entered and entered[id(module)]:
            entered[id(module)].pop().__exit__(None, None, None)

    return [module_hooks.register_module_forward_pre_hook(enter), module_hooks.register_module_forward_hook(leave)]


def breakdown_ms(step, model, steps: int, vocab: int) -> dict:
    """Milliseconds per step by part of the step (``PARTS``), from ``torch.profiler``."""
    handles = _module_ranges(model)
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            wall = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    parts = dict.fromkeys(PARTS, 0.0)
    for event in prof.events():  # (on a CPU the backward runs on the calling thread too)
        parts[_category(event, vocab)] += event.self_cpu_time_total / 1000  # microseconds -> ms
    accounted = sum(parts.values())
    parts["python and dispatch"] = max(0.0, wall * 1000 - accounted)
    return {k: v / steps for k, v in parts.items()}


def scaled_to(parts: dict, ms_per_step: float) -> dict:
    """The profiled parts' shares applied to the unprofiled step time (the profiler adds its own
    cost to every op, so its milliseconds run long; the shares are what it measures)."""
    total = sum(parts.values())
    return {k: v / total * ms_per_step if total else 0.0 for k, v in parts.items()}


def measure_model(name: str, args) -> dict:
    """One model: step time, FLOPs, achieved GFLOP/s, the breakdown, peak RSS and its floor."""
    base = BenchmarkConfig(model=ModelOptions(d_model=args.d_model, n_layers=args.layers, n_seq=args.seq),
                           batch_size=args.batch, device="cpu")
    config = model_config(name, base)
    rss_before = current_rss_mb()  # the peak below is measured from here: the model, its state, its steps
    reset_ok = reset_peak_rss()
    torch.manual_seed(0)
    model = make_model(config, args.vocab).train()
    optimizer = make_optimizer(model, config)
    stream = torch.randint(args.vocab, (args.batch * args.seq + 1,), generator=torch.Generator().manual_seed(1))
    streams = wt2.streams(stream, args.batch)
    x, y = next(iter(wt2.windows(*streams, args.seq)))

    def step(tracer=None):
        outcome = train_step(model, optimizer, x, y, grad_clip=config.grad_clip, tracer=tracer,
                             load_balance_weight=config.load_balance_weight, fused_head=config.fused_head)
        if not outcome.taken:
            raise RuntimeError(f"{name}: a step had a non-finite loss or gradient")

    for _ in range(2):  # the first steps allocate the optimizer's state and warm the allocator
        step()
    batch_times, step_times = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        xb, yb = next(iter(wt2.windows(*streams, args.seq)))  # what the loop does per step before it
        xb, yb = xb.to("cpu"), yb.to("cpu")
        batch_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - start)
    seconds = statistics.median(step_times)
    peak_mb = peak_rss_mb() - rss_before if reset_ok and rss_before is not None else None
    tracer = FlopsTracer()
    step(tracer)
    flops = tracer.report()["total"]
    profiled = breakdown_ms(step, model, args.profile_steps, args.vocab)
    parts = {**scaled_to(profiled, 1000 * seconds), "batch": 1000 * statistics.median(batch_times)}
    params = {id(p): p for p in model.parameters()}.values()
    param_mb = sum(p.numel() * p.element_size() for p in params) / 2**20
    activations_mb = saved_activation_mb(model, x, y)
    return {
        "model": name, "tokens_per_second": x.numel() / seconds, "ms_per_step": 1000 * seconds,
        "flops_per_step": flops, "achieved_gflops": flops / seconds / 1e9, "breakdown_ms": parts,
        "profiled_breakdown_ms": profiled,
        "peak_rss_above_mb": peak_mb, "float32_floor_mb": 4 * param_mb + activations_mb,
        "floor": {"parameters_mb": param_mb, "gradients_mb": param_mb, "adamw_moments_mb": 2 * param_mb,
                  "saved_activations_mb": activations_mb},
    }


def format_table(rows: list, peak: float, context: str) -> str:
    lines = [context, f"float32 GEMM peak (square sgemm, same run): {peak:.1f} GFLOP/s", "",
             "| model | tokens/s | ms/step | GFLOP/step | GFLOP/s | of peak | peak RSS above (MiB) | float32 floor (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rss = "-" if r["peak_rss_above_mb"] is None else f"{r['peak_rss_above_mb']:,.0f}"
        lines.append(f"| {r['model']} | {r['tokens_per_second']:,.0f} | {r['ms_per_step']:.1f} | "
                     f"{r['flops_per_step'] / 1e9:.2f} | {r['achieved_gflops']:.1f} | "
                     f"{r['achieved_gflops'] / peak:.0%} | {rss} | {r['float32_floor_mb']:,.0f} |")
    lines += ["", "Time per step by part (ms: the shares torch.profiler measures, ops' own time, applied to the "
              "unprofiled step; the batch timed apart, before the step):", "",
              "| model | " + " | ".join([*PARTS, "batch"]) + " |", "|---|" + "---|" * (len(PARTS) + 1)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['breakdown_ms'][k]:.1f}" for k in [*PARTS, "batch"]) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(MODEL_NAMES)}")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=wt2.WIKITEXT2_VOCAB)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model (the median is reported)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler for the breakdown")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--output-dir", default="benchmark_results/step", help="where step.json and step.md go")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODEL_NAMES]
    bad = [f"--{k.replace('_', '-')}" for k in ("batch", "seq", "d_model", "layers", "vocab", "steps", "profile_steps")
           if getattr(args, k) < 1]
    if unknown or not names or bad:
        print(f"error: {'--models: expected names from ' + ', '.join(MODEL_NAMES) if unknown or not names else ''}"
              f"{', '.join(bad) + ': expected a positive integer' if bad else ''}", file=sys.stderr)
        return 2
    with_methods = [n for n in names if any(model_config(n, BenchmarkConfig()).enabled(f) for f in methods.FLAGS)]
    if with_methods:
        print(f"error: --models: {', '.join(with_methods)} trains with optimization methods, whose work at the loop's "
              "events this command does not run (it times the plain step); use the benchmark or the ablation",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = gemm_peak_gflops()
    rows = []
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        rows.append(measure_model(name, args))
    versions, git = environment()
    context = (f"Training step, batch {args.batch} x {args.seq} tokens, d_model {args.d_model}, {args.layers} layers, "
               f"vocabulary {args.vocab:,}, float32, {torch.get_num_threads()} torch threads; {machine()}; "
               f"torch {versions['torch']}, allocator {versions['allocator']}; git {git or 'unknown'}.")
    table = format_table(rows, peak, context)
    out = Path(args.output_dir)
    write_json_atomic(out / "step.json", {"context": context, "gemm_peak_gflops": peak, "models": rows,
                                          "versions": versions, "git_revision": git})
    (out / "step.md").write_text(table)
    print(table)
    return 0
