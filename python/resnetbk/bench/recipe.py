"""What a ``BenchmarkConfig`` trains: its model (built from its options, then each enabled
method's ``attach``), its methods' listeners, and the loop (``resnetbk.train``) run with them;
and the worker-process entry point that writes a model's results files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import data as wt2
from .. import methods
from ..models import LanguageModel, build_model
from ..train import distributed
from ..train.loop import train
from ..train.results import BenchmarkResults
from .config import model_options


def make_model(config, vocab_size: int) -> LanguageModel:
    """The model ``config`` trains: built from its options, then each enabled method's ``attach``."""
    model = build_model(model_options(config, vocab_size))
    methods.attach_all(model, config)
    return model


def train_model(config, corpus: wt2.Corpus, run_dir: str | Path, **kwargs) -> BenchmarkResults:
    """``train.loop.train`` of ``config``'s model with ``config``'s methods (keyword arguments go
    to the loop: resume, quiet, log, steps_csv, tensorboard_dir)."""
    return train(config, corpus, run_dir, build_model=lambda: make_model(config, corpus.vocab_size),
                 methods=methods.listeners_for(config), **kwargs)


def run_and_save(config, data_dir: Optional[str], run_dir: str, result_path: str, resume: bool,
                 quiet: bool, tensorboard: bool = False) -> None:
    """Worker-process entry point: load the data, train one model, write its results JSON and,
    beside it, ``<model>_steps.csv`` (and TensorBoard events under ``runs/<model>/tensorboard``)."""
    corpus = wt2.load_corpus(data_dir)
    steps_csv = Path(result_path).with_name(f"{config.model_name}_steps.csv")
    results = train_model(config, corpus, run_dir, resume=resume, quiet=quiet, steps_csv=steps_csv,
                          tensorboard_dir=Path(run_dir) / "tensorboard" if tensorboard else None)
    for method in methods.enabled(config):  # which form of each method ran (--resume compares it)
        results.methods.setdefault(method.flag, {})["version"] = method.version
    w = distributed.world(distributed.resolve_device(config.device))
    if w.is_main:
        results.save(result_path)
    w.barrier()
