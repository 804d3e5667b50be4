"""The benchmark's shared command-line options: the arguments every subcommand that trains
takes, the configs they build, the seeds, and the record of a run's command and machine."""

from __future__ import annotations

import argparse
import shlex

from .. import data as wt2
from .. import methods
from ..measure.environment import machine
from .config import DEFAULT_MODELS, MODEL_NAMES, PRESETS, BenchmarkConfig, load_config_file, merge, model_config


def methods_help() -> str:
    """The optimization flags, from the method registry: claim, status, what each acts on."""
    lines = ["optimization methods (config flags; resnet_bk_full turns on every one of the original "
             "benchmark's twelve; 'ours' marks this package's own):"]
    for m in methods.REGISTRY:
        status = "original" if m.original else "ours"
        extra = f"; hyper-parameters: {', '.join(f'{k}={v}' for k, v in m.hyperparameters.items())}" if (
            m.hyperparameters) else ""
        lines.append(f"  {m.flag:22s} claim: {m.claim}; {status}; acts on {m.acts_on}{extra}")
    return "\n".join(lines)


def parse_args(argv=None, *, prog: str = "python -m resnetbk.bench", description: str = "",
               default_output: str = "benchmark_results/wikitext2", models: bool = True,
               ablation_rows: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=methods_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: ~10 min for all three models on 2 CPU cores (default); original: the original "
                        "benchmark's exact configuration; epoch: the original configuration for one epoch (510 "
                        "steps, the ablation's budget where methods can act); smoke: a tiny model trained on 2,000 "
                        "tokens, then the full validation and test evaluation (seconds on tiny data, ~3 min on "
                        "WikiText-2)")
    if models:
        p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                       help=f"comma-separated, from {', '.join(MODEL_NAMES)} (default: the original benchmark's "
                            "three; lstm and mamba are the peers, matched in non-embedding parameters; resnet_bk_selective is the "
                            "recall study's best ResNet-BK variant)")
    if ablation_rows:
        p.add_argument("--rows", help="comma-separated method flags (e.g. use_spectral_z), controls (no_mixer, "
                                      "random_selection, small_dense, ptq_int8) and/or 'all': only these "
                                      "rows besides the baseline (default: every method, then all)")
    p.add_argument("--output-dir", default=default_output)
    p.add_argument("--config", help="JSON or YAML file of BenchmarkConfig fields (unknown keys are an error)")
    p.add_argument("--data-dir", help=f"folder with wiki.{{train,valid,test}}.tokens (else ${wt2.DATA_ENV}, else the hub)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop training after this many optimizer steps per model")
    p.add_argument("--max-train-tokens", type=int, help="train on the first N training tokens (evaluation stays full)")
    p.add_argument("--data-fraction", type=float, help="train on this fraction of the training tokens")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"))
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 42,43,44: every model once per seed (results in "
                                    "seed_<s>/), every metric as mean and standard deviation")
    p.add_argument("--threads", type=int, help="torch and Rust threads per model")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 autocast (the BK-Core stays float32); "
                                                       "an error on a CPU without native bf16 unless --allow-slow-bf16")
    p.add_argument("--allow-slow-bf16", action="store_true",
                   help="run bf16 autocast even on a CPU without native bf16 (about 20x slower matmuls), to measure it")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --output-dir")
    p.add_argument("--allow-noncausal", action="store_true", help="allow training a model that reads future tokens")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files (runs/<model>/tensorboard; needs the tensorboard package)")
    return p.parse_args(argv)


def build_base_config(args: argparse.Namespace):
    """The preset, then ``--config``, then the flags."""
    fields = dict(PRESETS[args.preset])
    if args.config:
        fields = merge(fields, load_config_file(args.config))
    flags = {"epochs": args.epochs, "max_steps": args.max_steps, "max_train_tokens": args.max_train_tokens,
             "data_fraction": args.data_fraction, "device": args.device, "seed": args.seed, "threads": args.threads,
             "data_dir": args.data_dir}
    fields.update({k: v for k, v in flags.items() if v is not None})
    if args.allow_noncausal:
        fields["allow_noncausal"] = True
    if args.allow_slow_bf16:
        fields = merge(fields, {"methods": {"use_mixed_precision": {"allow_slow_bf16": True}}})
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
            config = config.with_methods(use_mixed_precision=True)
        if config.enabled("use_mixed_precision"):  # before the data: a precision this CPU runs slowly is known at once
            methods.BY_FLAG["use_mixed_precision"].check_fast(config)
        configs.append(config)
    return configs


def parse_seeds(args: argparse.Namespace) -> list:
    """``--seeds`` as a list of ints (``[None]``: one run with the configured seed)."""
    if args.seeds is None:
        return [None]
    if args.seed is not None:
        raise ValueError("--seeds and --seed: give one or the other")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers such as 42,43,44, got {args.seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct integers, got {args.seeds!r}")
    return seeds


def run_info(argv: list, started: str, finished: str | None = None) -> dict:
    """What a reader needs to rerun it: the command, the machine, when."""
    return {"command": "python -m resnetbk.bench " + shlex.join(argv), "started": started, "finished": finished,
            "machine": machine()}
