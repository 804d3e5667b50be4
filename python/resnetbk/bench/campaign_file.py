"""A campaign file (YAML or JSON): the runs of ``python -m resnetbk.bench campaign``, read and
checked into ``Campaign`` before anything trains, every mistake one line that names its place.

    output_dir: benchmark_results/campaign-original   # where every run's folder goes
    lr_sweep:                 # optional: the learning rate per model, chosen on validation
      preset: epoch           # the sweep's budget (one epoch of the original configuration)
      seed: 42
      values: [5.0e-4, 1.0e-3, 2.0e-3]
      extend: 2               # optional: up to this many rates past an edge that wins (default 2)
      edge_margin: 0.01       # ... by more than this fraction of its neighbour's perplexity
    runs:
      - model: transformer_baseline      # one of the benchmark's models (bench.config.MODEL_NAMES)
        name: transformer_baseline       # optional (default: the model's): the row's name
        preset: original                 # one of bench.config.PRESETS
        seeds: [42, 43, 44]              # or seed: 42
        lr: swept                        # the lr_sweep's best for this run (or a number; default the preset's)
        overrides: {model: {bk_channels: 8}}   # optional BenchmarkConfig fields over the preset

A run is one (row, seed); rows' names must differ (they name the results files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .config import MODEL_NAMES, PRESETS, BenchmarkConfig, load_config_file, merge, model_config

SWEPT = "swept"
#: Fields a row sets with its own keys, not through ``overrides`` (where they would be overwritten).
ROW_FIELDS = {"seed": "seed/seeds", "lr": "lr", "model_name": "name", "data_dir": "the file's data_dir or --data-dir"}
TOP_KEYS = ("description", "output_dir", "data_dir", "lr_sweep", "runs")
RUN_KEYS = ("model", "name", "preset", "seed", "seeds", "lr", "overrides")
SWEEP_KEYS = ("preset", "seed", "values", "extend", "edge_margin")


class CampaignError(ValueError):
    """A campaign file that cannot run: one line naming the file, the place and what to write."""


@dataclass(frozen=True)
class LRSweep:
    """The learning-rate sweep: every swept row at ``values`` (``preset``, ``seed``); where the
    best is an edge that beats its neighbour by more than ``edge_margin`` (relative perplexity),
    that row goes one rate further at the same ratio, up to ``extend`` times (``bench.campaign``)."""

    preset: str
    seed: int
    values: tuple
    extend: int = 2
    edge_margin: float = 0.01


@dataclass(frozen=True)
class Row:
    """One row of the campaign: a model at a preset with overrides, at every seed of ``seeds``."""

    name: str
    model: str
    preset: str
    seeds: tuple
    lr: float | str | None  # None: the preset's; SWEPT: the sweep's best
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    def config(self, data_dir: str | None, seed: int, lr: float | None = None, preset: str | None = None,
               model_name: str | None = None) -> BenchmarkConfig:
        """The run's ``BenchmarkConfig``: the preset, the seed, the learning rate, the benchmark
        model's own settings (``model_config``), then the overrides on top of all of them."""
        fields = dict(PRESETS[preset or self.preset], seed=seed)
        if data_dir is not None:
            fields["data_dir"] = data_dir
        if lr is not None:
            fields["lr"] = lr
        config = model_config(self.model, BenchmarkConfig.from_dict(fields))
        if self.overrides:
            config = BenchmarkConfig.from_dict(merge(config.to_dict(), self.overrides))
        return config.replace(model_name=model_name or self.name)


@dataclass(frozen=True)
class Campaign:
    path: str
    output_dir: Path
    rows: tuple
    lr_sweep: LRSweep | None = None
    data_dir: str | None = None
    description: str = ""

    @property
    def swept_rows(self) -> list:
        return [row for row in self.rows if row.lr == SWEPT]


def _where(path, place: str) -> str:
    return f"{path}: {place}" if place else str(path)


def _fail(path, place: str, message: str) -> None:
    raise CampaignError(f"{_where(path, place)}: {message}")


def _unknown_keys(path, place: str, data: dict, allowed: tuple) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        _fail(path, place, f"unknown key {unknown[0]!r}; expected keys from {', '.join(allowed)}")


def _seed(path, place: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(path, place, f"expected a non-negative integer seed, got {value!r}")
    return value


def _lr(path, place: str, value, *, swept_allowed: bool) -> float | str | None:
    if value is None or (swept_allowed and value == SWEPT):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        also = f" or {SWEPT!r} (the lr_sweep's best)" if swept_allowed else ""
        _fail(path, place, f"expected a positive learning rate such as 1.0e-3{also}, got {value!r}")
    return float(value)


def _preset(path, place: str, value) -> str:
    if value not in PRESETS:
        _fail(path, place, f"expected one of {', '.join(sorted(PRESETS))}, got {value!r}")
    return value


def _sweep(path, data) -> LRSweep | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        _fail(path, "lr_sweep", f"expected a mapping with {', '.join(SWEEP_KEYS)}, got {type(data).__name__}")
    _unknown_keys(path, "lr_sweep", data, SWEEP_KEYS)
    values = data.get("values")
    if not isinstance(values, list) or len(values) < 2:
        _fail(path, "lr_sweep.values", f"expected a list of at least two learning rates, got {values!r}")
    rates = tuple(_lr(path, f"lr_sweep.values[{i}]", v, swept_allowed=False) for i, v in enumerate(values))
    if len({f"{lr:g}" for lr in rates}) != len(rates):  # they name the sweep's results files
        _fail(path, "lr_sweep.values", f"expected learning rates distinct to 6 significant digits, got {values!r}")
    extend = data.get("extend", 2)
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        _fail(path, "lr_sweep.extend", f"expected how many rates a sweep may add past its edge (0 or more), got {extend!r}")
    margin = data.get("edge_margin", 0.01)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        _fail(path, "lr_sweep.edge_margin", f"expected a fraction in [0, 1) such as 0.01, got {margin!r}")
    return LRSweep(_preset(path, "lr_sweep.preset", data.get("preset", "epoch")),
                   _seed(path, "lr_sweep.seed", data.get("seed", 42)), tuple(sorted(rates)), extend, float(margin))


def _row(path, i: int, data) -> Row:
    place = f"runs[{i}]"
    if not isinstance(data, dict):
        _fail(path, place, f"expected a mapping with keys from {', '.join(RUN_KEYS)}, got {type(data).__name__}")
    _unknown_keys(path, place, data, RUN_KEYS)
    model = data.get("model")
    if model not in MODEL_NAMES:
        _fail(path, f"{place}.model", f"expected one of {', '.join(MODEL_NAMES)}, got {model!r}")
    name = data.get("name", model)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-." for c in name):
        _fail(path, f"{place}.name", f"expected a name of letters, digits, '_', '-' or '.', got {name!r}")
    if "seed" in data and "seeds" in data:
        _fail(path, place, "give seed or seeds, not both")
    seeds = data.get("seeds", [data.get("seed", 42)])
    if not isinstance(seeds, list) or not seeds:
        _fail(path, f"{place}.seeds", f"expected a list of seeds such as [42, 43, 44], got {seeds!r}")
    seeds = tuple(_seed(path, f"{place}.seeds[{j}]", s) for j, s in enumerate(seeds))
    if len(set(seeds)) != len(seeds):
        _fail(path, f"{place}.seeds", f"expected distinct seeds, got {list(seeds)}")
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict):
        _fail(path, f"{place}.overrides", f"expected a mapping of BenchmarkConfig fields, got {type(overrides).__name__}")
    for key, where in ROW_FIELDS.items():
        if key in overrides:
            _fail(path, f"{place}.overrides.{key}", f"set by the row itself: use {where}")
    if isinstance(overrides.get("model"), dict) and "architecture" in overrides["model"]:
        _fail(path, f"{place}.overrides.model.architecture", "set by the row's model; pick another model instead")
    row = Row(name, model, _preset(path, f"{place}.preset", data.get("preset", "original")), seeds,
              _lr(path, f"{place}.lr", data.get("lr"), swept_allowed=True), overrides)
    try:  # every field and value checked now, not hours into the campaign
        row.config(None, seeds[0], None if row.lr == SWEPT else row.lr)
    except (ValueError, TypeError, NotImplementedError) as exc:
        _fail(path, f"{place}.overrides", str(exc).splitlines()[0])
    return row


def load_campaign(path: str | Path) -> Campaign:
    """The campaign in ``path``, checked; a ``CampaignError`` (one line) for anything wrong."""
    try:
        data = load_config_file(path)
    except ValueError as exc:
        raise CampaignError(str(exc).replace("--config: ", "", 1).splitlines()[0]) from None
    _unknown_keys(path, "", data, TOP_KEYS)
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        _fail(path, "runs", "expected a non-empty list of runs (each with model, preset, seeds)")
    rows = tuple(_row(path, i, r) for i, r in enumerate(runs))
    names = [row.name for row in rows]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        _fail(path, "runs", f"two rows are named {duplicate!r}; give one a distinct name")
    sweep = _sweep(path, data.get("lr_sweep"))
    if sweep is None and any(row.lr == SWEPT for row in rows):
        _fail(path, "lr_sweep", f"a run asks for lr: {SWEPT} but the file has no lr_sweep section")
    output_dir = data.get("output_dir", f"benchmark_results/campaign-{Path(path).stem}")
    if not isinstance(output_dir, str) or not output_dir:
        _fail(path, "output_dir", f"expected a folder path, got {output_dir!r}")
    data_dir = data.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        _fail(path, "data_dir", f"expected a folder path or nothing, got {data_dir!r}")
    return Campaign(str(path), Path(output_dir), rows, sweep, data_dir, str(data.get("description", "")))
