"""Command line: ``python -m resnetbk.bench [options]`` (``__main__`` calls ``main`` here).

Runs the benchmark models (by default the original benchmark's three: transformer_baseline,
resnet_bk_baseline, resnet_bk_full; ``--models`` adds the peers ``lstm`` and ``mamba``) on
WikiText-2 and writes ``<model>_results.json``, ``<model>_steps.csv``, ``comparison_*.json``,
``summary.json``, ``training_curves.png`` and ``report.md`` into ``--output-dir`` (with ``--seeds``,
each seed's runs in ``seed_<s>/`` and the means over seeds at the top). Subcommands: ``ablation``
(each optimization method against the ResNet-BK baseline; ``python -m resnetbk.bench ablation
--help``), ``report DIR`` (rewrite ``report.md`` of a results folder), ``scaling`` (time,
memory and FLOPs per token against the sequence length, measured), ``reproduce`` (PyTorch's
word_language_model example's published runs, trained through this harness), ``step`` (where a
training step's time goes, against the machine's GEMM peak), ``gpu-evidence`` (everything to
measure on a lent GPU, in one budgeted run), ``sweep`` (one method's hyper-parameter chosen on
validation data), ``recall`` (multi-query associative recall: can each model use its context?), ``decay-law``
(the BK-Core's contraction per position beside the measured context reach), ``campaign FILE``
(many runs with seeds and learning-rate sweeps, resumable, one summary) and ``flops`` (the
closed-form FLOPs sweep).
Settings apply in this order: the dataclass defaults, ``--preset``, ``--config FILE``, then the
other flags.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

from .. import data as wt2
from ..jsonfile import write_json_atomic
from ..train import distributed
from ..train.distributed import resolve_device
from . import ablation, campaign, decay_law, flops_sweep, gpu_evidence, recall, report, reproduce, scaling, step_report, sweep
from .options import build_configs, parse_args, parse_seeds, run_info
from .report import RUN_INFO, main_table, write_report
from .runner import Interrupted, WikiText2Benchmark, write_comparisons


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    subcommands = {"flops": flops_sweep.main, "ablation": ablation.main, "report": report.main, "scaling": scaling.main,
                   "reproduce": reproduce.main, "step": step_report.main, "gpu-evidence": gpu_evidence.main,
                   "sweep": sweep.main, "recall": recall.main, "campaign": campaign.main,
                   "decay-law": decay_law.main}
    if argv[:1] and argv[0] in subcommands:
        return subcommands[argv[0]](argv[1:])
    args = parse_args(argv, description=__doc__)
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
