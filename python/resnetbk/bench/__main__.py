"""Command line: ``python -m resnetbk.bench [options]``.

Runs the three benchmark models (transformer_baseline, resnet_bk_baseline, resnet_bk_full) on
WikiText-2 and writes ``<model>_results.json``, ``comparison_*.json`` and ``training_curves.png``
into ``--output-dir``. Subcommands: ``ablation`` (each optimization method against the ResNet-BK
baseline; ``python -m resnetbk.bench ablation --help``) and ``flops`` (the sequence-length FLOPs
sweep). Settings apply in this order: the dataclass defaults, ``--preset``,
``--config FILE``, then the other flags.
"""

from __future__ import annotations

import argparse
import math
import sys

from .. import data as wt2
from .. import methods
from . import distributed
from .config import MODEL_NAMES, PRESETS, BenchmarkConfig, load_config_file, model_config
from .runner import WikiText2Benchmark


def methods_help() -> str:
    """The optimization flags, from the method registry: claim, status, what each acts on."""
    lines = ["optimization methods (config flags; resnet_bk_full turns on every implemented one):"]
    for m in methods.REGISTRY:
        status = "implemented" if m.implemented else "not implemented yet"
        extra = f"; hyper-parameters: {', '.join(f'{k}={v}' for k, v in m.hyperparameters.items())}" if (
            m.hyperparameters) else ""
        lines.append(f"  {m.flag:22s} claim: {m.claim}; {status}; acts on {m.acts_on}{extra}")
    return "\n".join(lines)


def parse_args(argv=None, *, prog: str = "python -m resnetbk.bench", description: str = __doc__,
               default_output: str = "benchmark_results/wikitext2", models: bool = True) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=methods_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: ~10 min for all three models on 2 CPU cores (default); original: the original "
                        "benchmark's exact configuration; smoke: seconds on tiny data")
    if models:
        p.add_argument("--models", default=",".join(MODEL_NAMES),
                       help=f"comma-separated, from {', '.join(MODEL_NAMES)}")
    p.add_argument("--output-dir", default=default_output)
    p.add_argument("--config", help="JSON or YAML file of BenchmarkConfig fields (unknown keys are an error)")
    p.add_argument("--data-dir", help=f"folder with wiki.{{train,valid,test}}.tokens (else ${wt2.DATA_ENV}, else the hub)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop training after this many optimizer steps per model")
    p.add_argument("--max-train-tokens", type=int, help="train on the first N training tokens (evaluation stays full)")
    p.add_argument("--data-fraction", type=float, help="train on this fraction of the training tokens")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"))
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch and Rust threads per model")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast (the BK-Core stays float32)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --output-dir")
    p.add_argument("--allow-noncausal", action="store_true", help="allow training a model that reads future tokens")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def build_base_config(args: argparse.Namespace):
    """The preset, then ``--config``, then the flags."""
    fields = dict(PRESETS[args.preset])
    if args.config:
        fields.update(load_config_file(args.config))
    flags = {"epochs": args.epochs, "max_steps": args.max_steps, "max_train_tokens": args.max_train_tokens,
             "data_fraction": args.data_fraction, "device": args.device, "seed": args.seed, "threads": args.threads,
             "data_dir": args.data_dir}
    fields.update({k: v for k, v in flags.items() if v is not None})
    if args.allow_noncausal:
        fields["allow_noncausal"] = True
    return BenchmarkConfig.from_dict(fields)


def build_configs(args: argparse.Namespace) -> list:
    base = build_base_config(args)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise ValueError("--models: name at least one model")
    configs = []
    for name in names:
        config = model_config(name, base)
        if args.amp:
            config = config.replace(use_mixed_precision=True)
        configs.append(config)
    return configs


def summary_table(results: list) -> str:
    def fmt(x, spec):
        return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)

    rows = [f"{'model':22s} {'causal':>6s} {'valid ppl':>10s} {'test ppl':>10s} {'tokens/s':>10s} "
            f"{'train s':>8s} {'peak MiB':>9s} {'params':>10s}"]
    for r in results:
        # Validation and test perplexity of the same weights: the best-validation epoch's.
        rows.append(f"{r.model_name:22s} {str(r.causal):>6s} {fmt(r.best_valid_perplexity, '10.2f')} "
                    f"{fmt(r.test_perplexity, '10.2f')} {fmt(r.tokens_per_second, '10,.0f')} "
                    f"{fmt(r.training_time, '8.1f')} {fmt(r.peak_memory_mb, '9.0f')} {r.parameters:>10,}")
    return "\n".join(rows)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["flops"]:  # the sequence-length FLOPs sweep
        from .flops_sweep import main as flops_main

        return flops_main(argv[1:])
    if argv[:1] == ["ablation"]:  # each optimization method against the ResNet-BK baseline
        from .ablation import main as ablation_main

        return ablation_main(argv[1:])
    args = parse_args(argv)
    try:
        configs = build_configs(args)
        corpus = wt2.load_corpus(configs[0].data_dir)
    except (ValueError, NotImplementedError, wt2.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    main_rank = distributed.is_main_process()  # under torchrun, rank 0 speaks
    if main_rank:
        print(f"Data: {corpus.describe()}")
    bench = WikiText2Benchmark(args.output_dir, resume=args.resume, quiet=args.quiet)
    try:
        results = bench.run_all(configs)
    except (RuntimeError, ValueError, KeyboardInterrupt) as exc:
        print(f"error: {exc or 'interrupted'}", file=sys.stderr)
        print(f"Completed epochs are checkpointed under {bench.output_dir}/runs/; rerun with --resume to continue.",
              file=sys.stderr)
        return 1
    if not main_rank:
        return 0
    print()
    print(summary_table(results))
    for r in results:
        if not r.perplexity_is_lm:
            print(f"NOTE: {r.model_name} failed the causality probe; its perplexity is not a language-model perplexity.")
    print(f"\nResults in {bench.output_dir}/ (*_results.json, comparison_*.json, training_curves.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
