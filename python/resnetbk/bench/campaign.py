"""``python -m resnetbk.bench campaign FILE``: many benchmark runs, in pieces that survive any
interruption, then one summary across them.

The file (``bench.campaign_file``) lists rows (a model at a preset with overrides) and their
seeds, and optionally a learning-rate sweep: every row with ``lr: swept`` first trains at each
of the sweep's values (its preset and seed, the validation split decides: lowest best validation
perplexity, ties to the smaller rate), then runs at the chosen rate; a row whose best is an edge
that still wins goes one rate further (``sweep_values``). Runs go one at a time on a
CPU (``--jobs N`` runs N at once, for a GPU where that is faster), each into its own folder:

    <output_dir>/lr_sweep/<row>_lr<value>_results.json     the sweep
    <output_dir>/seed_<s>/<row>_results.json               the runs (plus runs/<row>/ checkpoints)
    <output_dir>/summary.json, comparison_*.json, report.md   across the finished runs (means +- std)
    <output_dir>/training_curves.png                         validation curves and test perplexity over seeds
    <output_dir>/campaign.json, campaign.md                  the plan: done, left, the chosen rates

Stopped anywhere, the same command continues: a finished run is kept (never rerun), an
interrupted one resumes from its last checkpoint (``bench.runner``). A run whose configuration
equals a finished one's but for its row name (a swept row whose chosen rate is the stated one of
another row) is not trained twice: its results are that run's, copied under its name and marked
in ``campaign.json`` (``same_run_as``); training is deterministic for a seed. A finished run is
kept whatever ``--device`` and ``--threads`` it ran with (a campaign begun on a CPU can finish
on a GPU); an interrupted one resumes only with the settings it started with. A run that fails
is recorded (``campaign.md``) and the others go on; the same command tries it again. A results
file of another configuration under a run's name is moved to ``stale-<time>/`` before that run
trains. The summary is rewritten after every finished run, so a partial campaign can be read.
``--status`` prints the plan without training or writing anything.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import shlex
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..jsonfile import write_json_atomic
from ..measure.environment import machine
from ..train import distributed
from .campaign_file import SWEPT, Campaign, CampaignError, LRSweep, Row, load_campaign
from .plots import plot_seed_curves
from .report import RUN_INFO, write_report
from .runner import Interrupted, WikiText2Benchmark, finished_results, what_runs, write_comparisons
from .summary import load_runs

SWEEP_FOLDER = "lr_sweep"


@dataclass(frozen=True)
class Task:
    """One training run of the campaign: a row at a seed (``phase`` "run"), or a row at one of the
    sweep's rates (``phase`` "sweep")."""

    phase: str
    row: Row
    seed: int
    lr: float | None
    folder: Path
    model_name: str

    @property
    def label(self) -> str:
        rate = "" if self.lr is None else f" lr {self.lr:g}"
        return f"{self.phase} {self.row.name} seed {self.seed}{rate}"

    def config(self, campaign: Campaign, data_dir: str | None, overrides: dict):
        preset = campaign.lr_sweep.preset if self.phase == "sweep" else None
        config = self.row.config(data_dir or campaign.data_dir, self.seed, self.lr, preset, self.model_name)
        return config.replace(**overrides) if overrides else config

    @property
    def result_path(self) -> Path:
        return self.folder / f"{self.model_name}_results.json"


def sweep_values(sweep: LRSweep, scores: dict) -> tuple:
    """The rates a row's sweep trains, given its finished ``scores`` (rate -> best validation
    perplexity): the file's values, and where the best of them is an edge that beats its
    neighbour by more than ``edge_margin``, one rate further at the same ratio (2e-3 -> 4e-3,
    5e-4 -> 2.5e-4), up to ``extend`` times: no rate is chosen at an edge that was still winning."""
    values = list(sweep.values)
    for _ in range(sweep.extend):
        if any(v not in scores for v in values):
            break  # the next step waits for these
        further = _past_edge(values, scores, sweep.edge_margin)
        if further is None or f"{further:g}" in {f"{v:g}" for v in values}:  # the names the files carry
            break
        values = sorted([*values, further])
    return tuple(values)


def still_at_edge(sweep: LRSweep, scores: dict) -> bool:
    """Whether a row's finished sweep (all its ``sweep_values``) ends with its best at an edge
    that still wins: its ``extend`` steps were spent, and a further rate is untried."""
    values = list(sweep_values(sweep, scores))
    return all(v in scores for v in values) and _past_edge(values, scores, sweep.edge_margin) is not None


def _past_edge(values: list, scores: dict, margin: float) -> float | None:
    best = min(values, key=lambda lr: (_finite(scores[lr]), lr))
    if _finite(scores[best]) == float("inf") or best not in (values[0], values[-1]):
        return None
    edge, neighbour = (values[-1], values[-2]) if best == values[-1] else (values[0], values[1])
    beaten = _finite(scores[neighbour])  # a diverged neighbour is beaten by any margin
    if beaten != float("inf") and beaten - scores[best] <= margin * beaten:
        return None
    return float(f"{edge * edge / neighbour:.6g}")  # a rate that reads as it is written


def sweep_scores(finished: dict) -> dict:
    """``{row name: {rate: best validation perplexity}}`` of the finished sweep runs (``finished``:
    result path -> (task, results))."""
    scores: dict = {}
    for task, results in finished.values():
        if task.phase == "sweep":
            scores.setdefault(task.row.name, {})[task.lr] = results.best_valid_perplexity
    return scores


def sweep_tasks(campaign: Campaign, scores: dict) -> list:
    """Every swept row at each rate of its sweep (``sweep_values`` of its finished ``scores``)."""
    sweep = campaign.lr_sweep
    folder = campaign.output_dir / SWEEP_FOLDER
    return [Task("sweep", row, sweep.seed, lr, folder, f"{row.name}_lr{lr:g}")
            for row in campaign.swept_rows for lr in sweep_values(sweep, scores.get(row.name, {}))]


def run_tasks(campaign: Campaign, chosen: dict) -> list:
    """Every row at every seed, seed by seed (the first seed of every row before the second of
    any): a partial campaign has every model once. A swept row without a chosen rate waits."""
    tasks = []
    depth = max(len(row.seeds) for row in campaign.rows)
    for i in range(depth):
        for row in campaign.rows:
            if i < len(row.seeds):
                lr = chosen.get(row.name) if row.lr == SWEPT else row.lr
                tasks.append(Task("run", row, row.seeds[i], lr, campaign.output_dir / f"seed_{row.seeds[i]}", row.name))
    return tasks


def choose_rates(campaign: Campaign, scores: dict) -> tuple:
    """``(chosen, table, diverged, at_edge)``: per swept row the rate with the lowest best
    validation perplexity (ties: the smaller rate), once every rate of its sweep (``sweep_values``,
    its extensions included) finished; ``table`` has every finished value's; ``diverged`` the rows
    where no rate gave a finite perplexity (nothing chosen); ``at_edge`` the rows whose chosen rate
    is an edge still winning after every extension."""
    chosen, table, diverged = {}, {}, []
    for row in campaign.swept_rows:
        row_scores = scores.get(row.name, {})
        values = sweep_values(campaign.lr_sweep, row_scores)
        table[row.name] = {f"{lr:g}": row_scores[lr] for lr in values if lr in row_scores}
        if any(lr not in row_scores for lr in values):
            continue
        if all(_finite(row_scores[lr]) == float("inf") for lr in values):
            diverged.append(row.name)
            continue
        chosen[row.name] = min(values, key=lambda lr: (_finite(row_scores[lr]), lr))
    at_edge = [name for name in chosen if still_at_edge(campaign.lr_sweep, scores.get(name, {}))]
    return chosen, table, diverged, at_edge


def _finite(x) -> float:
    return x if isinstance(x, (int, float)) and x == x and x != float("inf") else float("inf")


def _estimate(task: Task, finished: dict) -> float | None:
    """Seconds a task should take, from the finished runs of the same model and budget (else the
    same budget), or None."""
    def budget(t: Task) -> str:
        return "sweep" if t.phase == "sweep" else t.row.preset

    same = [r.training_time for t, r in finished.values() if t.row.model == task.row.model and budget(t) == budget(task)]
    same = same or [r.training_time for t, r in finished.values() if budget(t) == budget(task)]
    return sum(same) / len(same) if same else None


def _left(tasks: list, finished: dict, jobs: int) -> str:
    estimates = [_estimate(t, finished) for t in tasks]
    known = sum(e for e in estimates if e is not None) / jobs
    unknown = sum(e is None for e in estimates)
    text = f"about {known / 3600:.1f} h of training left" if known else "time left: known after a first run"
    return text + (f" (+{unknown} run(s) not yet estimable)" if unknown and known else "")


#: Execution settings that do not change what a run computes: a finished run is kept whatever
#: they were (a campaign begun on a CPU can finish on a GPU).
EXECUTION_FIELDS = ("device", "threads")


class CampaignRunner:
    """Runs a campaign's tasks, keeps its plan file and its summary up to date."""

    def __init__(self, campaign: Campaign, *, data_dir: str | None = None, overrides: dict | None = None,
                 jobs: int = 1, quiet: bool = False, separate_process: bool | None = None, log=print):
        self.campaign, self.data_dir, self.overrides = campaign, data_dir, overrides or {}
        self.jobs, self.quiet, self.separate_process, self.log = jobs, quiet, separate_process, log
        self.finished: dict = {}  # result path -> (task, BenchmarkResults)
        self.failed: dict = {}  # result path -> what went wrong (this invocation; tried again by the next)
        self.twins: dict = {}  # result path -> the result path of the identical run it was copied from
        self.stale: dict = {}  # result path -> why its file is not this campaign's run
        plan_file = campaign.output_dir / "campaign.json"
        try:  # the copies an earlier invocation made
            rows = json.loads(plan_file.read_text()).get("runs", []) if plan_file.is_file() else []
        except (OSError, ValueError):
            rows = []
            log(f"note: {plan_file} is unreadable; it is written again")
        for row in rows:
            if isinstance(row, dict) and row.get("same_run_as") and row.get("results"):
                self.twins[campaign.output_dir / row["results"]] = campaign.output_dir / row["same_run_as"]

    def _config(self, task: Task):
        return task.config(self.campaign, self.data_dir, self.overrides)

    def _kept(self, task: Task):
        kept, why_not = finished_results(self._config(task), task.result_path, ignore=EXECUTION_FIELDS)
        if why_not:
            self.stale[task.result_path] = why_not
        else:
            self.stale.pop(task.result_path, None)
        return kept

    def refresh(self, tasks: list, *, copy: bool = True) -> list:
        """The tasks not finished yet (the finished ones recorded in ``self.finished``); with
        ``copy``, a task identical to a finished run gets that run's results."""
        pending = []
        for task in tasks:
            if task.lr is None and task.row.lr == SWEPT:
                pending.append(task)  # waits for its sweep
                continue
            kept = self._kept(task)
            if kept is None and copy:
                kept = self._copy_twin(task)
            if kept is None:
                pending.append(task)
            else:
                self.finished[task.result_path] = (task, kept)
        return pending

    def _unnamed(self, config: dict) -> dict:
        data = what_runs(config)
        for name in ("model_name", *EXECUTION_FIELDS):
            data.pop(name, None)
        return data

    def _twin_of(self, task: Task, among) -> Task | None:
        want = self._unnamed(self._config(task).to_dict())
        for other in among:
            if other is not task and other.phase == task.phase and self._unnamed(self._config(other).to_dict()) == want:
                return other
        return None

    def _copy_twin(self, task: Task):
        """The results of a finished run identical to ``task`` but for its name, copied under
        ``task``'s name (None: there is none)."""
        other = self._twin_of(task, [t for t, _ in self.finished.values()])
        if other is None:
            return None
        data = json.loads(other.result_path.read_text())
        data["model_name"] = data["config"]["model_name"] = task.model_name
        task.folder.mkdir(parents=True, exist_ok=True)
        steps = other.result_path.with_name(f"{other.model_name}_steps.csv")
        if steps.is_file():
            task.result_path.with_name(f"{task.model_name}_steps.csv").write_text(steps.read_text())
        write_json_atomic(task.result_path, data)
        self.twins[task.result_path] = other.result_path
        self.log(f"{task.label}: the same run as {other.label} (identical configuration); its results copied")
        return self._kept(task)

    def plan(self, *, copy: bool = True) -> dict:
        """What is done and what is left, the chosen rates and the sweep's table."""
        sweeps: list = []
        while self.campaign.lr_sweep:  # a finished edge can add a rate past it, so until nothing new
            known = {t.result_path for t in sweeps}
            new = [t for t in sweep_tasks(self.campaign, self._sweep_scores(sweeps)) if t.result_path not in known]
            if not new:
                break
            self.refresh(new, copy=copy)
            sweeps += new
        pending_sweeps = [t for t in sweeps if t.result_path not in self.finished]
        chosen, table, diverged, at_edge = choose_rates(self.campaign, self._sweep_scores(sweeps))
        runs = run_tasks(self.campaign, chosen)
        pending_runs = self.refresh(runs, copy=copy)
        every = sweeps + runs
        pending = set(map(id, pending_sweeps + pending_runs))
        return {"tasks": every, "pending": [t for t in every if id(t) in pending], "chosen": chosen, "table": table,
                "diverged": diverged, "at_edge": at_edge}

    def _sweep_scores(self, sweeps: list) -> dict:
        """The finished sweep runs' scores, where a rate past the file's values whose run failed
        counts as diverged: the rate the edge rule added is the likeliest to blow up, and its row
        then takes the best rate that finished instead of waiting for it."""
        scores = sweep_scores(self.finished)
        for task in sweeps:
            if task.result_path in self.failed and task.lr not in self.campaign.lr_sweep.values:
                scores.setdefault(task.row.name, {})[task.lr] = float("inf")
        return scores

    def write_plan(self, plan: dict) -> None:
        out = self.campaign.output_dir
        out.mkdir(parents=True, exist_ok=True)
        doc = self.plan_doc(plan)
        write_json_atomic(out / "campaign.json", doc)
        (out / "campaign.md").write_text(format_plan(doc))

    def plan_doc(self, plan: dict) -> dict:
        """``campaign.json``'s content: the plan, the sweep's table, every run's state."""
        rows = [self._plan_row(task, self.campaign.output_dir) for task in plan["tasks"]]
        return {"campaign": self.campaign.path, "description": self.campaign.description,
               "done": sum(r["done"] for r in rows), "total": len(rows), "lr_sweep_valid_perplexity": plan["table"],
               "chosen_lr": plan["chosen"], "diverged_sweeps": plan["diverged"],
               "sweeps_still_at_edge": plan["at_edge"], "runs": rows}

    def _plan_row(self, task: Task, out: Path) -> dict:
        done = self.finished.get(task.result_path)
        twin = self.twins.get(task.result_path) if done else None
        return {"phase": task.phase, "row": task.row.name, "model": task.row.model, "seed": task.seed, "lr": task.lr,
                "preset": self.campaign.lr_sweep.preset if task.phase == "sweep" else task.row.preset,
                "done": done is not None, "results": str(task.result_path.relative_to(out)),
                "same_run_as": str(Path(twin).relative_to(out)) if twin else None,
                "failed": self.failed.get(task.result_path), "stale_file": self.stale.get(task.result_path),
                "best_valid_perplexity": done[1].best_valid_perplexity if done else None,
                "test_perplexity": done[1].test_perplexity if done else None,
                "training_time_s": done[1].training_time if done else None}

    def run(self, stop_after: int | None = None) -> dict:
        """Every pending task (the sweep first), the plan and summary rewritten after each; a
        failed run is recorded and the others go on. ``stop_after`` (tests) stops after that
        many trained runs, as an interruption between runs would."""
        if self.jobs > 1:
            return self._run_at_once()
        trained = 0
        while True:
            plan = self.plan()
            self.write_plan(plan)
            ready = self._ready(plan, running=())
            if not ready or (stop_after is not None and trained >= stop_after):
                return plan
            task = ready[0]
            self._announce(task, plan, 0)
            started = time.perf_counter()
            self._set_aside_stale(task)
            self._guarded(task, functools.partial(_train_one, str(task.folder), self._config(task), self.quiet,
                                                  self.separate_process))
            self._after(task, time.perf_counter() - started)
            trained += 1

    def _run_at_once(self) -> dict:
        """``jobs`` runs at a time, each in its own process; as one finishes the next starts (a GPU
        shared by runs that each leave it partly idle). Identical runs never run side by side."""
        context = multiprocessing.get_context("spawn")
        running: dict = {}  # future -> (task, start time)
        with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=context, max_tasks_per_child=1) as pool:
            while True:
                plan = self.plan()
                self.write_plan(plan)
                for task in self._ready(plan, running=[t for t, _ in running.values()]):
                    if len(running) >= self.jobs:
                        break
                    self._announce(task, plan, len(running))
                    self._set_aside_stale(task)
                    future = pool.submit(_train_one, str(task.folder), self._config(task), self.quiet, False)
                    running[future] = (task, time.perf_counter())
                if not running:
                    return plan
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    task, started = running.pop(future)
                    self._guarded(task, future.result)
                    self._after(task, time.perf_counter() - started)

    def _ready(self, plan: dict, running) -> list:
        """Pending tasks that can start: their rate known, not failed in this invocation, not
        running, and not identical to a running one (that one's results are copied after)."""
        busy = {t.result_path for t in running}
        return [t for t in plan["pending"] if (t.lr is not None or t.row.lr != SWEPT) and t.result_path not in self.failed
                and t.result_path not in busy and self._twin_of(t, running) is None]

    def _announce(self, task: Task, plan: dict, offset: int) -> None:
        done = len(plan["tasks"]) - len(plan["pending"])
        self.log(f"[{done + offset + 1}/{len(plan['tasks'])}] {task.label}: training; {done} done, "
                 f"{len(plan['pending'])} left, {_left(plan['pending'], self.finished, self.jobs)}")

    def _after(self, task: Task, seconds: float) -> None:
        """After a run: a trained run is no copy; one whose file does not hold it failed; the summary."""
        self.twins.pop(task.result_path, None)
        if task.result_path not in self.failed and self._kept(task) is None:
            self.failed[task.result_path] = "trained, yet its results file does not hold its run"
        self.log(f"    {task.label}: {'FAILED' if task.result_path in self.failed else 'done'} after {seconds:.0f} s")
        self.summarise()

    def _guarded(self, task: Task, work) -> None:
        """``work()``; a failure is recorded against ``task`` (an interruption is not a failure)."""
        try:
            work()
        except Interrupted:
            raise
        except (RuntimeError, ValueError, OSError, BrokenProcessPool) as exc:
            error = task.folder / "runs" / task.model_name / "error.txt"
            where = f" (details: {error})" if error.is_file() else ""
            self.failed[task.result_path] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.log(f"FAILED: {task.label}: {self.failed[task.result_path]}{where}; the other runs go on")

    def _set_aside_stale(self, task: Task) -> None:
        """A results file (and its checkpoint) of another configuration under this run's name is
        moved to ``stale-<time>/`` beside it: kept, but out of the summary and of the resume."""
        if task.result_path not in self.stale:
            return
        aside = task.folder / f"stale-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in (task.result_path, task.result_path.with_name(f"{task.model_name}_steps.csv"),
                     task.folder / "runs" / task.model_name):
            if path.exists():
                path.rename(aside / path.name)
        self.log(f"{task.label}: {task.result_path.name} {self.stale.pop(task.result_path)}; moved to {aside}")

    def summarise(self) -> None:
        """``summary.json``, the comparisons, the figure and ``report.md`` across the finished runs of the
        campaign's rows (nothing else in the folder)."""
        out = self.campaign.output_dir
        names = [row.name for row in self.campaign.rows
                 if any(t.phase == "run" and t.row.name == row.name for t, _ in self.finished.values())]
        if not names:
            return
        write_comparisons(out, names)
        try:  # before the report, which shows it; a figure must never stop the campaign
            plot_seed_curves(load_runs(out, names), out / "training_curves.png")
        except Exception as exc:  # matplotlib can fail in many ways; the numbers are written either way
            self.log(f"note: the figure was not drawn ({type(exc).__name__}: {exc})")
        write_report(out, names)


def _train_one(folder: str, config, quiet: bool, separate_process) -> None:
    WikiText2Benchmark(folder, resume=True, quiet=quiet, separate_process=separate_process).run_benchmark(config)


def _num(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def format_plan(doc: dict) -> str:
    """``campaign.md``: the runs done and left, the sweep's validation perplexities and choices."""
    lines = [f"# Campaign `{doc['campaign']}`", "", doc["description"] or "", "",
             f"{doc['done']} of {doc['total']} runs done.", ""]
    stale = [r for r in doc["runs"] if r.get("stale_file")]
    if stale:  # e.g. --status without the --data-dir the runs were made with
        lines += [f"**{len(stale)} results file(s) here are of another configuration** and count as not done "
                  f"(`{stale[0]['results']}` {stale[0]['stale_file']}); with the same settings they count again, "
                  f"while training moves each aside to `stale-<time>/` before its run.", ""]
    if doc["lr_sweep_valid_perplexity"]:
        lines += ["## Learning rate, chosen on validation", "", "| row | best valid ppl by lr | chosen |", "|---|---|---|"]
        for row, scores in doc["lr_sweep_valid_perplexity"].items():
            cells = ", ".join(f"{lr}: {_num(ppl)}" for lr, ppl in scores.items()) or "-"
            chosen = doc["chosen_lr"].get(row)
            choice = "no finite perplexity at any rate: none chosen" if row in doc["diverged_sweeps"] else (
                "-" if chosen is None else f"{chosen:g}")
            if row in doc.get("sweeps_still_at_edge", []):
                choice += " (still the winning edge after every extension: a further rate is untried)"
            lines.append(f"| {row} | {cells} | {choice} |")
        lines.append("")
    lines += ["## Runs", "", "| phase | row | seed | lr | preset | done | valid ppl | test ppl | time (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lr = "(sweep pending)" if r["lr"] is None and r["phase"] == "run" else ("preset" if r["lr"] is None else f"{r['lr']:g}")
        done = (f"same run as `{r['same_run_as']}`" if r.get("same_run_as") else "yes" if r["done"]
                else f"FAILED: {r['failed']}" if r.get("failed") else "no")
        lines.append(f"| {r['phase']} | {r['row']} | {r['seed']} | {lr} | {r['preset']} | {done} "
                     f"| {_num(r['best_valid_perplexity'])} | {_num(r['test_perplexity'])} | {_num(r['training_time_s'], '.0f')} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m resnetbk.bench campaign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the campaign file (YAML or JSON), e.g. campaigns/original.yaml")
    p.add_argument("--data-dir", help="folder with wiki.{train,valid,test}.tokens (else the file's data_dir, "
                                      "else $RESNETBK_DATA, else the hub)")
    p.add_argument("--output-dir", help="instead of the file's output_dir")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="for every run (default: each run's config)")
    p.add_argument("--threads", type=int, help="torch and Rust threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1; more only pays on a GPU: on a CPU "
                                                       "they share the cores and their throughput figures overlap)")
    p.add_argument("--status", action="store_true", help="print what is done and left, train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _warn_about_sweeps(plan: dict) -> None:
    for name in plan["diverged"]:
        print(f"error: {name}: no rate of the lr_sweep gave a finite validation perplexity; widen it", file=sys.stderr)
    for name in plan["at_edge"]:
        print(f"note: {name}: its chosen rate {plan['chosen'][name]:g} is still the winning edge after every extension "
              f"(lr_sweep.extend); a further rate is untried", file=sys.stderr)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        campaign = load_campaign(args.file)
        if args.jobs < 1:
            raise CampaignError(f"--jobs: expected a positive number of runs at once, got {args.jobs}")
    except CampaignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output_dir:
        campaign = Campaign(campaign.path, Path(args.output_dir), campaign.rows, campaign.lr_sweep,
                            campaign.data_dir, campaign.description)
    overrides = {k: v for k, v in (("device", args.device), ("threads", args.threads)) if v is not None}
    runner = CampaignRunner(campaign, data_dir=args.data_dir, overrides=overrides, jobs=args.jobs, quiet=args.quiet)
    if args.status:
        print(format_plan(runner.plan_doc(runner.plan(copy=False))))  # writes nothing: a run may be writing
        return 0
    if args.jobs > 1 and args.device != "cuda":
        print(f"note: --jobs {args.jobs} without --device cuda: runs share this machine's cores, so their time and "
              f"throughput figures overlap (perplexities do not depend on it)", file=sys.stderr)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        plan = runner.run()
    except Interrupted as exc:
        print(f"interrupted: {exc}; rerun the same command to continue", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"interrupted; every finished run is kept in {campaign.output_dir}/ (rerun the same command)", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        print(f"Finished runs and checkpoints are kept in {campaign.output_dir}/; rerun the same command to continue.",
              file=sys.stderr)
        return 1
    if distributed.is_main_process():
        write_json_atomic(campaign.output_dir / RUN_INFO, {
            "command": "python -m resnetbk.bench campaign " + shlex.join(argv), "started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
        runner.summarise()
    waiting = plan["pending"]
    print(f"Campaign {campaign.path}: {len(plan['tasks']) - len(waiting)} of {len(plan['tasks'])} runs done; "
          f"plan in {campaign.output_dir}/campaign.md")
    for path, why in runner.failed.items():
        print(f"FAILED: {path}: {why} (the same command tries it again)", file=sys.stderr)
    _warn_about_sweeps(plan)
    return 0 if not waiting else 1
