"""``python -m resnetbk.bench scaling``: cost per token against the sequence length N, measured.

For every model and every N (``--grid small``, the default: 128, 512, 2,048 at 4,096 tokens per
step; ``--grid committed``: 128, 256, ..., 65,536 at 32,768) at a fixed number of tokens per
step (batch = tokens / N, at least 1), a fresh process builds the model and measures, on random
tokens of the WikiText-2 vocabulary size:

- ``blocks``: the blocks alone (no embedding, final norm or LM head) on random embedded inputs:
  a training step's forward+backward and a forward without gradients;
- ``end_to_end``: the whole training step (fused LM-head loss, backward, AdamW update) and the
  forward alone;

each as seconds per token (the median of the timed repeats after one warm-up step), peak memory
of the process's first training step above the resident set before it (CPU: the resident
high-water mark, reset; CUDA: max allocated; later steps reuse the allocator's freed blocks and
would show nothing) and FLOPs per token from the execution trace of one step. Dropout is off,
so that attention runs its fused kernel: the study measures the architectures' cost, not a
regulariser's. ResNet-BK runs with its exact O(N) gradient (``use_analytic_gradient``): autograd
through the torch implementation, the baseline's default, grows as O(N log N).

A model that runs out of memory, fails or exceeds ``--budget-s`` at some N is marked so at that
N and at every longer one (they cost more), and the study goes on with the other models.

Writes ``scaling.json`` (every cell), ``scaling.md`` (the tables, the crossover N where ResNet-BK's
training step becomes faster than the Transformer's, end to end and blocks only, and the
targets) and ``scaling.png`` (log-log: time per token and memory against N, one line per model).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..flops import FlopsTracer
from ..jsonfile import write_json_atomic
from ..measure.environment import environment
from ..measure.memory import PeakMemory
from ..models import ModelOptions
from ..train.distributed import resolve_device
from ..train.optim import make_optimizer
from ..train.step import train_step
from .config import MODEL_NAMES, BenchmarkConfig, model_config
from .options import run_info
from .recipe import make_model

DEFAULT_MODELS = ("transformer_baseline", "resnet_bk_baseline", "lstm", "mamba")
DEFAULT_SEQ_LENS = tuple(2**k for k in range(7, 17))  # 128 .. 65,536
#: ``--grid``: the settings a study starts from (each option given on the command line wins).
#: "small" is the default: every model at three lengths, a few minutes on 2 cores; "committed" is
#: the study in results/scaling-cpu (about two hours on 2 cores).
GRIDS = {
    "small": {"models": DEFAULT_MODELS, "seq_lens": (128, 512, 2048), "tokens_per_step": 4096, "repeats": 2,
              "budget_s": 20.0},
    "committed": {"models": DEFAULT_MODELS, "seq_lens": DEFAULT_SEQ_LENS, "tokens_per_step": 32_768, "repeats": 3,
                  "budget_s": 60.0},
}
SCOPES = ("blocks", "end_to_end")
REFERENCE, CANDIDATE = "transformer_baseline", "resnet_bk_baseline"


# ---------------------------------------------------------------- measuring one cell (child process)


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int, budget_s: float) -> tuple:
    """``(median seconds, runs)`` of ``fn`` after one warm-up call; stops early past ``budget_s``
    (the warm-up alone past it: ``None``)."""
    start = time.perf_counter()
    fn()
    _synchronize(device)
    if time.perf_counter() - start > budget_s:
        return None, 0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times), len(times)


def _peak_above(fn, device) -> float:
    """Peak memory of one call of ``fn`` above what was resident before it, MiB."""
    gc.collect()
    memory = PeakMemory(device)
    memory.start()
    fn()
    _synchronize(device)
    figures = memory.figures()
    return figures["above_baseline_mb"]


def _flops(fn) -> dict:
    """The FLOPs of one call of ``fn(tracer)``, which enters the tracer around its work."""
    tracer = FlopsTracer()
    fn(tracer)
    report = tracer.report()
    return {"total": report["total"], "forward": report["by_phase"].get("forward", 0), "unknown": report["unknown"]}


def measure_cell(model_name: str, seq_len: int, scope: str, settings: dict) -> dict:
    """One model at one N, one scope: times, memory and FLOPs per token (see the module's doc)."""
    device = resolve_device(settings["device"])
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)
    batch = max(1, settings["tokens_per_step"] // seq_len)
    base = BenchmarkConfig(device=settings["device"], batch_size=batch,
                           model=ModelOptions(d_model=settings["d_model"], n_layers=settings["n_layers"], n_seq=seq_len,
                                              dropout=0.0))
    config = model_config(model_name, base)
    if config.model.architecture == "resnet_bk":
        # The exact O(N) adjoint (Rust kernels); the baseline's autograd through the torch
        # implementation costs O(N log N) FLOPs per sequence and is not what long inputs would use.
        config = config.with_methods(use_analytic_gradient=True)
    vocab = settings["vocab_size"]
    model = make_model(config, vocab).to(device).train()
    tokens = batch * seq_len

    if scope == "blocks":
        x = torch.randn(batch, seq_len, config.model.d_model, device=device, requires_grad=True)
        upstream = torch.randn(batch, seq_len, config.model.d_model, device=device)

        def step(tracer=None):
            with tracer if tracer is not None else nullcontext():
                model.blocks_forward(x).backward(upstream)
            model.zero_grad(set_to_none=True)
            x.grad = None

        def forward():
            with torch.no_grad():
                model.blocks_forward(x)
    else:
        optimizer = make_optimizer(model, config)
        inputs = torch.randint(vocab, (batch, seq_len), device=device)
        targets = torch.randint(vocab, (batch, seq_len), device=device)

        def step(tracer=None):
            # The training loop's own step (train.step), without clipping; the tracer prices the
            # update per parameter, as in training.
            train_step(model, optimizer, inputs, targets, load_balance_weight=config.load_balance_weight, tracer=tracer)

        def forward():
            with torch.no_grad():
                model(inputs, targets, fused_head=True)

    budget = settings["budget_s"]
    # Memory first: after a step, the allocator keeps the freed blocks and the resident set no
    # longer grows, so a later step would show a peak near zero (or below it).
    start = time.perf_counter()
    peak_mb = _peak_above(step, device)
    if time.perf_counter() - start > budget:
        return {"status": "over budget", "detail": f"one training step took over {budget:g} s", "batch": batch}
    train_s, train_runs = _timed(step, device, settings["repeats"], budget)
    if train_s is None:
        return {"status": "over budget", "detail": f"one training step took over {budget:g} s", "batch": batch}
    forward_s, _ = _timed(forward, device, settings["repeats"], budget)
    flops = _flops(step)
    return {
        "status": "ok", "batch": batch, "tokens": tokens, "timed_steps": train_runs,
        "train_s_per_token": train_s / tokens, "train_tokens_per_s": tokens / train_s,
        "forward_s_per_token": None if forward_s is None else forward_s / tokens,
        "peak_mb": peak_mb, "train_flops_per_token": flops["total"] / tokens,
        "forward_flops_per_token": flops["forward"] / tokens, "unpriced_ops": flops["unknown"],
    }


def _child(model_name, seq_len, scope, settings, queue) -> None:
    try:
        queue.put(measure_cell(model_name, seq_len, scope, settings))
    except MemoryError:
        queue.put({"status": "out of memory", "detail": "MemoryError"})
    except RuntimeError as exc:  # allocator failures arrive as RuntimeError
        text = str(exc)
        out_of_memory = "out of memory" in text.lower() or "can't allocate" in text.lower()
        queue.put({"status": "out of memory" if out_of_memory else "error", "detail": text.splitlines()[0][:300]})
    except Exception as exc:  # any failure is recorded for this cell; the study goes on
        queue.put({"status": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]})


def run_cell(model_name: str, seq_len: int, scope: str, settings: dict) -> dict:
    """``measure_cell`` in a fresh process (clean memory figures; a crash or a kill is recorded)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(model_name, seq_len, scope, settings, queue), daemon=True)
    process.start()
    # The child stops itself past the budget; this wall limit catches a step that never returns.
    limit = 120 + 6 * settings["budget_s"]
    result = None
    deadline = time.monotonic() + limit
    while result is None and time.monotonic() < deadline:
        try:
            result = queue.get(timeout=1.0)
        except Exception:  # queue.Empty
            if not process.is_alive() and queue.empty():
                break
    process.join(timeout=10)
    if result is not None:
        return result
    if process.is_alive():
        process.kill()
        process.join()
        return {"status": "over budget", "detail": f"no result within {limit:g} s"}
    signal = -process.exitcode if process.exitcode and process.exitcode < 0 else None
    if signal == 9:
        return {"status": "out of memory", "detail": "the process was killed (SIGKILL: the kernel's OOM killer)"}
    return {"status": "error", "detail": f"the measuring process exited with code {process.exitcode}"}


# ---------------------------------------------------------------- the study


def run_study(models, seq_lens, settings: dict, *, log=print, on_cell=None) -> list:
    """Every cell, longest-first failures carried forward: a model stopped at N is not run beyond.
    ``on_cell(cells)`` runs after each measured cell (the CLI saves the cells so far); each cell's
    line says how many are done and the time left at the mean cell time so far."""
    cells = []
    total, start = len(models) * len(SCOPES) * len(seq_lens), time.perf_counter()
    for model_name in models:
        for scope in SCOPES:
            stopped = None
            for n in seq_lens:
                if stopped is not None:
                    cells.append({"model": model_name, "seq_len": n, "scope": scope, "status": stopped["status"],
                                  "detail": f"not run: {stopped['status']} at N = {stopped['seq_len']:,}"})
                    continue
                started = time.perf_counter()
                result = run_cell(model_name, n, scope, settings)
                cell = {"model": model_name, "seq_len": n, "scope": scope, **result,
                        "wall_s": round(time.perf_counter() - started, 1)}
                cells.append(cell)
                elapsed = time.perf_counter() - start
                left = elapsed / len(cells) * (total - len(cells))
                log(f"[{len(cells)}/{total} cells, {elapsed / 60:.1f} min, about {left / 60:.1f} min left] "
                    f"{describe_cell(cell)}")
                if on_cell is not None:
                    on_cell(cells)
                if cell["status"] != "ok":
                    stopped = cell
    return cells


def describe_cell(cell: dict) -> str:
    head = f"{cell['model']:>22s} {cell['scope']:>10s} N={cell['seq_len']:>6,d}"
    if cell["status"] != "ok":
        return f"{head}: {cell['status']} ({cell.get('detail', '')})"
    peak = "?" if cell["peak_mb"] is None else f"{cell['peak_mb']:.1f}"  # None: the mark could not be reset
    return (f"{head}: {cell['train_tokens_per_s']:>10,.0f} tokens/s training, "
            f"{peak:>8s} MiB peak, {cell['train_flops_per_token']:.3e} FLOPs/token")


def _cell(cells, model, scope, n):
    return next((c for c in cells if c["model"] == model and c["scope"] == scope and c["seq_len"] == n), None)


def _ok(cell) -> bool:
    return cell is not None and cell["status"] == "ok"


def crossover(cells, scope: str, reference: str = REFERENCE, candidate: str = CANDIDATE):
    """The smallest N from which the candidate's training step per token is faster than the
    reference's at every measured N (a reference that failed counts as slower); None if never."""
    lens = sorted({c["seq_len"] for c in cells})
    found = None
    for n in lens:
        a, b = _cell(cells, reference, scope, n), _cell(cells, candidate, scope, n)
        if not _ok(b):
            continue
        faster = not _ok(a) or b["train_s_per_token"] < a["train_s_per_token"]
        if faster and found is None:
            found = n
        elif not faster:
            found = None
    return found


def speedup(cells, scope: str, n: int):
    """Reference time per token / candidate's at N (None where either was not measured)."""
    a, b = _cell(cells, REFERENCE, scope, n), _cell(cells, CANDIDATE, scope, n)
    if not (_ok(a) and _ok(b)):
        return None
    return a["train_s_per_token"] / b["train_s_per_token"]


def flatness(cells, scope: str = "end_to_end", model: str = CANDIDATE, low: int = 1024, high: int = 65536):
    """``max / min`` of the model's training time per token over ``low <= N <= high`` (measured cells)."""
    times = [c["train_s_per_token"] for c in cells
             if c["model"] == model and c["scope"] == scope and low <= c["seq_len"] <= high and _ok(c)]
    return (max(times) / min(times), len(times)) if len(times) >= 2 else (None, len(times))


def targets(cells) -> list:
    """The issue's targets, each ``(target, measured, held)`` (held None where not measurable)."""
    rows = []
    flat, count = flatness(cells)
    rows.append(("ResNet-BK's end-to-end time per token flat within 10% from N = 1,024 to 65,536",
                 f"max/min = {flat:.2f} over {count} lengths" if flat else "not measured",
                 None if flat is None else flat <= 1.10))
    for scope, n, want in (("blocks", 8192, 10.0), ("end_to_end", 8192, 2.0), ("end_to_end", 32768, 4.0)):
        s = speedup(cells, scope, n)
        reference = _cell(cells, REFERENCE, scope, n)
        if s is None and _ok(_cell(cells, CANDIDATE, scope, n)) and reference is not None:
            measured, held = f"the Transformer: {reference['status']}", True
        else:
            measured, held = ("not measured", None) if s is None else (f"{s:.2f}x", s >= want)
        rows.append((f"{scope.replace('_', ' ')} training tokens/s at N = {n:,}: at least {want:g}x the Transformer's",
                     measured, held))
    lower = []
    for c in cells:
        if c["model"] == CANDIDATE and c["scope"] == "end_to_end" and c["seq_len"] >= 2048 and _ok(c):
            reference = _cell(cells, REFERENCE, "end_to_end", c["seq_len"])
            if _ok(reference) and None not in (c["peak_mb"], reference["peak_mb"]):
                lower.append(c["peak_mb"] < reference["peak_mb"])
    rows.append(("lower end-to-end peak memory than the Transformer at every N >= 2,048",
                 f"lower at {sum(lower)} of {len(lower)} lengths both measured" if lower else "not measured",
                 None if not lower else all(lower)))
    return rows


def format_markdown(cells, settings: dict, context: str) -> str:
    models = list(dict.fromkeys(c["model"] for c in cells))
    lens = sorted({c["seq_len"] for c in cells})
    out = ["# Sequence-length scaling", "", context, ""]
    for scope in SCOPES:
        title = ("Blocks only (no embedding, final norm or LM head)" if scope == "blocks" else
                 "End to end (training step with the LM head and AdamW)")
        out += [f"## {title}", "", "Training tokens/s (forward + backward" + (" + update" if scope != "blocks" else "") +
                "), peak MiB above the step's start, training FLOPs per token:", ""]
        out.append("| N | batch | " + " | ".join(f"{m} tokens/s | MiB | FLOPs/token" for m in models) + " |")
        out.append("|---|---|" + "---|---|---|" * len(models))
        for n in lens:
            row = [f"{n:,}", str(max(1, settings["tokens_per_step"] // n))]
            for m in models:
                c = _cell(cells, m, scope, n)
                if _ok(c):
                    peak = "?" if c["peak_mb"] is None else f"{c['peak_mb']:,.0f}"
                    row += [f"{c['train_tokens_per_s']:,.0f}", peak, f"{c['train_flops_per_token']:.3g}"]
                else:
                    row += [c["status"] if c else "-", "", ""]
            out.append("| " + " | ".join(row) + " |")
        n = crossover(cells, scope)
        out += ["", f"Crossover ({scope.replace('_', ' ')}): " + (
            f"ResNet-BK's training step is faster per token than the Transformer's from N = {n:,} on."
            if n else "ResNet-BK's training step is not faster per token than the Transformer's at any measured N "
            "from which it stays faster."), ""]
    out += ["## Targets", "", "| target | measured | held |", "|---|---|---|"]
    for target, measured, held in targets(cells):
        out.append(f"| {target} | {measured} | {'-' if held is None else 'yes' if held else 'no'} |")
    failures = [c for c in cells if c["status"] != "ok" and not c.get("detail", "").startswith("not run")]
    if failures:
        out += ["", "Stopped cells (later N not run for that model and scope):", ""]
        out += [f"- {c['model']} {c['scope']} N = {c['seq_len']:,}: {c['status']} ({c.get('detail', '')})" for c in failures]
    return "\n".join(out) + "\n"


def plot(cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = "osD^v<>p"
    for i, model in enumerate(dict.fromkeys(c["model"] for c in cells)):
        for scope, style in (("end_to_end", "-"), ("blocks", "--")):
            points = sorted((c["seq_len"], c) for c in cells if c["model"] == model and c["scope"] == scope and _ok(c))
            if not points:
                continue
            lens = [n for n, _ in points]
            label = f"{model} ({scope.replace('_', ' ')})"
            axes[0].plot(lens, [c["train_s_per_token"] * 1e6 for _, c in points], style, marker=markers[i % 8], label=label)
            if scope == "end_to_end":
                axes[1].plot(lens, [max(c["peak_mb"] or 0.0, 1e-3) for _, c in points], style, marker=markers[i % 8],
                             label=model)
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="training step, microseconds per token",
                title="time per token")
    axes[1].set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="peak MiB above the step's start",
                title="end-to-end training step memory")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # nothing measured (every cell failed): say so on the figure
            ax.text(0.5, 0.5, "no cell measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(text: str, what: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what}: expected comma-separated positive integers, got {text!r}")
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), default="small",
                   help="small (default: every model at N = 128, 512, 2,048 with 4,096 tokens per step, a few minutes "
                        "on 2 cores) or committed (the study in results/scaling-cpu: N = 128 .. 65,536, 32,768 tokens "
                        "per step, about two hours); the options below override its values")
    p.add_argument("--seq-lens", help="comma-separated N (default: the grid's)")
    p.add_argument("--models", help="comma-separated benchmark model names (default: the grid's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--output-dir", default="benchmark_results/scaling")
    p.add_argument("--budget-s", type=float,
                   help="seconds one cell may spend timing its training step (a model over it at N stops there)")
    p.add_argument("--tokens-per-step", type=int)
    p.add_argument("--repeats", type=int, help="timed steps per cell after one warm-up")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=33_278, help="random tokens of this vocabulary (WikiText-2's)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    grid = GRIDS[args.grid]
    for name in ("budget_s", "tokens_per_step", "repeats"):
        if getattr(args, name) is None:
            setattr(args, name, grid[name])
    args.seq_lens = args.seq_lens or ",".join(str(n) for n in grid["seq_lens"])
    args.models = args.models or ",".join(grid["models"])
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        seq_lens = sorted(set(_ints(args.seq_lens, "--seq-lens")))
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODEL_NAMES]
        if unknown or not models:
            raise ValueError(f"--models: expected names from {', '.join(MODEL_NAMES)}, got {args.models!r}")
        for name in ("budget_s", "tokens_per_step", "repeats", "d_model", "n_layers", "vocab_size"):
            if not getattr(args, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive number, got {getattr(args, name)}")
        resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = {"device": args.device, "threads": args.threads, "budget_s": args.budget_s, "repeats": args.repeats,
                "tokens_per_step": args.tokens_per_step, "d_model": args.d_model, "n_layers": args.n_layers,
                "vocab_size": args.vocab_size}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # After every cell the cells so far go to scaling.json ("complete": false): an interrupted
    # study keeps what it measured.
    cells = run_study(models, seq_lens, settings, log=lambda line: print(line, flush=True),
                      on_cell=lambda cells: write_json_atomic(output / "scaling.json", {
                          "complete": False, "started": started, "settings": settings, "cells": cells}))
    info = run_info(["scaling", *(sys.argv[1:] if argv is None else argv)], started,
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))
    info["versions"], info["git_revision"] = environment()
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    context = (f"Command: `{info['command']}`; {info['machine']}; {started} to {info['finished']}; {versions}; "
               f"git {info['git_revision'] or 'unknown'}. "
               f"{args.tokens_per_step:,} tokens per step (batch = tokens / N, at least 1), d_model {args.d_model}, "
               f"{args.n_layers} layers, vocabulary {args.vocab_size:,}, dropout off, ResNet-BK with its exact O(N) "
               f"gradient, device {args.device}; median of up "
               f"to {args.repeats} timed steps after a warm-up, {args.budget_s:g} s budget per cell.")
    write_json_atomic(output / "scaling.json", {"complete": True, "run_info": info, "settings": settings, "cells": cells,
                                                "crossover": {s: crossover(cells, s) for s in SCOPES}})
    (output / "scaling.md").write_text(format_markdown(cells, settings, context))
    plot(cells, output / "scaling.png")
    print(f"\nResults in {output}/ (scaling.md, scaling.json, scaling.png)")
    return 0
