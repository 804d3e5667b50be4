"""How one model's results compare with another's (the pairwise ``comparison_*.json``)."""

from __future__ import annotations

from ..jsonfile import json_safe
from ..train.results import BenchmarkResults


def compare_results(a: BenchmarkResults, b: BenchmarkResults) -> dict:
    """How ``b`` compares with ``a`` (the reference): speed-ups, perplexity and resource changes.

    ``speedup_time = a.training_time / b.training_time`` (>1: b is faster);
    ``speedup_flops`` likewise from total training FLOPs (null until measured);
    ``perplexity_difference_percent = 100 (b - a) / a`` on test perplexity (<0: b is better);
    ``memory_reduction_percent`` and ``size_reduction_percent = 100 (a - b) / a``.
    """

    def ratio(x, y):
        return x / y if x is not None and y not in (None, 0) else None

    def percent(x, y):
        return 100.0 * x / y if x is not None and y not in (None, 0) else None

    mem_a, mem_b = a.peak_memory_mb, b.peak_memory_mb
    return json_safe({
        "reference": a.model_name,
        "model": b.model_name,
        "speedup_time": ratio(a.training_time, b.training_time),
        "speedup_flops": ratio(a.total_training_flops, b.total_training_flops),
        "perplexity_reference": a.test_perplexity,
        "perplexity_model": b.test_perplexity,
        "perplexity_difference_percent": percent(b.test_perplexity - a.test_perplexity, a.test_perplexity),
        "memory_reduction_percent": percent(None if mem_a is None or mem_b is None else mem_a - mem_b, mem_a),
        "size_reduction_percent": percent(a.model_size_mb - b.model_size_mb, a.model_size_mb),
        "both_language_models": a.causal and b.causal,
    })
