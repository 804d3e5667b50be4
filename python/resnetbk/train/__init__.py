"""The training loop and what it is made of: the step, evaluation, the optimizer and schedule,
checkpoints, the events and the state its listeners (methods, measurements) see, the results.

Above ``models`` and the measurements (``flops``, ``measure``), below the methods and the
benchmark: nothing here knows a method or the benchmark's config class.
"""

from .evaluate import evaluate, window_nlls
from .events import Event, Listener, Listeners
from .loop import train
from .results import BenchmarkResults
from .state import TrainState
from .step import StepOutcome, train_step

__all__ = ["BenchmarkResults", "Event", "Listener", "Listeners", "StepOutcome", "TrainState", "evaluate", "train",
           "train_step", "window_nlls"]
