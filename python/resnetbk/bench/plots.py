"""The original benchmark's four-panel figure: training loss and throughput (per step, from
``<model>_steps.csv``; per epoch without it), validation perplexity, total training FLOPs, for every
model of a run. Each model has its own colour, marker and line style, so overlapping lines stay
visible; the title names the configuration and the machine."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..measure.step_log import read_steps
from ..train.results import BenchmarkResults
from .config import flat_view

STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1))), ("P", (0, (3, 1, 1, 1)))]


def _smooth(values: list, window: int) -> list:
    """Trailing mean over ``window`` steps (the per-step loss is noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _save(fig, path: Path) -> Path:
    """Lay out, write beside ``path`` and move into place (a reader never sees half a PNG)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def _title(results: list) -> str:
    c = flat_view(results[0].config)  # results files of any schema
    budget = (f"{c.get('max_train_tokens'):,} training tokens" if c.get("max_train_tokens") else "all training tokens")
    return (f"WikiText-2: d {c.get('d_model')}, {c.get('n_layers')} layers, N {c.get('n_seq')}, batch {c.get('batch_size')}, "
            f"{c.get('epochs')} epoch(s) over {budget}, seed {c.get('seed')}\n{results[0].device}, "
            f"{c.get('threads') or 'default'} thread(s), {results[0].versions.get('torch', '')} torch")


def plot_training_curves(results: list, path: str | Path) -> Path:
    """Draw the four panels for ``results`` (a list of ``BenchmarkResults``) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    path = Path(path)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (loss_ax, ppl_ax), (time_ax, flops_ax) = axes
    per_step = True
    for i, r in enumerate(results):
        marker, line = STYLES[i % len(STYLES)]
        style = dict(marker=marker, linestyle=line, label=r.model_name if r.causal else f"{r.model_name} (not causal)")
        epochs = range(1, len(r.epoch_losses) + 1)
        steps_csv = path.with_name(f"{r.model_name}_steps.csv")
        rows = [row for row in read_steps(steps_csv) if row["skipped"] == 0] if steps_csv.is_file() else []
        if rows:
            window, every = max(1, len(rows) // 50), max(1, len(rows) // 8)
            loss_ax.plot([row["step"] for row in rows], _smooth([row["loss"] for row in rows], window),
                         markevery=every, **style)
            untraced = [row for row in rows if row["flops_traced"] == 0]
            time_ax.plot([row["step"] for row in untraced], _smooth([row["tokens_per_second"] for row in untraced], window),
                         markevery=every, **style)
        else:
            per_step = False
            loss_ax.plot(epochs, r.epoch_losses, **style)
            time_ax.plot(epochs, r.epoch_times, **style)
        ppl_ax.plot(range(1, len(r.epoch_perplexities) + 1), r.epoch_perplexities, **style)
    if per_step:
        loss_ax.set(title="Training loss (trailing mean over ~2% of the steps)", xlabel="step", ylabel="mean NLL per token")
        time_ax.set(title="Training throughput (steps the FLOPs tracer did not price)", xlabel="step",
                    ylabel="tokens/s")
    else:
        loss_ax.set(title="Training loss", xlabel="epoch", ylabel="mean NLL per token")
        time_ax.set(title="Time per epoch", xlabel="epoch", ylabel="seconds")
    ppl_ax.set(title="Validation perplexity", xlabel="epoch", ylabel="perplexity", yscale="log")
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ppl_ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ppl_ax.yaxis.set_major_formatter(ScalarFormatter())
    fig.suptitle(_title(results), fontsize=10)
    names = [r.model_name for r in results]
    measured = [r.total_training_flops for r in results]
    if all(f is not None for f in measured):
        flops_ax.bar(names, measured)
        flops_ax.set(title="Total training FLOPs", ylabel="FLOPs")
    else:
        flops_ax.set(title="Total training FLOPs")
        flops_ax.text(0.5, 0.5, "not measured yet\n(the FLOPs engine fills this panel)", ha="center", va="center",
                      transform=flops_ax.transAxes)
        flops_ax.set_xticks([])
        flops_ax.set_yticks([])
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, ppl_ax, time_ax):
        if ax is ppl_ax or not per_step:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    flops_ax.tick_params(axis="x", labelrotation=15)
    return _save(fig, path)


def _epoch_band(results: list) -> tuple:
    """``(epochs, means, stds)``: per epoch the mean validation perplexity over the seeds that
    reached it with a finite one, and its sample std (0 where one seed did); epochs with none are
    left out (a diverged seed has no perplexity to average)."""
    longest = max((len(r.epoch_perplexities) for r in results), default=0)
    epochs, means, stds = [], [], []
    for epoch in range(longest):
        values = [float(r.epoch_perplexities[epoch]) for r in results if len(r.epoch_perplexities) > epoch]
        values = [v for v in values if math.isfinite(v)]
        if values:
            epochs.append(epoch + 1)
            means.append(statistics.fmean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return epochs, means, stds


def plot_seed_curves(runs: dict, path: str | Path) -> Path:
    """The figure of a campaign (``bench.campaign``): per model (``runs``: name -> its
    ``BenchmarkResults``, one per seed), the validation perplexity after each epoch as the seeds'
    mean with a band of +- one sample std, and the test perplexity as mean +- std with every seed
    as a dot. Throughput is left out: a campaign's runs share the machine with other work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig, (ppl_ax, test_ax) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    names = list(runs)
    for i, name in enumerate(names):
        results = runs[name]
        marker, line = STYLES[i % len(STYLES)]
        epochs, means, stds = _epoch_band(results)
        (drawn,) = ppl_ax.plot(epochs, means, marker=marker, linestyle=line, label=f"{name} ({len(results)} seed(s))")
        colour = drawn.get_color()  # the same model in the same colour on both panels
        ppl_ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colour, alpha=0.2)
        tests = [float(r.test_perplexity) for r in results if math.isfinite(float(r.test_perplexity))]
        if tests:
            spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
            test_ax.bar(i, statistics.fmean(tests), yerr=spread, capsize=4, color=colour, alpha=0.6)
            test_ax.plot([i] * len(tests), tests, "k.", markersize=5)
    ppl_ax.set(title="Validation perplexity (mean over seeds, band +- 1 std)", xlabel="epoch", ylabel="perplexity",
               yscale="log")
    ppl_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ppl_ax.legend(fontsize=8)
    ppl_ax.grid(alpha=0.3)
    test_ax.set(title="Test perplexity (mean +- std; dots: seeds)", ylabel="perplexity")
    test_ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    test_ax.grid(alpha=0.3, axis="y")
    first = next(iter(runs.values()))[0]
    c = flat_view(first.config)
    fig.suptitle(f"WikiText-2: d {c.get('d_model')}, {c.get('n_layers')} layers, N {c.get('n_seq')}, batch "
                 f"{c.get('batch_size')}, {c.get('epochs')} epoch(s); {first.device}", fontsize=10)
    return _save(fig, path)


__all__ = ["BenchmarkResults", "plot_seed_curves", "plot_training_curves"]
