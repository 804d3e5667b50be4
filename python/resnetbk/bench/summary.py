"""Several seeds of the same models: mean and standard deviation of every metric, and
comparisons of the means that say whether a perplexity difference is larger than the noise.

A results folder holds either one run (``<model>_results.json``) or one run per seed
(``seed_<s>/<model>_results.json``, written by ``--seeds``); ``load_runs`` reads both.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..jsonfile import json_safe
from ..train.results import BenchmarkResults

#: The metrics summarised across seeds (every numeric figure a comparison or the report uses).
METRICS = (
    "best_valid_perplexity", "test_perplexity", "train_loss", "training_time", "tokens_per_second",
    "peak_memory_mb", "peak_memory_above_baseline_mb", "model_size_mb", "parameters", "non_embedding_parameters",
    "forward_flops", "backward_flops", "optimizer_flops", "total_flops_per_step", "total_training_flops", "steps",
)


def seed_folders(folder: str | Path) -> list:
    """``seed_<s>`` subfolders in seed order, or ``[folder]`` for a one-run folder."""
    folder = Path(folder)
    seeds = sorted((p for p in folder.glob("seed_*") if p.is_dir() and p.name[5:].lstrip("-").isdigit()),
                   key=lambda p: int(p.name[5:]))
    return seeds or [folder]


def load_runs(folder: str | Path, models=None) -> dict:
    """``{model_name: [BenchmarkResults, one per seed]}`` in the order the models were run (or of
    ``models``, which also leaves out any other model's results in the folder)."""
    runs: dict = {name: [] for name in models} if models else {}
    for seed_folder in seed_folders(folder):
        for path in sorted(seed_folder.glob("*_results.json"), key=lambda p: p.stat().st_mtime):
            result = BenchmarkResults.load(path)
            if models and result.model_name not in runs:
                continue
            runs.setdefault(result.model_name, []).append(result)
    runs = {name: results for name, results in runs.items() if results}
    if not runs:
        raise ValueError(f"{folder}: no *_results.json here or in seed_*/ subfolders; run the benchmark first")
    return runs


def mean_std(values: list) -> dict:
    """``{"mean", "std", "n", "values"}`` of ``values`` over seeds (``std`` the sample standard
    deviation, null for one value; missing values, None or NaN, left out)."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def summarize(results: list) -> dict:
    """``{metric: mean_std(...)}`` over the seeds' results of one model."""
    return {metric: mean_std([getattr(r, metric) for r in results]) for metric in METRICS}


def compare_summaries(name_a: str, a: dict, name_b: str, b: dict) -> dict:
    """How model ``b`` compares with the reference ``a``, on the means over seeds.

    ``perplexity_difference_percent = 100 (b - a) / a`` on mean test perplexity (<0: b is better);
    ``perplexity_difference_exceeds_2_std``: whether ``|b - a|`` is more than twice the standard
    deviation of the difference, ``sqrt(std_a^2 + std_b^2)`` (null with one seed: no noise estimate);
    ``speedup_time``, ``speedup_flops``: ``a / b`` (>1: b is cheaper); memory from the peak above
    the post-data baseline where both have it, else the process peaks (``memory_figure`` says which).
    """

    def mean(summary, metric):
        return summary[metric]["mean"]

    def ratio(x, y):
        return x / y if x is not None and y not in (None, 0) else None

    ppl_a, ppl_b = mean(a, "test_perplexity"), mean(b, "test_perplexity")
    std_a, std_b = a["test_perplexity"]["std"], b["test_perplexity"]["std"]
    noise = math.sqrt(std_a ** 2 + std_b ** 2) if std_a is not None and std_b is not None else None
    exceeds = None if noise is None or ppl_a is None or ppl_b is None else abs(ppl_b - ppl_a) > 2 * noise
    memory = "peak_memory_above_baseline_mb"
    if mean(a, memory) is None or mean(b, memory) is None:
        memory = "peak_memory_mb"
    mem_a, mem_b = mean(a, memory), mean(b, memory)
    return json_safe({
        "reference": name_a, "model": name_b, "seeds": min(a["test_perplexity"]["n"], b["test_perplexity"]["n"]),
        "perplexity_reference": ppl_a, "perplexity_model": ppl_b,
        "perplexity_difference_percent": 100 * (ppl_b - ppl_a) / ppl_a if ppl_a and ppl_b is not None else None,
        "perplexity_difference_std": noise,
        "perplexity_difference_exceeds_2_std": exceeds,
        "valid_perplexity_reference": mean(a, "best_valid_perplexity"),
        "valid_perplexity_model": mean(b, "best_valid_perplexity"),
        "speedup_time": ratio(mean(a, "training_time"), mean(b, "training_time")),
        "tokens_per_second_ratio": ratio(mean(b, "tokens_per_second"), mean(a, "tokens_per_second")),
        "speedup_flops": ratio(mean(a, "total_training_flops"), mean(b, "total_training_flops")),
        "memory_figure": memory,
        "memory_reduction_percent": 100 * (mem_a - mem_b) / mem_a if mem_a and mem_b is not None else None,
        "size_reduction_percent": (100 * (mean(a, "model_size_mb") - mean(b, "model_size_mb")) / mean(a, "model_size_mb")
                                   if mean(a, "model_size_mb") else None),
    })
