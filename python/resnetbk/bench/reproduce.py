"""``python -m resnetbk.bench reproduce``: the harness checked against a published run.

PyTorch's word_language_model example trains word-level language models on WikiText-2 with a
plain protocol, and published runs of it report test perplexities. Training the same models with
the same protocol through this harness (its data, batching, loop, evaluation and perplexity)
and landing near those figures is evidence that the harness measures what it says.

- ``word_lm_lstm``: embedding 200 -> dropout 0.2 -> 2 LSTM layers of 200 (dropout 0.2 between and
  after) -> a linear decoder with bias, untied; embedding and decoder uniform in +-0.1; bptt 35
  windows in text order with the LSTM state carried across them (truncated backpropagation
  through time), batch 20, evaluation batch 10; plain SGD, lr 20, divided by 4 after an epoch
  whose validation loss did not improve, gradient norm clipped at 0.25; 12 epochs.
  Published test perplexity: 114.95.
- ``word_lm_transformer``: the example's Transformer (2 post-norm layers, 2 heads, width 200, MLP
  200, dropout 0.2, sinusoidal positions, embeddings times sqrt(200)), the same protocol without a
  carried state, 6 epochs. Published test perplexity: 195.85.

What differs from the example, and why it should not matter: its vocabulary is built from all
three splits, ours from train (WikiText-2's valid and test hold no word train lacks: the same
33,278 words, numbered differently); it drops the tokens that do not fill the last batch column,
we pad them (and ignore the padding); the LM head computes the same cross-entropy without
materialising the logits.

Writes ``reproduction.json`` and ``reproduction.md`` (ours against the published figures, the
ratio, and whether it is within 10%), and each run's results under ``runs/``. ``--epochs``,
``--max-steps`` or ``--max-train-tokens`` shorten a run (for a check of the machinery; the
table then says the figures are not comparable).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from .. import data as wt2
from ..jsonfile import write_json_atomic
from ..train.distributed import resolve_device
from .config import OPTIMIZATION_FLAGS, BenchmarkConfig, nest
from .runner import Interrupted, WikiText2Benchmark

_PROTOCOL = dict(d_model=200, n_layers=2, dropout=0.2, tie_embeddings=False, head_bias=True, init="uniform",
                 final_norm=False, n_seq=35, batch_size=20, eval_batch_size=10, optimizer="sgd", lr=20.0,
                 lr_schedule="plateau", plateau_factor=0.25, grad_clip=0.25, weight_decay=0.0, warmup_steps=0,
                 shuffle_windows=False)

#: name -> (the harness's architecture, config fields, the published test perplexity, what was published).
REPRODUCTIONS = {
    "word_lm_lstm": ("lstm", dict(_PROTOCOL, lstm_hidden=200, carry_state=True, epochs=12), 114.95,
                     "PyTorch word_language_model, LSTM 2x200, 12 epochs"),
    "word_lm_transformer": ("transformer", dict(_PROTOCOL, transformer_style="word_language_model", n_heads=2,
                                                d_ff=200, epochs=6), 195.85,
                            "PyTorch word_language_model, Transformer 2 layers, 2 heads, 200 wide, 6 epochs"),
}
#: Within this relative distance of the published figure counts as reproduced.
TOLERANCE = 0.10


def reproduction_config(name: str, **overrides) -> BenchmarkConfig:
    """The harness config that reproduces ``name`` (a key of ``REPRODUCTIONS``), with ``overrides``."""
    if name not in REPRODUCTIONS:
        raise ValueError(f"--which: expected names from {', '.join(REPRODUCTIONS)}, got {name!r}")
    architecture, fields, _, _ = REPRODUCTIONS[name]
    no_methods = {flag: False for flag in OPTIMIZATION_FLAGS}
    return BenchmarkConfig.from_dict(nest({"model_name": name, "architecture": architecture, **no_methods, **fields,
                                           **overrides}))


def compare(name: str, results, shortened: bool) -> dict:
    """One row: our test perplexity against the published one."""
    published = REPRODUCTIONS[name][2]
    ours = results.test_perplexity
    ratio = ours / published
    if shortened:
        verdict = "shortened run: a check of the machinery, not comparable to the published figure"
    else:
        verdict = (f"reproduced (within {TOLERANCE:.0%})" if abs(ratio - 1) <= TOLERANCE else
                   f"not reproduced: {abs(ratio - 1):.0%} {'above' if ratio > 1 else 'below'} the published figure")
    return {"name": name, "published": REPRODUCTIONS[name][3], "published_test_perplexity": published,
            "test_perplexity": ours, "best_valid_perplexity": results.best_valid_perplexity, "ratio": ratio,
            "epochs": results.config.get("epochs"), "steps": results.steps, "shortened": shortened,
            "valid_perplexity_by_epoch": results.epoch_perplexities, "training_time_s": results.training_time,
            "verdict": verdict}


def format_markdown(rows: list, context: str) -> str:
    lines = ["# Reproducing PyTorch's word_language_model example on WikiText-2", "", context, "",
             "| run | published | published test ppl | our test ppl | ratio | our best valid ppl | epochs | steps "
             "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['published']} | {r['published_test_perplexity']:.2f} "
                     f"| {r['test_perplexity']:.2f} | {r['ratio']:.3f} | {r['best_valid_perplexity']:.2f} "
                     f"| {r['epochs']} | {r['steps']} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--which", default=",".join(REPRODUCTIONS), help=f"comma-separated, from {', '.join(REPRODUCTIONS)}")
    p.add_argument("--output-dir", default="benchmark_results/reproduction")
    p.add_argument("--data-dir", help=f"folder with wiki.{{train,valid,test}}.tokens (else ${wt2.DATA_ENV}, else the hub)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--epochs", type=int, help="fewer epochs than the published run (not comparable)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (not comparable)")
    p.add_argument("--max-train-tokens", type=int, help="train on the first N tokens (not comparable)")
    p.add_argument("--threads", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --output-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:

    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = {k: v for k, v in {"epochs": args.epochs, "max_steps": args.max_steps,
                                   "max_train_tokens": args.max_train_tokens, "threads": args.threads,
                                   "device": args.device, "data_dir": args.data_dir}.items() if v is not None}
    try:
        names = [n.strip() for n in args.which.split(",") if n.strip()]
        if not names:
            raise ValueError("--which: name at least one run")
        configs = [reproduction_config(name, **overrides) for name in names]
        resolve_device(configs[0].device)  # a missing GPU is known before the data loads
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bench = WikiText2Benchmark(args.output_dir, resume=args.resume, quiet=args.quiet)
    rows, versions, revision = [], None, None
    try:
        for name, config in zip(names, configs):
            print(f"== {name}: {REPRODUCTIONS[name][3]}", flush=True)
            results = bench.run_benchmark(config)
            shortened = any(k in overrides for k in ("epochs", "max_steps", "max_train_tokens"))
            rows.append(compare(name, results, shortened))
            versions, revision = results.versions, results.git_revision
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"interrupted: {exc or 'between runs'}; rerun with --resume to continue", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    context = (f"Device {configs[0].device}; git {revision}; written {started}. Published figures: test perplexities "
               f"reported for published runs of the example. Within {TOLERANCE:.0%} counts as reproduced.")
    out = Path(args.output_dir)
    write_json_atomic(out / "reproduction.json", {"context": context, "rows": rows, "versions": versions,
                                                  "git_revision": revision})
    (out / "reproduction.md").write_text(format_markdown(rows, context))
    print(format_markdown(rows, context))
    return 0
