"""``python -m resnetbk.bench decay-law RESULTS.json|checkpoint.pt ...``: the BK-Core's decay law
beside the measured context reach, for trained models.

A results file of schema 7 carries both figures. For an older run, its checkpoint
(``runs/<model>/checkpoint.pt``: the config and the weights after its last epoch) is measured
again here: the model rebuilt with its methods, both figures computed on the validation split of
``--data-dir``. For every input (any model; those without a BK-Core have only their measured
reach), ``decay_law.md`` tabulates the loss's measured sensitivity to the input ``d`` positions
back (``context_reach``, relative to the current token) beside what the mixers' contraction
predicts (``decay_law``: for each block, its channel that keeps the most, i.e. the largest
predicted sensitivity), and each block's decay per position (best and median channel);
``decay_law.png`` draws both against ``d`` on a log scale, a panel per file. They agree when the
measured reach falls at the rate the strongest channel predicts; a reach that falls faster than
the mixer allows means the rest of the network does not pass the mixer's memory on, and one that
falls slower means another path carries it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path

import torch

from .. import data as wt2
from ..jsonfile import write_json_atomic
from ..measure.context_reach import context_reach
from ..measure.decay_law import decay_law
from ..train.results import BenchmarkResults
from .config import BenchmarkConfig
from .recipe import make_model

DISTANCES = (1, 2, 4, 8, 16, 32)


def summarise(name: str, r) -> dict:
    reach = (r.context_reach or {}).get("relative") or []
    law = r.decay_law or {}
    blocks = []
    for block in law.get("blocks", []):
        predicted = block["predicted_relative"]
        best = max(range(len(predicted)), key=lambda c: predicted[c][min(8, len(predicted[c]) - 1)])
        blocks.append({"block": block["block"], "best_channel": best, "z_best": block["z"][best],
                       "decay_per_position_best": block["decay_per_position"][best],
                       "decay_per_position_median": statistics.median(block["decay_per_position"]),
                       "predicted_relative_best": predicted[best]})
    strongest = max((b["predicted_relative_best"] for b in blocks), key=lambda v: v[min(8, len(v) - 1)], default=[])
    return {"name": name, "architecture": r.config.get("model", {}).get("architecture"),
            "test_perplexity": r.test_perplexity, "measured_relative": {d: _at(reach, d) for d in DISTANCES},
            "predicted_relative": {d: _at(strongest, d) for d in DISTANCES}, "blocks": blocks,
            "measured_decay_per_position": _rate(reach), "predicted_decay_per_position": _rate(strongest)}


def _at(values: list, d: int):
    return values[d] if d < len(values) else None


def _rate(values: list, first: int = 1, last: int = 8) -> float | None:
    """The geometric decay per position between distances ``first`` and ``last``."""
    if len(values) <= last or not values[first] or not values[last] or values[first] <= 0 or values[last] <= 0:
        return None
    return (values[first] / values[last]) ** (1.0 / (last - first))


def _g(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2g}"


def format_markdown(rows: list) -> str:
    lines = ["# The BK-Core's decay law beside the measured context reach", "",
             "Relative sensitivity of the loss at a validation window's last position to the input d positions "
             "back (measured: `context_reach`; predicted: the product of the strongest mixer channel's "
             "contraction |g_k|^2, `decay_law`), and the decay per position between d = 1 and 8.", "",
             "| model | test ppl | " + " | ".join(f"d={d} measured / predicted" for d in DISTANCES)
             + " | decay per position, measured / predicted |", "|---" * (len(DISTANCES) + 3) + "|"]
    for row in rows:
        cells = [f"{_g(row['measured_relative'][d])} / {_g(row['predicted_relative'][d])}" for d in DISTANCES]
        ppl = row["test_perplexity"]
        lines.append(f"| {row['name']} | {'-' if not math.isfinite(ppl) else f'{ppl:.2f}'} | " + " | ".join(cells)
                     + f" | {_g(row['measured_decay_per_position'])}x / {_g(row['predicted_decay_per_position'])}x |")
    lines += ["", "Per block (ResNet-BK): the channel that keeps the most, its z, and the decay per position of the "
              "best and the median channel.", "", "| model | block | best channel | z | decay best | decay median |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        for b in row["blocks"]:
            z = b["z_best"]
            lines.append(f"| {row['name']} | {b['block']} | {b['best_channel']} | {z[0]:+.3f}{z[1]:+.3f}i | "
                         f"{b['decay_per_position_best']:.3g}x | {b['decay_per_position_median']:.3g}x |")
    return "\n".join(lines) + "\n"


def plot(rows: list, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False, sharey=True)
    for ax, row in zip(axes[0], rows):
        r = results[row["name"]]
        reach = (r.context_reach or {}).get("relative") or []
        d = list(range(1, len(reach)))
        ax.semilogy(d, [max(v, 1e-30) for v in reach[1:]], "k-", lw=2, label="measured reach")
        for b in row["blocks"]:
            p = b["predicted_relative_best"]
            ax.semilogy(range(1, len(p)), [max(v, 1e-30) for v in p[1:]], "--", label=f"block {b['block']} predicted")
        ax.set_title(row["name"], fontsize=9)
        ax.set_xlabel("distance d (positions back)")
        ax.set_xlim(0, min(64, max(d, default=1)))
        ax.set_ylim(1e-16, 2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("sensitivity relative to d = 0")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclasses.dataclass
class Measured:
    """What the report reads of a run: its name, config, test perplexity and the two figures."""

    model_name: str
    config: dict
    test_perplexity: float
    context_reach: dict | None
    decay_law: dict | None


def measure_checkpoint(path: Path, corpus) -> Measured:
    """Rebuild a run's model from its checkpoint and measure its reach and decay law again."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    config = BenchmarkConfig.from_dict(ckpt["config"])
    model = make_model(config, corpus.vocab_size)
    model.load_state_dict(ckpt["model"])
    n_seq = config.model.n_seq
    with model.state_carry(False):
        reach = context_reach(model, corpus.valid, n_seq)
    # The run's test perplexity, where its results file sits beside its runs/ folder.
    beside = path.parent.parent.parent / f"{config.model_name}_results.json"
    test = BenchmarkResults.load(beside).test_perplexity if beside.is_file() else math.nan
    return Measured(config.model_name, ckpt["config"], test, reach, decay_law(model, corpus.valid, n_seq))


def _load(path: Path, data_dir, corpora: dict) -> Measured:
    if path.suffix == ".pt":
        if "corpus" not in corpora:
            corpora["corpus"] = wt2.load_corpus(data_dir)
        return measure_checkpoint(path, corpora["corpus"])
    r = BenchmarkResults.load(path)
    return Measured(r.model_name, r.config, r.test_perplexity, r.context_reach, r.decay_law)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench decay-law", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results files (<model>_results.json) or checkpoints "
                                              "(runs/<model>/checkpoint.pt) of trained models")
    p.add_argument("--data-dir", help="WikiText-2 for measuring checkpoints (else $RESNETBK_DATA, else the hub)")
    p.add_argument("--output-dir", default="benchmark_results/decay-law")
    args = p.parse_args(argv)
    results, rows, corpora = {}, [], {}
    for path in map(Path, args.results):
        try:
            r = _load(path, args.data_dir, corpora)
        except wt2.DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            print(f"error: {path}: not a readable results file or checkpoint ({exc})", file=sys.stderr)
            return 2
        name = r.model_name if r.model_name not in results else f"{r.model_name} ({path.parent.name})"
        if not r.context_reach:
            print(f"error: {path}: no context_reach in the results (written before schema 5?)", file=sys.stderr)
            return 2
        results[name] = r
        rows.append(summarise(name, r))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "decay_law.json", {"rows": rows, "sources": [str(p) for p in args.results]})
    (out / "decay_law.md").write_text(format_markdown(rows))
    plot(rows, results, out / "decay_law.png")
    print(format_markdown(rows))
    print(f"Results in {out}/ (decay_law.json, decay_law.md, decay_law.png)")
    return 0
