"""``python -m resnetbk.bench recall``: can each model use its context? Multi-query associative
recall (MQAR, ``resnetbk.recall.mqar``) beside perplexity.

Every model of the harness at the same width and depth (default d 64, 2 layers, no dropout): the
Transformer, the LSTM, Mamba, the ResNet-BK baseline (one BK-Core channel, z = i), ResNet-BK
with 8 channels, ResNet-BK with learnt spectral z (8 channels, ``methods.spectral_z``) and the
``no_mixer`` control (ResNet-BK without its BK-Core: a position-wise model, which sees no value
and can only guess among all of them). The variants of the BK-Core made to remember
(``models.bk_variants``, issue 23): ``resnet_bk_selective_8ch`` (8 channels, input-dependent
couplings), ``resnet_bk_gated`` (8 channels, a multiplicative read-out),
``resnet_bk_selective_gated`` (8 channels, both), ``resnet_bk_selective_gated_64ch`` (both,
64 channels: one per feature; couplings up to 32) and ``resnet_bk_selective_gated_64ch_b128``
(the same with couplings up to 128), ``resnet_bk_selective_read_64ch_b128`` (the query weighs
each channel before the projection), ``resnet_bk_outer_64ch_b128`` (the same state written as
8 values x 8 keys: an outer product after a short convolution), ``resnet_bk_outer_64ch_16keys``
(4 values x 16 keys), ``resnet_bk_outer_512ch`` (a state eight times wider: 32 values x 16
keys), ``resnet_bk_real_64ch`` and ``resnet_bk_real_outer_64ch`` (the resolvent below the
spectrum, so what a channel keeps decays without turning, with the plain or the outer write),
``resnet_bk_real_tied_outer_64ch`` (the same outer write, each write scaled by what its position
forgets: Mamba's discretised step).
Each model learns every cell of the grid at once (Zoology's mixture) with the recipe of
``recall.training``, at each learning rate of ``--lrs``
for the first seed; the learning rate with the best validation accuracy is then run for the
other seeds. Test accuracy is reported as mean +- std over the seeds, overall, per cell and by
key-to-query distance, with the causality probe of every trained model.

Grids (``--grid``): ``default`` (vocabulary 256, sequence 64, 4/8 pairs, 10,000 steps a run;
``--seq-lens 64,128`` adds the length axis) and ``zoology`` (Zoology's: vocabulary 8,192,
sequence 64/128/256, 4/8/16 pairs; hours on a CPU). Writes ``recall.json``, ``recall.md`` and
``recall.png`` into ``--output-dir`` (default ``benchmark_results/recall``), every run under
``runs/<model>/``; ``--resume`` keeps every finished run and resumes an interrupted one from its
last finished epoch (``runs/<model>/lr<rate>_seed<seed>.ckpt``, removed when the run finishes).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import threads
from ..jsonfile import write_json_atomic
from ..measure.causality import probe_causality
from ..measure.environment import environment, machine
from ..methods.spectral_z import SpectralShift
from ..models import ModelOptions, build_model
from ..recall.mqar import MQARCell, generate
from ..recall.training import RECIPE_VERSION, RecallTraining, evaluate, overall_accuracy, train_recall
from ..validate import check_int
from .config import RESNET_BK_SELECTIVE
from .summary import mean_std

#: The harness's models: the architecture and what changes in it.
MODELS = {  # in the order they run (the slowest per step, Mamba, last)
    "transformer": dict(architecture="transformer"),
    "resnet_bk": dict(architecture="resnet_bk"),
    "resnet_bk_8ch": dict(architecture="resnet_bk", bk_channels=8),
    "resnet_bk_spectral_z": dict(architecture="resnet_bk", bk_channels=8),  # + SpectralShift (below)
    "resnet_bk_selective_8ch": dict(architecture="resnet_bk", bk_channels=8, bk_coupling="selective"),
    "resnet_bk_gated": dict(architecture="resnet_bk", bk_channels=8, bk_readout="gated"),
    "resnet_bk_selective_gated": dict(architecture="resnet_bk", bk_channels=8, bk_coupling="selective",
                                      bk_readout="gated"),
    "resnet_bk_selective_gated_64ch": dict(architecture="resnet_bk", bk_channels=64, bk_coupling="selective",
                                           bk_readout="gated"),
    # The couplings' bound decides how long a channel can hold: at b the best retention is about
    # 1 - 1/b per position (half-life ~b ln 2: 22 positions at 32, shorter than sequence 64's
    # longest key-to-query distances; 89 at 128, longer).
    "resnet_bk_selective_gated_64ch_b128": dict(architecture="resnet_bk", **RESNET_BK_SELECTIVE),  # bench's resnet_bk_selective
    # The query weighs each channel before the projection (Mamba's input-dependent C).
    "resnet_bk_selective_read_64ch_b128": dict(architecture="resnet_bk", bk_channels=64, bk_coupling="selective",
                                               bk_readout="selective", bk_coupling_max=128.0),
    # The same state (64 channels) written as 8 values x 8 keys (an outer product after a short
    # convolution, Mamba's B_t x_t): can a channel now hold which value came with which key?
    "resnet_bk_outer_64ch_b128": dict(architecture="resnet_bk", bk_channels=64, bk_coupling="selective",
                                      bk_readout="selective", bk_coupling_max=128.0, bk_write="outer", bk_write_keys=8),
    # The same state as 16 keys x 4 values: linear attention's keys need room to stay apart.
    "resnet_bk_outer_64ch_16keys": dict(architecture="resnet_bk", bk_channels=64, bk_coupling="selective",
                                        bk_readout="selective", bk_coupling_max=128.0, bk_write="outer",
                                        bk_write_keys=16),
    # The resolvent below the spectrum (a real, positive decay: what a channel keeps no longer turns
    # with the tokens in between; models.bk_variants), with the plain and with the outer write.
    # b_max (here the scale of a write): 1/4, where the initial features vary by about 2% over the positions.
    "resnet_bk_real_64ch": dict(architecture="resnet_bk", bk_channels=64, bk_coupling="selective_real",
                                bk_readout="selective", bk_coupling_max=0.25),
    "resnet_bk_real_outer_64ch": dict(architecture="resnet_bk", bk_channels=64, bk_coupling="selective_real",
                                      bk_readout="selective", bk_coupling_max=0.25, bk_write="outer", bk_write_keys=8),
    # The same with each write scaled by what its position forgets (Mamba's discretised step): a
    # channel that keeps its past writes nothing, so a held value is not worn away by later writes.
    "resnet_bk_real_tied_outer_64ch": dict(architecture="resnet_bk", bk_channels=64, bk_coupling="selective_real_tied",
                                           bk_readout="selective", bk_coupling_max=0.25, bk_write="outer",
                                           bk_write_keys=8),
    # A state eight times wider (32 values x 16 keys): is the 64-channel state too small to hold
    # the pairs apart (Zoology: a recurrence's recall grows with its state)?
    "resnet_bk_outer_512ch": dict(architecture="resnet_bk", bk_channels=512, bk_coupling="selective",
                                  bk_readout="selective", bk_coupling_max=128.0, bk_write="outer", bk_write_keys=16),
    "no_mixer": dict(architecture="resnet_bk", no_mixer=True),
    "lstm": dict(architecture="lstm"),
    "mamba": dict(architecture="mamba"),
}
#: ``methods.spectral_z``'s defaults: eta log-spaced over [1e-3, 1] across the 8 channels.
SPECTRAL_ETA = (1e-3, 1.0)

GRIDS = {
    # Sized from measured runs of the Transformer (docs/recall.md, "The budget"): it learns MQAR
    # only after a plateau of ~3,000 steps, and not at all within 5,000 steps once sequence 128
    # is in the mixture; 10,000 steps on sequence 64 (4 and 8 pairs).
    "default": dict(vocab_size=256, seq_lens=(64,), pairs=(4, 8), train_examples=20000, valid_examples=250,
                    test_examples=500, epochs=16),
    "zoology": dict(vocab_size=8192, seq_lens=(64, 128, 256), pairs=(4, 8, 16), train_examples=20000,
                    valid_examples=500, test_examples=1000, epochs=32),
}


@dataclass(frozen=True)
class RecallConfig:
    grid: str = "default"
    vocab_size: int = 256
    seq_lens: tuple = (64,)
    pairs: tuple = (4, 8)
    power_a: float = 0.01
    train_examples: int = 20000  # per cell
    valid_examples: int = 250  # per cell: the learning rate is chosen on these
    test_examples: int = 500  # per cell: the reported accuracy
    d_model: int = 64
    n_layers: int = 2
    epochs: int = 16
    batch_size: int = 64
    lrs: tuple = (3e-4, 1e-3, 3e-3)
    seeds: tuple = (0,)
    models: tuple = tuple(MODELS)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "train_examples", "valid_examples", "test_examples", "d_model", "n_layers",
                     "epochs", "batch_size"):
            check_int(self, name, low=1)
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"--models: expected names from {', '.join(MODELS)}, got {', '.join(unknown) or 'none'}")
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise ValueError(f"--lrs: expected positive learning rates such as 3e-4,1e-3,3e-3, got {self.lrs}")
        if len({f"{lr:g}" for lr in self.lrs}) != len(self.lrs):
            raise ValueError(f"--lrs: expected distinct learning rates, got {', '.join(f'{lr:g}' for lr in self.lrs)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"--seeds: expected distinct non-negative integers, got {self.seeds}")
        if not self.cells():
            raise ValueError(f"--seq-lens/--pairs: no cell fits (a cell of P pairs needs a sequence of at least 4P): "
                             f"seq_lens {self.seq_lens}, pairs {self.pairs}")

    def cells(self) -> list:
        """Every (sequence length, pairs) that fits (4 x pairs <= sequence length)."""
        return [MQARCell(n, p, self.vocab_size, self.power_a)
                for n, p in itertools.product(self.seq_lens, self.pairs) if 4 * p <= n]

    def task(self) -> dict:
        """What decides a run (besides its model, learning rate and seed): a finished run is kept
        by ``--resume`` only when this matches."""
        data = dataclasses.asdict(self)
        for key in ("grid", "lrs", "seeds", "models"):
            data.pop(key)
        data["seq_lens"], data["pairs"] = list(self.seq_lens), list(self.pairs)
        data["recipe_version"] = RECIPE_VERSION
        return data


def build_recall_model(name: str, config: RecallConfig):
    """One harness model at the config's width and depth (no dropout)."""
    options = ModelOptions(vocab_size=config.vocab_size, d_model=config.d_model, n_layers=config.n_layers,
                           n_seq=max(config.seq_lens), dropout=0.0, **MODELS[name])
    model = build_model(options)
    if name == "resnet_bk_spectral_z":
        for block in model.blocks:
            block.bk.shift = SpectralShift(block.bk.channels, *SPECTRAL_ETA)
    return model


def _datasets(config: RecallConfig, seed: int) -> tuple:
    """The train, validation and test sets of every cell for ``seed`` (distinct seeds per split and cell)."""
    splits = []
    for split, examples in enumerate((config.train_examples, config.valid_examples, config.test_examples)):
        splits.append([generate(cell, examples, seed=10_000 * seed + 100 * index + split)
                       for index, cell in enumerate(config.cells())])
    return tuple(splits)


def run_path(output: Path, model: str, lr: float, seed: int) -> Path:
    return output / "runs" / model / f"lr{lr:g}_seed{seed}.json"


def checkpoint_path(output: Path, model: str, lr: float, seed: int) -> Path:
    """Where an unfinished run keeps its state after every epoch (removed once it finishes)."""
    return run_path(output, model, lr, seed).with_suffix(".ckpt")


def run_one(config: RecallConfig, name: str, lr: float, seed: int, log=None, checkpoint: Path | None = None) -> dict:
    """Train one model at one learning rate and seed; its scores, history and causality. With
    ``checkpoint``, an interrupted run goes on from its last finished epoch."""
    torch.manual_seed(seed)
    model = build_recall_model(name, config)
    train, valid, test = _datasets(config, seed)
    settings = RecallTraining(lr=lr, epochs=config.epochs, batch_size=config.batch_size, seed=seed)
    identity = {"task": config.task(), "model": name, "definition": MODELS[name], "lr": lr, "seed": seed}
    trained = train_recall(model, train, valid, settings, log=log, checkpoint=checkpoint, identity=identity)
    scores = [evaluate(model, part) for part in test]
    probe = probe_causality(model, config.vocab_size, max(config.seq_lens))
    return {"model": name, "lr": lr, "seed": seed, "task": config.task(), "training": dataclasses.asdict(settings),
            **trained, "valid_accuracy": trained["best_valid_accuracy"], "test_accuracy": overall_accuracy(scores),
            "test_by_cell": scores, "parameters": sum(p.numel() for p in model.parameters()),
            "causal": probe.causal, "causality_probe": probe.summary(), "git_revision": environment()[1],
            "threads": torch.get_num_threads()}


def _finished(path: Path, config: RecallConfig) -> dict | None:
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return run if run.get("task") == config.task() else None


def sweep_runs(config: RecallConfig) -> list:
    """The first phase: every model at every learning rate, at the first seed."""
    return [(m, lr, config.seeds[0]) for m in config.models for lr in config.lrs]


def seed_runs(config: RecallConfig, chosen: dict) -> list:
    """The second phase: each model at its chosen learning rate (``chosen``, by model) at the other seeds."""
    return [(m, chosen[m], s) for m in config.models if m in chosen for s in config.seeds[1:]]


#: The sweep goes one step past an edge only when that edge wins by at least this much validation
#: accuracy (absolute): a clear trend, not the noise of a model that learnt nothing at any rate.
EDGE_MARGIN = 0.01


def _first_seed_runs(runs: list, config: RecallConfig, name: str) -> dict:
    return {r["lr"]: r for r in runs if r["model"] == name and r["seed"] == config.seeds[0]}


def edge_rate(runs: list, config: RecallConfig, name: str) -> float | None:
    """The one extra rate of ``name``'s sweep, or None: when the best of the swept rates (at the
    first seed) is the largest or the smallest by at least ``EDGE_MARGIN``, the next rate past
    that edge (the same ratio as the last step), so that a winning edge is not the answer of a
    sweep that stopped too soon."""
    lrs = sorted(config.lrs)
    done = _first_seed_runs(runs, config, name)
    if len(lrs) < 2 or any(lr not in done for lr in lrs):
        return None
    accuracy = {lr: _finite(done[lr]["valid_accuracy"]) for lr in lrs}
    for edge, beyond in ((lrs[-1], lrs[-1] ** 2 / lrs[-2]), (lrs[0], lrs[0] ** 2 / lrs[1])):
        if all(accuracy[edge] >= accuracy[lr] + EDGE_MARGIN for lr in lrs if lr != edge):
            return float(f"{beyond:.3g}")
    return None


def choose_lr(runs: list, config: RecallConfig) -> dict:
    """Per model, the learning rate with the best validation accuracy at the first seed (ties: the
    smaller rate), once its sweep is complete (with its edge rate, where one is called for)."""
    chosen = {}
    for name in config.models:
        done = _first_seed_runs(runs, config, name)
        if any(lr not in done for lr in config.lrs):
            continue
        edge = edge_rate(runs, config, name)
        if edge is not None and edge not in done:
            continue
        best = max(done.values(), key=lambda r: (_finite(r["valid_accuracy"]), -r["lr"]))
        chosen[name] = best["lr"]
    return chosen


def _finite(x: float) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -1.0


def walk_grid(config: RecallConfig, visit) -> list:
    """The grid's runs in order, each ``(model, lr, seed)`` handed to ``visit`` (its run, or None
    where there is none): per model its sweep, then its edge rate where one is called for (the
    announcement printed only when it is), then every model at its chosen rate at the other seeds.
    Returns the runs ``visit`` gave."""
    runs = []

    def add(key) -> None:
        run = visit(key)
        if run is not None:
            runs.append(run)

    for name in config.models:
        for key in [k for k in sweep_runs(config) if k[0] == name]:
            add(key)
        edge = edge_rate(runs, config, name)
        if edge is not None:  # a sweep whose edge wins goes one rate further
            add((name, edge, config.seeds[0]))
    for key in seed_runs(config, choose_lr(runs, config)):
        add(key)
    return runs


def run_all(config: RecallConfig, output: Path, *, resume: bool, quiet: bool) -> list:
    """Every run, the sweep first (finished runs kept with ``resume``), with progress and an
    estimate of the time left."""
    clock = {"spent": 0.0, "trained": 0, "visited": 0,
             "total": len(config.models) * (len(config.lrs) + len(config.seeds) - 1)}

    def visit(key) -> dict:
        name, lr, seed = key
        if seed == config.seeds[0] and lr not in config.lrs:
            clock["total"] += 1
            print(f"{name}: the best rate is at the sweep's edge; adding lr {lr:g}", flush=True)
        clock["visited"] += 1
        return _run_or_keep(config, output, key, f"[{clock['visited']}/{clock['total']}]", resume, quiet, clock,
                            clock["total"] - clock["visited"] + 1)

    return walk_grid(config, visit)


def finished_runs(config: RecallConfig, output: Path) -> tuple:
    """``(runs, missing)``: the grid's finished runs in ``output`` (the sweep, then the seeds at
    the chosen rates) and the ``(model, lr, seed)`` of those not run yet; nothing is trained."""
    missing = []

    def visit(key) -> dict | None:
        run = _finished(run_path(output, *key), config)
        if run is None:
            missing.append(key)
        return run

    runs = walk_grid(config, visit)
    chosen = choose_lr(runs, config)
    missing += [(m, None, s) for m in config.models if m not in chosen for s in config.seeds[1:]]
    return runs, missing


def _run_or_keep(config, output, key, tag, resume, quiet, clock, left_runs) -> dict:
    name, lr, seed = key
    path = run_path(output, name, lr, seed)
    kept = _finished(path, config) if resume else None
    checkpoint = checkpoint_path(output, name, lr, seed)
    if kept is not None:
        print(f"{tag} {name} lr {lr:g} seed {seed}: finished earlier, kept", flush=True)
        checkpoint.unlink(missing_ok=True)  # left by a stop between the results and the clean-up
        return kept
    left = f"; about {clock['spent'] / clock['trained'] * left_runs / 60:.0f} min left" if clock["trained"] else ""
    print(f"{tag} {name} lr {lr:g} seed {seed}: training{left}", flush=True)
    started = time.perf_counter()
    if not resume:
        checkpoint.unlink(missing_ok=True)  # without --resume every run starts from its first step
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    run = run_one(config, name, lr, seed, log=None if quiet else (lambda line: print("    " + line, flush=True)),
                  checkpoint=checkpoint)
    clock["spent"] += time.perf_counter() - started
    clock["trained"] += 1
    write_json_atomic(path, run)
    checkpoint.unlink(missing_ok=True)
    checkpoint.with_name(checkpoint.name + ".partial").unlink(missing_ok=True)
    print(f"    valid {run['valid_accuracy']:.3f}, test {run['test_accuracy']:.3f} after {run['epochs_run']} "
          f"epoch(s), {run['training_time_s']:.0f} s; {'causal' if run['causal'] else 'NOT CAUSAL'}", flush=True)
    return run


def summarise(config: RecallConfig, runs: list) -> dict:
    """Per model: the learning-rate sweep, the chosen rate, and test accuracy over the seeds at it
    (overall, per cell, by distance), the parameters and causality."""
    chosen = choose_lr(runs, config)
    models = {}
    for name in config.models:
        sweep = {f"{r['lr']:g}": r["valid_accuracy"] for r in runs if r["model"] == name and r["seed"] == config.seeds[0]}
        at = [r for r in runs if r["model"] == name and r["lr"] == chosen.get(name)]
        cells, distances = {}, {}
        for run in at:
            for score in run["test_by_cell"]:
                cells.setdefault(score["cell"], []).append(score["accuracy"])
                for bucket, c in score["by_distance"].items():
                    distances.setdefault(bucket, []).append(c)
        by_distance = {}
        for bucket, parts in sorted(distances.items(), key=lambda kv: int(kv[0])):
            by_distance[bucket] = sum(p["correct"] for p in parts) / max(1, sum(p["queries"] for p in parts))
        models[name] = {
            "lr_sweep_valid_accuracy": sweep, "chosen_lr": chosen.get(name),
            "test_accuracy": mean_std([r["test_accuracy"] for r in at]),
            "valid_accuracy": mean_std([r["valid_accuracy"] for r in at]),
            "test_by_cell": {cell: mean_std(v) for cell, v in cells.items()},
            "test_by_distance": by_distance,
            "seeds": [r["seed"] for r in at], "parameters": at[0]["parameters"] if at else None,
            "causal": all(r["causal"] for r in at) if at else None,
            "epochs_run": [r["epochs_run"] for r in at], "training_time_s": [r["training_time_s"] for r in at],
        }
    return {"task": config.task(), "grid": config.grid, "lrs": list(config.lrs), "seeds": list(config.seeds),
            "cells": [c.name for c in config.cells()], "models": models,
            "selection": "learning rate: best validation accuracy at the first seed; the test accuracy is over "
                         "every seed at that rate"}


def _pct(stat: dict) -> str:
    if not stat or not stat["n"]:
        return "-"
    return f"{100 * stat['mean']:.1f}" + (f" +- {100 * stat['std']:.1f}" if stat["n"] > 1 else "")


def _partial_note(missing: list) -> list:
    """The lines that say, model by model, which runs are not finished (none: a complete grid)."""
    if not missing:
        return []
    by_model = {}
    for run in missing:
        lr = "its chosen rate" if run["lr"] is None else f"lr {run['lr']:g}"
        by_model.setdefault(run["model"], []).append(f"{lr} seed {run['seed']}")
    lines = [f"**Partial**: {len(missing)} run(s) not finished yet (`missing_runs` in recall.json). A model without "
             "its whole learning-rate sweep has no chosen rate and no test accuracy here; one without every seed "
             "reports the seeds it has (the `seeds` column).", ""]
    lines += [f"- {name}: {', '.join(runs)}" for name, runs in by_model.items()]
    return lines + [""]


def format_markdown(doc: dict) -> str:
    cells = doc["cells"]
    note = _partial_note(doc.get("missing_runs") or [])
    over = "mean +- std over the seeds each row has (its `seeds`) of " if len(doc["seeds"]) > 1 else "seed "
    lines = [f"# MQAR recall ({doc['grid']} grid)", "", *note,
             f"Test accuracy at the query positions, % ({over}{', '.join(map(str, doc['seeds']))}); {doc['selection']}.", "",
             "| model | overall | " + " | ".join(cells) + " | lr | seeds | valid accuracy by lr | parameters | causal |",
             "|---" * (len(cells) + 7) + "|"]
    for name, m in doc["models"].items():
        sweep = ", ".join(f"{lr}: {100 * acc:.1f}" for lr, acc in m["lr_sweep_valid_accuracy"].items())
        lr = "-" if m["chosen_lr"] is None else f"{m['chosen_lr']:g}"
        lines.append(f"| {name} | {_pct(m['test_accuracy'])} | "
                     + " | ".join(_pct(m["test_by_cell"].get(c)) for c in cells)
                     + f" | {lr} | {', '.join(map(str, m['seeds'])) or '-'} | {sweep} | {m['parameters'] or '-'} | {m['causal']} |")
    buckets = sorted({int(b) for m in doc["models"].values() for b in m["test_by_distance"]})
    if buckets:
        lines += ["", "Test accuracy by key-to-query distance (all cells; bucket [d, 2d)), %:", "",
                  "| model | " + " | ".join(f"{b}-{2 * b - 1}" for b in buckets) + " |",
                  "|---" * (len(buckets) + 1) + "|"]
        for name, m in doc["models"].items():
            row = [m["test_by_distance"].get(str(b)) for b in buckets]
            lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, config: RecallConfig, path: Path) -> None:
    """Accuracy against the number of pairs, one panel per sequence length, a line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq_lens = sorted(config.seq_lens)
    fig, axes = plt.subplots(1, len(seq_lens), figsize=(4.2 * len(seq_lens), 3.6), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], seq_lens):
        for name, m in doc["models"].items():
            pairs = [p for p in sorted(config.pairs) if f"seq{n}-pairs{p}" in m["test_by_cell"]]
            stats = [m["test_by_cell"][f"seq{n}-pairs{p}"] for p in pairs]
            if pairs:
                ax.errorbar(pairs, [100 * s["mean"] for s in stats], yerr=[100 * (s["std"] or 0.0) for s in stats],
                            marker="o", capsize=3, label=name)
        ax.set_title(f"sequence {n}")
        ax.set_xlabel("key-value pairs")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy at queries (%)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"MQAR, vocabulary {config.vocab_size}, d {config.d_model}, {config.n_layers} layers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _floats(text: str, name: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated numbers, got {text!r}") from None


def _ints(text: str, name: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated integers, got {text!r}") from None


def parse_config(argv=None) -> tuple:
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench recall", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), default="default")
    p.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)} (default: all)")
    p.add_argument("--lrs", help="comma-separated learning rates swept at the first seed (default 3e-4,1e-3,3e-3)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0); the chosen learning rate runs at each")
    p.add_argument("--seq-lens", help="comma-separated sequence lengths (the grid's by default)")
    p.add_argument("--pairs", help="comma-separated numbers of key-value pairs (the grid's by default)")
    for name in ("vocab-size", "train-examples", "valid-examples", "test-examples", "epochs", "batch-size",
                 "d-model", "n-layers"):
        p.add_argument(f"--{name}", type=int, help="per cell" if name.endswith("examples") else None)
    p.add_argument("--threads", type=int, help="torch and Rust threads (default: torch's)")
    p.add_argument("--output-dir", default="benchmark_results/recall")
    p.add_argument("--resume", action="store_true",
                   help="keep every finished run in --output-dir and resume an interrupted one from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--report", action="store_true",
                   help="train nothing: write recall.json/md/png from the finished runs in --output-dir (a partial "
                        "grid lists the runs still missing)")
    args = p.parse_args(argv)
    fields = {"grid": args.grid, **GRIDS[args.grid]}
    if args.models:
        fields["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    for name, parse in (("lrs", _floats), ("seeds", _ints), ("seq_lens", _ints), ("pairs", _ints)):
        text = getattr(args, name)
        if text is not None:
            fields[name] = parse(text, name.replace("_", "-"))
    for name in ("vocab_size", "train_examples", "valid_examples", "test_examples", "epochs", "batch_size",
                 "d_model", "n_layers"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected a positive integer, got {args.threads}")
    return RecallConfig(**fields), args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, args = parse_config(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads is None:
        return _main(config, args, argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # torch's and the Rust kernels' (as the benchmark's --threads)
    threads.set_num_threads(args.threads)
    try:
        return _main(config, args, argv)
    finally:  # a caller in the same process (the tests) gets its own count back
        torch.set_num_threads(before)
        threads.set_num_threads(None)


def _main(config: RecallConfig, args, argv: list) -> int:
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"MQAR recall, {args.grid} grid: {len(config.cells())} cells ({', '.join(c.name for c in config.cells())}), "
          f"vocabulary {config.vocab_size}; models {', '.join(config.models)}; learning rates "
          f"{', '.join(f'{lr:g}' for lr in config.lrs)}; seeds {', '.join(map(str, config.seeds))}", flush=True)
    missing = []
    try:
        if args.report:
            runs, missing = finished_runs(config, output)
        else:
            runs = run_all(config, output, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; every finished run and the last finished epoch of the one in progress are in {output}/runs "
              f"(rerun with --resume to go on)", file=sys.stderr)
        return 130
    doc = summarise(config, runs)
    doc["complete"] = not missing
    doc["missing_runs"] = [{"model": m, "lr": lr, "seed": seed} for m, lr, seed in missing]
    versions, revision = environment()
    doc.update({"command": "python -m resnetbk.bench recall " + " ".join(argv), "started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                "threads": torch.get_num_threads(), "versions": versions, "git_revision": revision})
    write_json_atomic(output / "recall.json", doc)
    (output / "recall.md").write_text(format_markdown(doc))
    plot(doc, config, output / "recall.png")
    print(format_markdown(doc))
    print(f"Results in {output}/ (recall.json, recall.md, recall.png, runs/)")
    return 0
