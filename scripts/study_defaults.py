"""The defaults study: which modelling choices matter, for both architectures alike, judged on
the validation split only (the test split is never evaluated: ``evaluate_test: false``).

    .venv/bin/python scripts/study_defaults.py --output-dir results/defaults-study [--threads 2]

Each variant changes one choice from the reference (``init: normal``: N(0, 0.02) weights; LM head
tied to the embedding, no bias; weight decay on weight matrices only) or takes all of the
alternatives at once (``torch_untied_decay_all``: PyTorch's default initialisation, an untied head
with a bias, decay on every parameter). Both models train on the quick preset's budget (one pass
over the first 614,400 training tokens) with the learning rates listed. Writes ``study.json`` and
``study.md``; each variant's full results folder stays under ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "reference": {},
    "torch_init": {"init": "torch"},
    "untied_with_bias": {"tie_embeddings": False, "head_bias": True},
    "tied_with_bias": {"head_bias": True},
    "untied_no_bias": {"tie_embeddings": False},
    "decay_all": {"decay_norms_biases_embeddings": True},
    "torch_untied_decay_all": {"init": "torch", "tie_embeddings": False, "head_bias": True,
                               "decay_norms_biases_embeddings": True},
}
MODELS = ("transformer_baseline", "resnet_bk_baseline")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="results/defaults-study")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lrs", default="0.002", help="comma-separated learning rates for every variant")
    p.add_argument("--extra-lrs", default="0.001,0.004", help="further learning rates, for --extra-lrs-variant only")
    p.add_argument("--extra-lrs-variant", default="reference", choices=sorted(VARIANTS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--skip-extra-lrs", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    runs = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        runs += [(name, lr) for name in args.variants.split(",")]
    if not args.skip_extra_lrs:
        runs += [(args.extra_lrs_variant, float(x)) for x in args.extra_lrs.split(",") if x]
    rows = []
    for name, lr in runs:
        folder = out / "runs" / f"{name}_lr{lr:g}"
        config = dict(VARIANTS[name], lr=lr, evaluate_test=False, threads=args.threads, device="cpu")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        done = all((folder / f"{m}_results.json").is_file() for m in MODELS)
        if not done:
            print(f"==> {name}, lr {lr:g}", flush=True)
            command = [sys.executable, "-m", "resnetbk.bench", "--preset", "quick", "--models", ",".join(MODELS),
                       "--config", str(folder / "config.json"), "--output-dir", str(folder), "--quiet", "--resume"]
            subprocess.run(command, check=True, env=dict(os.environ))
        for model in MODELS:
            r = json.loads((folder / f"{model}_results.json").read_text())
            rows.append({"variant": name, "lr": lr, "model": model, "changes": VARIANTS[name],
                         "best_valid_perplexity": r["best_valid_perplexity"], "steps": r["steps"],
                         "tokens_per_second": r["tokens_per_second"]})
    (out / "study.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| variant | lr | " + " | ".join(f"{m} valid ppl" for m in MODELS) + " |",
             "|---|---|" + "---|" * len(MODELS)]
    for name, lr in runs:
        cells = [next(f"{r['best_valid_perplexity']:.1f}" for r in rows
                      if r["variant"] == name and r["lr"] == lr and r["model"] == m) for m in MODELS]
        lines.append(f"| {name} | {lr:g} | " + " | ".join(cells) + " |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
