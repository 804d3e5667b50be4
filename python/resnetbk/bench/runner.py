"""``WikiText2Benchmark``: runs models (each in its own process on CPU, so its peak memory is its
own), writes their results, the pairwise comparisons and the training-curve figure."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

import torch

from .. import methods as method_registry
from ..jsonfile import write_json_atomic
from ..models import ModelOptions
from ..train import distributed
from ..train.checkpoint import CHECKPOINT
from ..train.distributed import resolve_device
from ..train.results import BenchmarkResults
from . import plots
from .compare import compare_results
from .config import BenchmarkConfig
from .recipe import run_and_save
from .summary import compare_summaries, load_runs, summarize


class Interrupted(Exception):
    """Training was interrupted (Ctrl-C, SIGINT); says how far the model got and how to go on."""

    def __init__(self, model_name: str, epochs_done: Optional[int]):
        self.model_name, self.epochs_done = model_name, epochs_done
        super().__init__(str(self))

    def __reduce__(self):  # raised in a worker process, re-raised in the parent as itself
        return type(self), (self.model_name, self.epochs_done)

    def __str__(self) -> str:
        if self.epochs_done:
            return (f"{self.model_name}: interrupted after epoch {self.epochs_done} (checkpointed); "
                    "rerun with --resume to continue from there")
        return f"{self.model_name}: interrupted before its first epoch finished (no checkpoint yet); rerun to start again"


def checkpointed_epochs(run_dir: Path) -> Optional[int]:
    """The epochs the checkpoint in ``run_dir`` holds (None: no readable checkpoint)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["progress"]["epoch"])
    except Exception:  # a damaged checkpoint: --resume will say what is wrong
        return None


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within it, a SIGTERM (``kill``, a scheduler's or a session's end) is raised as a
    KeyboardInterrupt, so the parent stops its worker process instead of leaving it training
    alone, an orphan that would race the next invocation for the same run. The handler before
    is restored after (only the main thread can set one: elsewhere nothing changes)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _stop_worker(process, grace_s: float = 30.0) -> None:
    """Stop a worker cleanly: SIGINT first (it unwinds, its finally blocks and the resource
    tracker's clean-up run), then SIGTERM, then SIGKILL."""
    process.join(5)  # a Ctrl-C at the terminal reached the worker too: let it finish unwinding
    if process.is_alive():
        try:
            os.kill(process.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        process.join(grace_s)
    if process.is_alive():
        process.terminate()
        process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


def what_runs(config: dict) -> dict:
    """A config (as a results file holds it) reduced to what decides the run: only the methods
    that are on (the settings of one that is off do not act; a method added since is off in an
    older file), a field a newer version added at its default (what the older run did), and the
    data folder as an absolute path (the same corpus named from another folder is the same run).
    Which form of each method ran is compared apart (``methods[flag]["version"]`` of the results)."""
    data = json.loads(json.dumps(config))
    if data.get("data_dir"):
        data["data_dir"] = str(Path(data["data_dir"]).resolve())
    data["model"] = {**json.loads(json.dumps(dataclasses.asdict(ModelOptions()))), **data.get("model", {})}
    data["model"].pop("vocab_size", None)
    methods_now = {}
    for flag, settings in data.get("methods", {}).items():
        if not settings.get("enabled"):
            continue
        defaults = {}
        if flag in method_registry.BY_FLAG:
            defaults = json.loads(json.dumps(dataclasses.asdict(method_registry.BY_FLAG[flag].Settings())))
        methods_now[flag] = {**defaults, **settings}
    data["methods"] = methods_now
    return data


def finished_results(config: BenchmarkConfig, result_path: Path, ignore: tuple = ()) -> tuple:
    """``(results, None)`` when ``result_path`` holds a finished run of what ``config`` runs
    (the fields in ``ignore`` left out of the comparison); ``(None, why)`` when it holds another
    one (``why`` says what differs); ``(None, None)`` when there is no readable results file."""
    result_path = Path(result_path)
    if not result_path.is_file():
        return None, None
    try:
        kept = BenchmarkResults.load(result_path)
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    kept_runs, wanted = what_runs(kept.config), what_runs(config.to_dict())
    for name in ignore:
        kept_runs.pop(name, None)
        wanted.pop(name, None)
    if kept_runs != wanted:
        differ = sorted(k for k in set(kept_runs) | set(wanted) if kept_runs.get(k) != wanted.get(k))
        return None, f"holds another config's results (differing: {', '.join(differ)})"
    older = [m.flag for m in method_registry.enabled(config)
             if kept.methods.get(m.flag, {}).get("version", 1) != m.version]
    if older:
        return None, f"ran an older form of {', '.join(older)}"
    return kept, None


def _worker(config, data_dir, run_dir, result_path, error_path, resume, quiet, tensorboard):
    try:
        run_and_save(config, data_dir, run_dir, result_path, resume, quiet, tensorboard)
    except BaseException as exc:  # the parent re-raises with this text
        Path(error_path).write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        raise SystemExit(1) from exc


class WikiText2Benchmark:
    """Runs benchmark models and keeps their results under ``output_dir``."""

    def __init__(self, output_dir: str | Path = "benchmark_results/wikitext2", *, resume: bool = False,
                 quiet: bool = False, separate_process: bool | None = None, tensorboard: bool = False):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.quiet = quiet
        self.separate_process = separate_process
        self.tensorboard = tensorboard

    def results_path(self, model_name: str) -> Path:
        return self.output_dir / f"{model_name}_results.json"

    def run_benchmark(self, config: BenchmarkConfig) -> BenchmarkResults:
        """Train and evaluate one model; write ``<model_name>_results.json``."""
        run_dir = self.output_dir / "runs" / config.model_name
        result_path = self.results_path(config.model_name)
        kept = self._finished(config, result_path) if self.resume else None
        if kept is not None:
            return kept
        separate = self.separate_process
        if separate is None:  # CPU peak memory is only honest for a process that trains one model
            separate = resolve_device(config.device).type == "cpu" and not distributed.launched_by_torchrun()
        if separate:
            error_path = run_dir / "error.txt"
            run_dir.mkdir(parents=True, exist_ok=True)
            error_path.unlink(missing_ok=True)
            process = multiprocessing.get_context("spawn").Process(
                target=_worker,
                args=(config, config.data_dir, str(run_dir), str(result_path), str(error_path), self.resume, self.quiet,
                      self.tensorboard),
            )
            try:
                with terminate_as_interrupt():
                    process.start()
                    process.join()
            except KeyboardInterrupt:  # the parent alone was interrupted (Ctrl-C, SIGTERM), or the worker too
                _stop_worker(process)
                raise Interrupted(config.model_name, checkpointed_epochs(run_dir)) from None
            if process.exitcode == -signal.SIGINT or (
                    error_path.is_file() and error_path.read_text().startswith("KeyboardInterrupt")):
                raise Interrupted(config.model_name, checkpointed_epochs(run_dir))
            if process.exitcode != 0:
                detail = error_path.read_text() if error_path.is_file() else f"exit code {process.exitcode}"
                raise RuntimeError(f"{config.model_name}: training failed in its worker process: {detail}")
        else:
            try:
                run_and_save(config, config.data_dir, str(run_dir), str(result_path), self.resume, self.quiet,
                             self.tensorboard)
            except KeyboardInterrupt:
                raise Interrupted(config.model_name, checkpointed_epochs(run_dir)) from None
        return BenchmarkResults.load(result_path)

    def _finished(self, config: BenchmarkConfig, result_path: Path) -> BenchmarkResults | None:
        """With ``--resume``, a run whose results file exists for what this config runs is kept as
        it is (a finished run is never rerun); one of another config is run again, and says so."""
        kept, why_not = finished_results(config, result_path)
        if why_not:
            print(f"{config.model_name}: {result_path} {why_not}; running it again", file=sys.stderr)
        if kept is not None:
            print(f"{config.model_name}: finished earlier, kept ({result_path})", flush=True)
        return kept

    def compare_results(self, a: BenchmarkResults, b: BenchmarkResults) -> dict:
        """Compare ``b`` with ``a`` and write ``comparison_<a>_vs_<b>.json`` (rank 0 under torchrun)."""
        comparison = compare_results(a, b)
        if distributed.is_main_process():
            write_json_atomic(self.output_dir / f"comparison_{a.model_name}_vs_{b.model_name}.json", comparison)
        return comparison

    def plot_training_curves(self, results: list) -> Path:
        path = self.output_dir / "training_curves.png"
        return plots.plot_training_curves(results, path) if distributed.is_main_process() else path

    def run_all(self, configs: list) -> list:
        """Every model, then every pairwise comparison and the figure."""
        results = [self.run_benchmark(c) for c in configs]
        if distributed.is_main_process():
            write_comparisons(self.output_dir, [c.model_name for c in configs])
        self.plot_training_curves(results)
        return results


def write_comparisons(folder: str | Path, models=None) -> list:
    """``comparison_<a>_vs_<b>.json`` for every pair of models in ``folder``, from the means over its
    seeds (one run: the run's own figures), and ``summary.json`` (every metric's mean, std, values)."""
    folder = Path(folder)
    runs = load_runs(folder, models)
    summaries = {name: summarize(results) for name, results in runs.items()}
    comparisons = []
    for a, b in itertools.combinations(summaries, 2):
        comparison = compare_summaries(a, summaries[a], b, summaries[b])
        write_json_atomic(folder / f"comparison_{a}_vs_{b}.json", comparison)
        comparisons.append(comparison)
    write_json_atomic(folder / "summary.json", {"models": summaries, "comparisons": comparisons})
    return comparisons
