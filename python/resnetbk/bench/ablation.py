"""``python -m resnetbk.bench ablation``: what each optimization method really does.

Rows: the ResNet-BK baseline (no method), the controls (``no_mixer``: the baseline without its
BK-Core mixer, a position-wise model: what the mixer contributes), each method alone (the original
benchmark's twelve, then this package's own), and the original twelve together
(``resnet_bk_full``), with the same data, budget and seed; ``--rows`` picks some of them. Each row gives the flag, the
original benchmark's claim, and what was measured against the baseline: validation and test
perplexity and their change, training tokens/s, forward and backward FLOPs per step, peak
memory and model size (as ratios), the method's own figure, and a verdict on the claim in words.
Two claims are about the BK op itself, so the op is timed too, side by side in this process:
its backward with the exact adjoint against autograd, and forward+backward with a 50% read-out
mask against none.

Writes ``ablation.json``, ``ablation.md`` and ``ablation.png`` into ``--output-dir`` (default
``benchmark_results/ablation``), and each run's results under ``runs/``.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .. import data as wt2
from .. import methods
from ..core import bk_core
from ..jsonfile import write_json_atomic
from ..methods.base import AblationRow
from ..methods.mixed_precision import slow_precision_reason
from ..methods.pruning import small_dense_width
from ..train.results import BenchmarkResults
from .config import OPTIMIZATION_FLAGS, flat_view, model_config
from .options import build_base_config, parse_args
from .runner import Interrupted, WikiText2Benchmark

BASELINE = "baseline"
ALL = "all"
#: Control rows: the baseline with one part taken away, what a reader asks to compare with.
#: ``no_mixer``: ResNet-BK without its BK-Core mixer (a position-wise model), what the mixer adds;
#: ``random_selection``: active learning's budget with rows kept at random (its control);
#: ``small_dense``: a dense model as wide as leaves it the pruned model's non-zero count (pruning's);
#: ``ptq_int8``: the baseline trained in float and quantized to INT8 after training (quantization's).
CONTROLS = ("no_mixer", "random_selection", "small_dense", "ptq_int8")


#: Validate every this many steps unless the config says otherwise: the claims about steps and
#: data (physics-informed, curriculum, active learning) are read from these curves.
VALID_CURVE_INTERVAL = 10


def ablation_configs(base, only=None, left_out: dict | None = None, vocab_size: int = 0) -> list:
    """``(row name, config)``: the baseline, each method alone, all of the original
    twelve together; with ``only`` (flags and/or ``"all"``), the baseline and those rows. A row
    this machine cannot run fairly (mixed precision on a CPU without native bf16, unless
    ``allow_slow_bf16``) is left out, with the reason put in ``left_out`` (row -> why). The
    ``small_dense`` control needs the data's ``vocab_size`` (its width is chosen by parameter count)."""
    none = {flag: False for flag in OPTIMIZATION_FLAGS}
    if base.valid_curve_interval is None:
        base = base.replace(valid_curve_interval=VALID_CURVE_INTERVAL)
    if only is not None:
        unknown = [name for name in only if name not in methods.FLAGS and name != ALL and name not in CONTROLS]
        if unknown or not only:
            raise ValueError(f"--rows: expected method flags, controls or 'all' ({', '.join(methods.FLAGS)}, "
                             f"{', '.join(CONTROLS)}, all), got {', '.join(unknown) or 'nothing'}")
    baseline = model_config("resnet_bk_baseline", base).replace(model_name="ablation_baseline").with_methods(**none)
    rows = [(BASELINE, baseline)]
    if only is None or "no_mixer" in only:  # the controls come right after the baseline or their method
        rows.append(("no_mixer", baseline.replace(model_name="ablation_no_mixer",
                                                  model=baseline.model.replace(no_mixer=True))))
    for flag in methods.FLAGS:
        if only is None or flag in only:
            config = baseline.replace(model_name=f"ablation_{flag}").with_methods(**{flag: True})
            slow = slow_precision_reason(config) if flag == "use_mixed_precision" else None
            if slow is not None and not config.methods["use_mixed_precision"].allow_slow_bf16:
                if left_out is not None:
                    left_out[flag] = f"left out: {slow} (--allow-slow-bf16 keeps it)"
                continue
            rows.append((flag, config))
    rows = _with_method_controls(rows, baseline, only, vocab_size)
    if only is None or ALL in only:
        rows.append((ALL, model_config("resnet_bk_full", base).replace(model_name="ablation_all")))
    return rows


def _with_method_controls(rows: list, baseline, only, vocab_size: int) -> list:
    """``rows`` with each method's control right after it (or at the end, asked for without its
    method): ``random_selection`` after active learning, ``small_dense`` after pruning (where
    the vocabulary is known)."""
    controls = {"use_active_learning": ("random_selection", _random_selection),
                "use_quantization": ("ptq_int8", _post_training_int8),
                "use_pruning": ("small_dense", lambda c: _small_dense(baseline, c, vocab_size) if vocab_size else None)}
    out, names = [], [name for name, _ in rows]
    for name, config in rows:
        out.append((name, config))
        control = controls.get(name)
        if control and (only is None or control[0] in only) and (made := control[1](config)) is not None:
            out.append((control[0], made))
    for flag, (control, make) in controls.items():
        if only is not None and control in only and flag not in names:
            made = make(baseline.with_methods(**{flag: True}))
            if made is not None:
                out.append((control, made))
    return out


def _post_training_int8(quantization):
    """Quantization's row trained in float and quantized after training (INT8 export and inference)."""
    settings = dataclasses.replace(quantization.methods["use_quantization"], quantization_mode="ptq",
                                   quantization_int4_experts=False)
    return quantization.replace(model_name="ablation_ptq_int8", methods={**quantization.methods, "use_quantization": settings})


def _random_selection(active_learning):
    """Active learning's row with its rows kept at random: the same budget, no selection by loss."""
    settings = dataclasses.replace(active_learning.methods["use_active_learning"], active_learning_selection="random")
    return active_learning.replace(model_name="ablation_random_selection",
                                   methods={**active_learning.methods, "use_active_learning": settings})


def _small_dense(baseline, pruned, vocab_size: int):
    """The baseline at the width whose dense parameter count matches the pruned model's non-zeros."""
    sparsity = pruned.methods["use_pruning"].pruning_target_sparsity
    width = small_dense_width(baseline.model.replace(vocab_size=vocab_size), sparsity)
    return baseline.replace(model_name="ablation_small_dense", model=baseline.model.replace(d_model=width))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.machine()


def _median_ms(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def time_bk_op(config) -> dict:
    """The BK op at the benchmark's shape (batch, bk_channels, n_seq), float32, causal, side by side."""
    shape = (config.batch_size, config.model.bk_channels, config.model.n_seq)
    gen = torch.Generator().manual_seed(0)
    diag = (-2.0 + torch.randn(shape, generator=gen)).requires_grad_()
    upper = torch.ones(config.model.n_seq - 1)
    mask = torch.rand(shape, generator=gen) < 0.5

    def fwd_bwd(grad, mask=None):
        def run():
            diag.grad = None
            out = bk_core(diag, upper, mode=config.model.bk_mode, grad=grad, mask=mask)
            out.real.sum().backward()
        return run

    def backward_only(grad):
        def run():
            out = bk_core(diag, upper, mode=config.model.bk_mode, grad=grad)
            loss = out.real.sum()
            start = time.perf_counter()
            loss.backward()
            return time.perf_counter() - start
        run()
        return 1000 * sorted(run() for _ in range(7))[3]

    exact_bwd, autograd_bwd = backward_only("exact"), backward_only("autograd")
    dense, masked = _median_ms(fwd_bwd("exact")), _median_ms(fwd_bwd("exact", mask))
    return {
        "shape": list(shape), "threads": torch.get_num_threads(),
        "backward_ms_exact": exact_bwd, "backward_ms_autograd": autograd_bwd,
        "backward_speedup_exact_vs_autograd": autograd_bwd / exact_bwd,
        "fwd_bwd_ms_no_mask": dense, "fwd_bwd_ms_half_masked": masked,
        "masked_speedup_at_half_sparsity": dense / masked,
    }


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else math.nan


def _forward_by_component(r: BenchmarkResults) -> dict:
    """Forward FLOPs per training step by component, from the run's measured trace."""
    table = (r.flops_breakdown or {}).get("per_step_by_component", {})
    return {name: phases.get("forward", 0) for name, phases in table.items()}


def measured_row(name: str, r: BenchmarkResults, base: BenchmarkResults, bk_op: dict) -> AblationRow:
    """Run ``r`` measured against the baseline's results ``base``: what the methods assess."""
    return AblationRow(
        row=name, model_name=r.model_name, flags=[f for f in OPTIMIZATION_FLAGS if flat_view(r.config).get(f)],
        claim=methods.BY_FLAG[name].claim if name in methods.BY_FLAG else ("-" if name in (BASELINE, *CONTROLS) else
                                                                            "all claims together"),
        valid_perplexity=r.valid_perplexity, test_perplexity=r.test_perplexity,
        valid_perplexity_change_percent=100 * (r.valid_perplexity / base.valid_perplexity - 1),
        test_perplexity_change_percent=100 * (r.test_perplexity / base.test_perplexity - 1),
        tokens_per_second=r.tokens_per_second, tokens_per_second_ratio=_ratio(r.tokens_per_second, base.tokens_per_second),
        forward_flops_ratio=_ratio(r.forward_flops, base.forward_flops),
        backward_flops_ratio=_ratio(r.backward_flops, base.backward_flops),
        peak_memory_ratio=_ratio(r.peak_memory_mb, base.peak_memory_mb),
        model_size_ratio=_ratio(r.model_size_mb, base.model_size_mb),
        causal=r.causal, steps=r.steps, figures=r.methods.get(name, {}),
        forward_flops_by_component=_forward_by_component(r), baseline_forward_flops_by_component=_forward_by_component(base),
        bk_op=bk_op,
        # Steps, time, tokens and compute to a perplexity (methods.curves).
        valid_curve=r.valid_curve, baseline_valid_curve=base.valid_curve,
        flops_per_step=r.total_flops_per_step, baseline_flops_per_step=base.total_flops_per_step,
        context_reach=r.context_reach, baseline_context_reach=base.context_reach,
    )


def build_rows(results: dict, bk_op: dict) -> list:
    """One dict per row (for the JSON and the table): the measured row, the method's own figure
    and its verdict."""
    base = results[BASELINE]
    rows = []
    for name, r in results.items():
        measured = measured_row(name, r, base, bk_op)
        if name in methods.BY_FLAG:
            own, verdict = methods.BY_FLAG[name].assess(measured)
        elif name == "small_dense":
            own = (f"a dense model of d_model {r.config['model']['d_model']} ({r.parameters:,} parameters): test "
                   f"perplexity {measured.test_perplexity_change_percent:+.1f}%, size {measured.model_size_ratio:.2f}x")
            verdict = "control: pruning's non-zero count as a dense model"
        elif name == "ptq_int8":
            own = methods.BY_FLAG["use_quantization"].assess(replace(measured, figures=r.methods["use_quantization"]))[0]
            verdict = "control: trained in float, quantized to INT8 after training"
        elif name == "random_selection":
            own = methods.BY_FLAG["use_active_learning"].assess(replace(measured, figures=r.methods["use_active_learning"]))[0]
            verdict = "control: active learning's budget with rows kept at random"
        elif name == "no_mixer":
            own = (f"without the BK-Core mixer: test perplexity {measured.test_perplexity_change_percent:+.1f}%, "
                   f"tokens/s {measured.tokens_per_second_ratio:.2f}x")
            verdict = "control: what the mixer contributes (the baseline's perplexity against this row's)"
        else:
            own = "; ".join(f"{flag}: {methods.BY_FLAG[flag].assess(replace(measured, figures=r.methods[flag]))[0]}"
                            for flag in measured.flags if r.methods.get(flag))
            verdict = "reference" if name == BASELINE else "see each method's row"
        row = asdict(measured)
        # Lists per position: kept in the runs' own results, not repeated per row.
        for key in ("context_reach", "baseline_context_reach"):
            row.pop(key)
        rows.append({**row, "own_figure": own, "verdict": verdict})
    return rows


def format_markdown(rows: list, context: str) -> str:
    def f(x, spec):
        return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)

    lines = [f"# Ablation of the optimization methods\n\n{context}\n",
             "| row | original claim | valid ppl | test ppl (change) | tokens/s ratio | fwd FLOPs | bwd FLOPs "
             "| peak mem | size | own figure | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['claim']} | {f(r['valid_perplexity'], '.2f')} | {f(r['test_perplexity'], '.2f')} "
            f"({f(r['test_perplexity_change_percent'], '+.1f')}%) | {f(r['tokens_per_second_ratio'], '.2f')}x "
            f"| {f(r['forward_flops_ratio'], '.2f')}x | {f(r['backward_flops_ratio'], '.2f')}x "
            f"| {f(r['peak_memory_ratio'], '.2f')}x | {f(r['model_size_ratio'], '.2f')}x | {r['own_figure']} "
            f"| {r['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["row"].replace("use_", "") for r in rows]
    panels = (("test_perplexity_change_percent", "test perplexity change (%)", 0.0),
              ("tokens_per_second_ratio", "training tokens/s (x baseline)", 1.0),
              ("forward_flops_ratio", "forward FLOPs per step (x baseline)", 1.0),
              ("peak_memory_ratio", "peak memory (x baseline)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    for ax, (key, title, reference) in zip(axes, panels):
        values = [r[key] if isinstance(r[key], (int, float)) and math.isfinite(r[key]) else 0.0 for r in rows]
        ax.barh(names, values, color=["grey"] + ["tab:blue"] * (len(rows) - 2) + ["tab:orange"])
        ax.axvline(reference, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_rows(bench: WikiText2Benchmark, rows: list, kind: str):
    """Every ``(name, config)`` row through ``bench``: ``name -> results``, or the exit code after
    an interruption (130) or a failed row (1), saying that finished rows are kept for --resume."""
    results = {}
    try:
        for name, config in rows:
            print(f"== {kind} row {name} ({config.model_name})", flush=True)
            results[name] = bench.run_benchmark(config)
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"interrupted: {exc or 'between rows'}; finished rows are kept under {bench.output_dir}/, "
              "rerun with --resume to continue", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"Finished rows are kept under {bench.output_dir}/; rerun with --resume to continue.", file=sys.stderr)
        return 1
    return results


def main(argv=None) -> int:
    args = parse_args(argv, prog="python -m resnetbk.bench ablation", default_output="benchmark_results/ablation",
                      description=__doc__, models=False, ablation_rows=True)
    try:
        base = build_base_config(args)
        only = None if args.rows is None else [name.strip() for name in args.rows.split(",") if name.strip()]
        left_out: dict = {}
        wanted = only is None or "small_dense" in only
        vocab = wt2.load_corpus(base.data_dir).vocab_size if wanted else 0  # the control's width needs it
        rows = ablation_configs(base, only, left_out, vocab_size=vocab)
        for name, reason in left_out.items():
            print(f"ablation row {name}: {reason}", file=sys.stderr)
        if args.amp:
            raise ValueError("--amp: the ablation has its own mixed-precision row; leave --amp off")
    except (ValueError, NotImplementedError, wt2.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = run_rows(WikiText2Benchmark(args.output_dir, resume=args.resume, quiet=args.quiet), rows, "ablation")
    if isinstance(results, int):
        return results
    if base.threads is not None:
        torch.set_num_threads(base.threads)
    bk_op = time_bk_op(rows[0][1])
    table = build_rows(results, bk_op)
    context = (f"Preset `{args.preset}`, {base.epochs} epoch(s), max_train_tokens {base.max_train_tokens}, seed "
               f"{base.seed}; machine: {_cpu_name()}, {torch.get_num_threads()} "
               f"torch threads; git {results[BASELINE].git_revision}. Ratios are against the baseline row.")
    if left_out:
        context += " Rows left out: " + "; ".join(f"{name}: {why}" for name, why in left_out.items()) + "."
    doc = {"context": context, "preset": args.preset, "config": rows[0][1].to_dict(), "bk_op": bk_op, "rows": table,
           "left_out_rows": left_out,
           "versions": results[BASELINE].versions, "git_revision": results[BASELINE].git_revision}
    out = Path(args.output_dir)
    write_json_atomic(out / "ablation.json", doc)
    (out / "ablation.md").write_text(format_markdown(table, context))
    plot(table, out / "ablation.png")
    print(format_markdown(table, context))
    print(f"Results in {out}/ (ablation.json, ablation.md, ablation.png, runs/)")
    return 0
