"""Command line: ``python -m resnetbk.bench [options]``.

Runs the benchmark models (by default the original benchmark's three: transformer_baseline,
resnet_bk_baseline, resnet_bk_full; ``--models`` adds the peers ``lstm`` and ``mamba``) on
WikiText-2 and writes ``<model>_results.json``, ``<model>_steps.csv``, ``comparison_*.json``,
``summary.json``, ``training_curves.png`` and ``report.md`` into ``--output-dir`` (with ``--seeds``,
each seed's runs in ``seed_<s>/`` and the means over seeds at the top). Subcommands: ``ablation``
(each optimization method against the ResNet-BK baseline; ``python -m resnetbk.bench ablation
--help``), ``report DIR`` (rewrite ``report.md`` of a results folder), ``scaling`` (time,
memory and FLOPs per token against the sequence length, measured), ``reproduce`` (PyTorch's
word_language_model example's published runs, trained through this harness) and ``flops`` (the
closed-form FLOPs sweep). Settings apply in this order: the dataclass defaults, ``--preset``, ``--config
FILE``, then the other flags.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from .. import data as wt2
from .. import methods
from . import distributed
from .config import DEFAULT_MODELS, MODEL_NAMES, PRESETS, BenchmarkConfig, load_config_file, model_config
from .report import RUN_INFO, main_table, write_report
from .results import write_json_atomic
from .runner import Interrupted, WikiText2Benchmark, write_comparisons
from .train import resolve_device


def methods_help() -> str:
    """The optimization flags, from the method registry: claim, status, what each acts on."""
    lines = ["optimization methods (config flags; resnet_bk_full turns on every implemented one of the original "
             "benchmark's twelve; 'ours' marks this package's own):"]
    for m in methods.REGISTRY:
        status = ("implemented" if m.implemented else "not implemented yet") + ("" if m.original else ", ours")
        extra = f"; hyper-parameters: {', '.join(f'{k}={v}' for k, v in m.hyperparameters.items())}" if (
            m.hyperparameters) else ""
        lines.append(f"  {m.flag:22s} claim: {m.claim}; {status}; acts on {m.acts_on}{extra}")
    return "\n".join(lines)


def parse_args(argv=None, *, prog: str = "python -m resnetbk.bench", description: str = __doc__,
               default_output: str = "benchmark_results/wikitext2", models: bool = True,
               ablation_rows: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=methods_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: ~10 min for all three models on 2 CPU cores (default); original: the original "
                        "benchmark's exact configuration; smoke: a tiny model trained on 2,000 tokens, then the "
                        "full validation and test evaluation (seconds on tiny data, ~3 min on WikiText-2)")
    if models:
        p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                       help=f"comma-separated, from {', '.join(MODEL_NAMES)} (default: the original benchmark's "
                            "three; lstm and mamba are the peers, matched in non-embedding parameters)")
    if ablation_rows:
        p.add_argument("--rows", help="comma-separated method flags (e.g. use_spectral_z) and/or 'all': only these "
                                      "rows besides the baseline (default: every implemented method, then all)")
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
        fields.update(load_config_file(args.config))
    flags = {"epochs": args.epochs, "max_steps": args.max_steps, "max_train_tokens": args.max_train_tokens,
             "data_fraction": args.data_fraction, "device": args.device, "seed": args.seed, "threads": args.threads,
             "data_dir": args.data_dir}
    fields.update({k: v for k, v in flags.items() if v is not None})
    if args.allow_noncausal:
        fields["allow_noncausal"] = True
    if args.allow_slow_bf16:
        fields["allow_slow_bf16"] = True
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
        if config.use_mixed_precision:  # before the data: a precision this CPU runs slowly is known at once
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
    import os
    import platform
    import shlex

    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"command": "python -m resnetbk.bench " + shlex.join(argv), "started": started, "finished": finished,
            "machine": f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    subcommands = {"flops": "flops_sweep", "ablation": "ablation", "report": "report", "scaling": "scaling",
                   "reproduce": "reproduce"}
    if argv[:1] and argv[0] in subcommands:
        import importlib

        return importlib.import_module(f".{subcommands[argv[0]]}", __package__).main(argv[1:])
    args = parse_args(argv)
    try:
        seeds = parse_seeds(args)
        configs = build_configs(args)
        for config in configs:  # before the data: a missing GPU is known at once
            resolve_device(config.device)
        corpus = wt2.load_corpus(configs[0].data_dir)
    except (ValueError, NotImplementedError, wt2.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    main_rank = distributed.is_main_process()  # under torchrun, rank 0 speaks
    if main_rank:
        print(f"Data: {corpus.describe()}")
    output = Path(args.output_dir)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        for seed in seeds:
            folder = output if seed is None else output / f"seed_{seed}"
            bench = WikiText2Benchmark(folder, resume=args.resume, quiet=args.quiet, tensorboard=args.tensorboard)
            bench.run_all([c if seed is None else c.replace(seed=seed) for c in configs])
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130  # the shell's code for a SIGINT
    except KeyboardInterrupt:  # between models (comparisons, figure): every finished model is saved
        print(f"interrupted; finished models' results are in {output}/ (rerun with --resume to go on)", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if any(output.glob("**/runs/*/checkpoint.pt")):
            print(f"Completed epochs are checkpointed under {output}/; rerun with --resume to continue.",
                  file=sys.stderr)
        return 1
    if not main_rank:
        return 0
    names = [c.model_name for c in configs]
    if len(seeds) > 1:
        write_comparisons(output, names)
    info = run_info(argv, started, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(output / RUN_INFO, info)
    write_report(output)
    print()
    print(main_table(output))
    print(f"\nResults in {output}/ (report.md, *_results.json, *_steps.csv, comparison_*.json, training_curves.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
