"""``report.md`` from a results folder: ``python -m resnetbk.bench report DIR``.

The benchmark writes it at the end of every run. Sections: the run (command, machine, versions,
revision), the configuration, the quality table, the cost table, the comparisons, the FLOPs
by component, the figure. With several seeds every figure is ``mean ± std``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from ..measure.context_reach import shown_distances
from .config import flat_view
from .summary import compare_summaries, load_runs, seed_folders, summarize

CONFIG_FIELDS = ("d_model", "n_layers", "n_seq", "batch_size", "epochs", "max_train_tokens", "lr", "warmup_steps",
                 "min_lr_ratio", "weight_decay", "grad_clip", "dropout", "init", "tie_embeddings", "head_bias",
                 "decay_norms_biases_embeddings", "device", "threads", "fused_head", "flops_trace_interval")
RUN_INFO = "run_info.json"


def _fmt(stat: dict, spec: str, scale: float = 1.0) -> str:
    mean, std = stat.get("mean"), stat.get("std")
    if mean is None:
        return "-"
    text = format(mean / scale, spec)
    return text if std is None else f"{text} ± {format(std / scale, spec)}"


def _methods(result) -> str:
    on = [k for k, v in flat_view(result.config).items() if k.startswith("use_") and v is True]
    return ", ".join(on) or "none"


def _markdown(header: list, rows: list) -> list:
    """A Markdown table: one header row, a separator, one line per row of cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


#: (column title, metric, number format) of the cost table, after the model's name.
COST_COLUMNS = (("training time (s)", "training_time", ".0f"), ("tokens/s", "tokens_per_second", ",.0f"),
                ("peak memory above baseline (MiB)", "peak_memory_above_baseline_mb", ",.0f"),
                ("process peak (MiB)", "peak_memory_mb", ",.0f"), ("size (MiB)", "model_size_mb", ".2f"),
                ("parameters", "parameters", ",.0f"), ("FLOPs/step forward", "forward_flops", ".3e"),
                ("backward", "backward_flops", ".3e"), ("optimizer", "optimizer_flops", ".3e"),
                ("total training FLOPs", "total_training_flops", ".3e"))


def quality_table(summaries: dict, runs: dict) -> list:
    rows = [[name, "yes" if all(r.causal for r in runs[name]) else "NO: not LM perplexities",
             _fmt(s["best_valid_perplexity"], ".1f"), _fmt(s["test_perplexity"], ".1f"), _fmt(s["train_loss"], ".3f"),
             _fmt(s["steps"], ".0f")] for name, s in summaries.items()]
    return _markdown(["model", "causal", "best valid ppl", "test ppl (same weights)", "final train loss", "steps"], rows)


def cost_table(summaries: dict) -> list:
    rows = [[name] + [_fmt(s[metric], spec) for _, metric, spec in COST_COLUMNS] for name, s in summaries.items()]
    return _markdown(["model"] + [title for title, _, _ in COST_COLUMNS], rows)


def comparison_lines(comparisons: list) -> list:
    lines = ["| reference | model | test ppl difference | larger than 2 std? | valid ppl | time speed-up | "
             "tokens/s ratio | FLOPs ratio (ref / model) | memory reduction |",
             "|---|---|---|---|---|---|---|---|---|"]

    def num(x, spec, suffix=""):
        return "-" if x is None else f"{format(x, spec)}{suffix}"

    for c in comparisons:
        exceeds = {True: "yes", False: "no", None: "one seed: unknown"}[c["perplexity_difference_exceeds_2_std"]]
        lines.append(f"| {c['reference']} | {c['model']} | {num(c['perplexity_difference_percent'], '+.1f', '%')} | "
                     f"{exceeds} | {num(c['valid_perplexity_reference'], '.1f')} -> {num(c['valid_perplexity_model'], '.1f')} | "
                     f"{num(c['speedup_time'], '.2f', 'x')} | {num(c['tokens_per_second_ratio'], '.2f', 'x')} | "
                     f"{num(c['speedup_flops'], '.2f', 'x')} | {num(c['memory_reduction_percent'], '+.1f', '%')} |")
    return lines


def flops_lines(runs: dict) -> list:
    lines = []
    for name, results in runs.items():
        breakdown = (results[0].flops_breakdown or {}).get("per_step_by_component")
        if not breakdown:
            continue
        total = sum(sum(phases.values()) for phases in breakdown.values()) or 1
        lines += [f"**{name}** (per training step, first seed; traced steps: "
                  f"{results[0].flops_breakdown.get('traced_steps')})", "",
                  "| component | forward | backward | optimizer | share |", "|---|---|---|---|---|"]
        ordered = sorted(breakdown.items(), key=lambda kv: -sum(kv[1].values()))
        for component, phases in ordered:
            share = 100 * sum(phases.values()) / total
            lines.append(f"| {component} | {phases.get('forward', 0):.3e} | {phases.get('backward', 0):.3e} | "
                         f"{phases.get('optimizer', 0):.3e} | {share:.1f}% |")
        lines.append("")
    return lines


def context_reach_lines(runs: dict) -> list:
    """Each model's loss sensitivity to inputs d positions back, relative to d = 0 (first seed)."""

    measured = {name: results[0].context_reach for name, results in runs.items() if results[0].context_reach}
    if not measured:
        return ["Not measured (results of schema version 4 or older)."]
    n_seq = max(len(r["relative"]) for r in measured.values())
    distances = shown_distances(n_seq)
    lines = ["How far back each model looks: the norm of the gradient of the loss at a validation window's "
             "last position with respect to the embedded input d positions earlier, relative to d = 0 "
             "(mean over the first sequences of the validation split; first seed).", "",
             "| model | " + " | ".join(f"d = {d}" for d in distances) + " |", "|---|" + "---|" * len(distances)]
    for name, reach in measured.items():
        values = [reach["relative"][d] if d < len(reach["relative"]) else None for d in distances]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.1e}" for v in values) + " |")
    return lines


def requirement_line(summaries: dict) -> list:
    """The original benchmark's requirement: ResNet-BK within 30% of the Transformer's perplexity."""
    reference = summaries.get("transformer_baseline")
    if reference is None or reference["test_perplexity"]["mean"] is None:
        return []
    lines = []
    for name, s in summaries.items():
        if not name.startswith("resnet_bk") or s["test_perplexity"]["mean"] is None:
            continue
        # A row at a stated rate ("..._lr1e-3") is set against the Transformer at the same stated rate.
        suffix = name[name.index("_lr"):] if "_lr" in name else ""
        ref_name = f"transformer_baseline{suffix}" if f"transformer_baseline{suffix}" in summaries else "transformer_baseline"
        ref = summaries[ref_name]
        if ref["test_perplexity"]["mean"] is None:
            continue
        change, spread = requirement_change(ref["test_perplexity"], s["test_perplexity"])
        verdict = "met" if change <= REQUIREMENT_PERCENT else "NOT met"
        text = (f"- {name}: test perplexity {change:+.1f}% against {ref_name}'s: the original requirement "
                f"\"within {REQUIREMENT_PERCENT:.0f}% of the Transformer's perplexity\" is {verdict}")
        if spread is None:
            lines.append(text + " (one seed: no noise estimate).")
            continue
        low, high = change - 2 * spread, change + 2 * spread
        at_two = ("still met" if high <= REQUIREMENT_PERCENT else "NOT met even so" if low > REQUIREMENT_PERCENT
                  else "undecided")
        lines.append(text + f"; {change:+.1f} ± {spread:.1f}% from the seeds' sample standard deviations (a single "
                            f"run's spread, not the standard error of the mean: conservative), so at two standard "
                            f"deviations ({low:+.1f}% to {high:+.1f}%) it is {at_two}.")
    return lines


#: The original benchmark's requirement 8.15: ResNet-BK's perplexity within this many percent of the Transformer's.
REQUIREMENT_PERCENT = 30.0


def requirement_change(reference: dict, model: dict) -> tuple:
    """``(change, std)`` in percent: ``100 (b/a - 1)`` of the mean test perplexities, and its
    standard deviation from the seeds' (first-order propagation of both relative spreads; None
    with one seed)."""
    a, b = reference["mean"], model["mean"]
    change = 100 * (b / a - 1)
    if reference.get("std") is None or model.get("std") is None:
        return change, None
    return change, 100 * (b / a) * ((reference["std"] / a) ** 2 + (model["std"] / b) ** 2) ** 0.5


def build(folder: str | Path, models=None) -> tuple:
    """``(runs, summaries, comparisons)`` of a results folder (only ``models``, where given)."""
    runs = load_runs(folder, models)
    summaries = {name: summarize(results) for name, results in runs.items()}
    comparisons = [compare_summaries(a, summaries[a], b, summaries[b]) for a, b in itertools.combinations(summaries, 2)]
    return runs, summaries, comparisons


def render(folder: str | Path, models=None) -> str:
    folder = Path(folder)
    runs, summaries, comparisons = build(folder, models)
    first = next(iter(runs.values()))[0]
    seeds = sorted({flat_view(r.config).get("seed") for results in runs.values() for r in results})
    info_path = folder / RUN_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    lines = ["# WikiText-2 benchmark report", ""]
    if info.get("command"):
        lines += [f"Command: `{info['command']}`  ", f"Started {info.get('started', '?')}, "
                  f"finished {info.get('finished', '?')}  "]
    lines += [f"Machine: {info.get('machine') or first.device}  ",
              f"Versions: {', '.join(f'{k} {v}' for k, v in first.versions.items())}  ",
              f"Git revision: {first.git_revision or 'unknown'}  ",
              f"Data: {first.dataset}  ",
              f"Seeds: {', '.join(str(s) for s in seeds)} ({len(seeds)} run(s) per model"
              f"{'; figures are mean ± sample std' if len(seeds) > 1 else ''})", ""]
    lines += ["## Configuration", "", "| setting | value |", "|---|---|"]
    shown = flat_view(first.config)  # results of any schema: nested (6 on) or flat
    lines += [f"| {k} | {shown.get(k)} |" for k in CONFIG_FIELDS if k in shown]
    lines += [f"| optimization methods of {name} | {_methods(results[0])} |" for name, results in runs.items()]
    lines += ["", "## Quality", "",
              "Validation and test perplexity of the same weights (the best-validation epoch's); a model that "
              "fails the causality probe has no language-model perplexity (in the JSON files: "
              "`best_valid_perplexity` and `test_perplexity`).", ""]
    lines += quality_table(summaries, runs) + [""] + requirement_line(summaries)
    lines += ["", "## Cost", "",
              f"tokens/s: {first.throughput_method or 'training tokens / training time'}. Peak memory: "
              f"{first.peak_memory_method}. Comparisons use the peak above the baseline where measured.", ""]
    lines += cost_table(summaries)
    lines += ["", "## Comparisons", "",
              "Differences of the means; \"larger than 2 std\" compares the test-perplexity difference with twice "
              "the standard deviation of the difference over seeds.", ""]
    lines += comparison_lines(comparisons)
    lines += ["", "## Context reach", ""] + context_reach_lines(runs)
    lines += ["", "## FLOPs by component", ""] + flops_lines(runs)
    figures = [p for p in (folder / "training_curves.png", seed_folders(folder)[0] / "training_curves.png") if p.is_file()]
    if figures:
        lines += ["## Training curves", "", f"![training curves]({figures[0].relative_to(folder).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(folder: str | Path, models=None) -> Path:
    path = Path(folder) / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text(render(folder, models))
    tmp.replace(path)
    return path


def main_table(folder: str | Path) -> str:
    """The quality and cost figures in one plain-text table (the benchmark prints it at the end)."""
    runs, summaries, _ = build(folder)
    rows = [f"{'model':22s} {'causal':>6s} {'valid ppl':>16s} {'test ppl':>16s} {'tokens/s':>16s} {'peak MiB':>9s} "
            f"{'params':>10s}"]
    for name, s in summaries.items():
        causal = all(r.causal for r in runs[name])
        rows.append(f"{name:22s} {str(causal):>6s} {_fmt(s['best_valid_perplexity'], '.2f'):>16s} "
                    f"{_fmt(s['test_perplexity'], '.2f'):>16s} {_fmt(s['tokens_per_second'], ',.0f'):>16s} "
                    f"{_fmt(s['peak_memory_above_baseline_mb'], ',.0f'):>9s} {_fmt(s['parameters'], ',.0f'):>10s}")
    rows.append("valid ppl: best validation perplexity (best_valid_perplexity in the JSON); test ppl: the same "
                "weights on the test split (test_perplexity); peak MiB: training's peak memory above the post-data "
                "baseline")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a results folder (the benchmark's --output-dir)")
    args = p.parse_args(argv)
    try:
        path = write_report(args.folder)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(main_table(args.folder))
    print(f"\nReport: {path}")
    return 0
