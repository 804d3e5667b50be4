"""``BenchmarkConfig``: every field the seed promised, plus what an honest run needs, validated.

The seed's 12 optimization flags are all here. Two are real: ``use_analytic_gradient`` (the
exact BK-Core backward instead of autograd through the torch implementation) and
``use_mixed_precision`` (``--amp``). Setting any other flag raises ``NotImplementedError``:
an accepted-but-ignored flag would make a result lie about what ran.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..models import ARCHITECTURES

OPTIMIZATION_FLAGS = (
    "use_analytic_gradient", "use_koopman", "use_physics_informed", "use_quantization", "use_pruning",
    "use_mixed_precision", "use_act", "use_multi_scale", "use_sparse_bk", "use_early_exit",
    "use_curriculum", "use_active_learning",
)
IMPLEMENTED_FLAGS = ("use_analytic_gradient", "use_mixed_precision")
MODEL_NAMES = ("transformer_baseline", "resnet_bk_baseline", "resnet_bk_full")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class BenchmarkConfig:
    # The seed's fields.
    model_name: str = "resnet_bk_baseline"
    d_model: int = 64
    n_layers: int = 4
    n_seq: int = 128
    batch_size: int = 32
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    device: str = "auto"
    seed: int = 42
    use_analytic_gradient: bool = True
    use_koopman: bool = False
    use_physics_informed: bool = False
    use_quantization: bool = False
    use_pruning: bool = False
    use_mixed_precision: bool = False
    use_act: bool = False
    use_multi_scale: bool = False
    use_sparse_bk: bool = False
    use_early_exit: bool = False
    use_curriculum: bool = False
    use_active_learning: bool = False
    # Architecture.
    architecture: str = "resnet_bk"
    dropout: float = 0.1
    tie_embeddings: bool = True
    n_heads: int = 4
    num_experts: int = 4
    bk_channels: int = 1
    bk_mode: str = "causal"
    potential_limit: float = 3.0
    load_balance_weight: float = 0.01
    # Optimisation schedule.
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_norms_biases_embeddings: bool = False
    max_steps: Optional[int] = None
    max_consecutive_skips: int = 20
    # Data.
    data_dir: Optional[str] = None
    max_train_tokens: Optional[int] = None
    data_fraction: Optional[float] = None
    eval_batch_size: int = 32
    # Safety and execution.
    amp_dtype: str = "bfloat16"
    allow_noncausal: bool = False
    threads: Optional[int] = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = ("d_model", "n_layers", "n_seq", "batch_size", "epochs", "n_heads", "num_experts", "bk_channels",
                    "eval_batch_size", "max_consecutive_skips")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("lr", "grad_clip", "potential_limit"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        for name in ("weight_decay", "load_balance_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not 0 < self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio: expected a number in (0, 1], got {self.min_lr_ratio!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected a non-negative integer, got {self.warmup_steps!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"max_steps: expected a positive integer or null, got {self.max_steps!r}")
        if self.max_train_tokens is not None and (not isinstance(self.max_train_tokens, int) or self.max_train_tokens < 2):
            raise ValueError(f"max_train_tokens: expected an integer >= 2 or null, got {self.max_train_tokens!r}")
        if self.data_fraction is not None and not (isinstance(self.data_fraction, (int, float)) and 0 < self.data_fraction <= 1):
            raise ValueError(f"data_fraction: expected a number in (0, 1] or null, got {self.data_fraction!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.bk_mode not in ("causal", "bidirectional"):
            raise ValueError(f"bk_mode: expected 'causal' or 'bidirectional', got {self.bk_mode!r}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype: expected 'bfloat16' or 'float16', got {self.amp_dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {DEVICES}, got {self.device!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads: expected a positive integer or null, got {self.threads!r}")
        if self.architecture == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model = {self.d_model} must be divisible by n_heads = {self.n_heads}")
        for flag in OPTIMIZATION_FLAGS:
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag}: expected true or false, got {getattr(self, flag)!r}")
        for flag in OPTIMIZATION_FLAGS:
            if flag not in IMPLEMENTED_FLAGS and getattr(self, flag):
                raise NotImplementedError(
                    f"{flag}: not implemented yet; set it to false (only {', '.join(IMPLEMENTED_FLAGS)} are real so far)"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "BenchmarkConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict) -> "BenchmarkConfig":
        reject_unknown_fields(cls, data, "config")
        return cls(**data)


def reject_unknown_fields(cls, data: dict, what: str) -> None:
    """A ValueError naming every key of ``data`` that is not a field of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")


def load_config_file(path: str | Path) -> dict:
    """Fields from a JSON or YAML file (by extension); unknown keys are rejected by ``from_dict``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: no such file: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a mapping of BenchmarkConfig fields, got {type(data).__name__}")
    return data


def model_config(model_name: str, base: BenchmarkConfig) -> BenchmarkConfig:
    """The config of one of the seed's three benchmark models, on top of ``base``'s settings."""
    if model_name == "transformer_baseline":
        return base.replace(model_name=model_name, architecture="transformer", use_analytic_gradient=False,
                            use_mixed_precision=False)
    if model_name == "resnet_bk_baseline":
        return base.replace(model_name=model_name, architecture="resnet_bk", use_analytic_gradient=False,
                            use_mixed_precision=False)
    if model_name == "resnet_bk_full":
        # Every optimization flag that exists so far (the others raise NotImplementedError).
        return base.replace(model_name=model_name, architecture="resnet_bk",
                            **{flag: True for flag in IMPLEMENTED_FLAGS})
    raise ValueError(f"--models: expected names from {MODEL_NAMES}, got {model_name!r}")


PRESETS = {
    # The seed's exact configuration.
    "seed": dict(),
    # About 10 minutes for all three models on 2 CPU cores; full valid/test evaluation.
    "quick": dict(epochs=2, max_train_tokens=150_000),
    # Seconds on tiny data (tests); full evaluation of whatever data it is given.
    "smoke": dict(d_model=16, n_layers=1, n_seq=16, batch_size=4, epochs=2, max_train_tokens=2_000, eval_batch_size=8),
}
