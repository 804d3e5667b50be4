"""The WikiText-2 benchmark: ResNet-BK against a Transformer, measured honestly.

``python -m resnetbk.bench`` runs it; see ``python -m resnetbk.bench --help``.
"""

from ..train.results import BenchmarkResults
from .compare import compare_results
from .config import OPTIMIZATION_FLAGS, PRESETS, BenchmarkConfig, model_config
from .plots import plot_training_curves
from .runner import WikiText2Benchmark

__all__ = [
    "OPTIMIZATION_FLAGS", "PRESETS", "BenchmarkConfig", "BenchmarkResults", "WikiText2Benchmark", "compare_results",
    "model_config", "plot_training_curves",
]
