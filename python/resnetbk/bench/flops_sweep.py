"""``python -m resnetbk.bench flops``: per-token training FLOPs of each component against the
sequence length, for both model classes, from the closed-form estimate (the same price list as
the measured traces; ``tests/test_flops.py`` checks that the two agree).

At d_model 64 with a 33k-word vocabulary the LM head dominates every short sequence; the sweep
shows where the Transformer's O(N^2) attention overtakes it and that ResNet-BK's mixer stays flat.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import WIKITEXT2_VOCAB
from ..flops.estimate import StepShape, estimate_step
from ..jsonfile import write_json_atomic
from ..models import ModelOptions

#: Rolled-up components, by the module each op ran in: the sequence mixer (attention or the
#: BK-Core layer), the feed-forward (MLP or MoE), LayerNorms, LM head, embeddings, the loss
#: (ops outside modules) and the optimizer; "other" is the blocks' residual adds.
GROUPS = (
    ("mixer", (".attention", ".bk")),
    ("feed_forward", (".mlp", ".moe")),
    ("norms", (".norm", "final_norm")),
    ("lm_head", ("lm_head",)),
    ("embeddings", ("token_embedding", "position_embedding", "dropout", "model (top level)")),
    ("loss", ("(outside modules)",)),
    ("optimizer", ("optimizer",)),
)


def group_of(component: str) -> str:
    for name, keys in GROUPS:
        if any(k in component for k in keys):
            return name
    return "other"


def sweep(seq_lens: list, *, batch: int, d_model: int, n_layers: int, vocab_size: int) -> dict:
    """``{architecture: {seq_len: {group: FLOPs per token}}}``."""
    table: dict = {}
    for arch in ("transformer", "resnet_bk"):
        table[arch] = {}
        for n in seq_lens:
            report = estimate_step(StepShape(ModelOptions(arch, vocab_size, d_model, n_layers, n_seq=n), batch=batch))
            tokens = batch * n
            groups: dict = {}
            for component, phases in report["by_component"].items():
                g = group_of(component)
                groups[g] = groups.get(g, 0) + sum(phases.values()) / tokens
            groups["total"] = report["total"] / tokens
            table[arch][n] = groups
    return table


def format_table(table: dict) -> str:
    lines = []
    for arch, rows in table.items():
        groups = [g for g, _ in GROUPS] + ["other", "total"]
        present = [g for g in groups if any(g in r for r in rows.values())]
        lines.append(f"{arch}: training FLOPs per token (forward + backward + optimizer)")
        lines.append("  " + f"{'seq len':>8s}" + "".join(f"{g:>13s}" for g in present))
        for n, r in rows.items():
            lines.append("  " + f"{n:>8,d}" + "".join(f"{r.get(g, 0):>13.3e}" for g in present))
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (arch, rows) in zip(axes, table.items()):
        lens = list(rows)
        for g in sorted({g for r in rows.values() for g in r}):
            ax.plot(lens, [rows[n].get(g, 0) for n in lens], marker="o", label=g, linewidth=2.5 if g == "total" else 1.2)
        ax.set(title=arch, xlabel="sequence length", xscale="log", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training FLOPs per token")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench flops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", default="128,512,2048,8192", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=WIKITEXT2_VOCAB)
    p.add_argument("--output-dir", default="benchmark_results/wikitext2")
    args = p.parse_args(argv)
    try:
        seq_lens = [int(x) for x in args.seq_lens.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seq-lens: expected comma-separated integers, got {args.seq_lens!r}")
    if not seq_lens or min(seq_lens) < 2:
        p.error("--seq-lens: every length must be at least 2")
    for name in ("batch", "d_model", "n_layers", "vocab_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1")
    table = sweep(seq_lens, batch=args.batch, d_model=args.d_model, n_layers=args.n_layers, vocab_size=args.vocab_size)
    print(format_table(table))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "flops_sweep.json", {"settings": vars(args) | {"seq_lens": seq_lens}, "per_token_flops": {
        arch: {str(n): r for n, r in rows.items()} for arch, rows in table.items()}})
    plot(table, out / "flops_sweep.png")
    print(f"\nWrote {out / 'flops_sweep.json'} and {out / 'flops_sweep.png'}")
    return 0
