"""The original benchmark's four-panel figure: training loss, validation perplexity (log scale), time per epoch,
and total training FLOPs, for every model of a run."""

from __future__ import annotations

from pathlib import Path

from .results import BenchmarkResults


def plot_training_curves(results: list, path: str | Path) -> Path:
    """Draw the four panels for ``results`` (a list of ``BenchmarkResults``) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (loss_ax, ppl_ax), (time_ax, flops_ax) = axes
    for r in results:
        epochs = range(1, len(r.epoch_losses) + 1)
        label = r.model_name if r.perplexity_is_lm else f"{r.model_name} (not causal)"
        loss_ax.plot(epochs, r.epoch_losses, marker="o", label=label)
        ppl_ax.plot(epochs, r.epoch_perplexities, marker="o", label=label)
        time_ax.plot(epochs, r.epoch_times, marker="o", label=label)
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="mean NLL per token")
    ppl_ax.set(title="Validation perplexity", xlabel="epoch", ylabel="perplexity", yscale="log")
    time_ax.set(title="Time per epoch", xlabel="epoch", ylabel="seconds")
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    flops_ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


__all__ = ["BenchmarkResults", "plot_training_curves"]
