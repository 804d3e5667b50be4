"""``BenchmarkConfig``: every field the original benchmark had, plus what an honest run needs, validated.

The optimization flags (the original benchmark's 12, then this package's own) come from the
method registry (``resnetbk.methods.REGISTRY``), each with its hyper-parameters: the config's
flag and hyper-parameter fields, which are implemented and what ``resnet_bk_full`` turns on all
derive from it. Setting a flag that is not implemented raises ``NotImplementedError``: an
accepted-but-ignored flag would make a result lie about what ran.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .. import methods
from ..flops.estimate import StepShape
from ..methods.mixed_precision import slow_precision_reason
from ..models import ARCHITECTURES, ModelOptions
from ..models.options import INITS, TRANSFORMER_STYLES
from ..models.recurrent import mamba_cuda_available
from ..validate import check_int as _check_int
from ..validate import reject_unknown_fields

OPTIMIZATION_FLAGS = methods.FLAGS
#: The original benchmark's three models, then the peers people pick instead (models.recurrent).
MODEL_NAMES = ("transformer_baseline", "resnet_bk_baseline", "resnet_bk_full", "lstm", "mamba")
#: What ``--models`` runs when not given: the original benchmark's three.
DEFAULT_MODELS = MODEL_NAMES[:3]
MAMBA_KERNELS = ("auto", "mambapy", "mamba_ssm")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "plateau")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class _CoreConfig:
    """The fields that are not an optimization method's (those are added from the registry below)."""

    # The original benchmark's fields (its optimization flags come from the registry).
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
    # Architecture.
    architecture: str = "resnet_bk"
    dropout: float = 0.1
    #: Untied by default: the defaults study (docs/benchmark.md) measured a tied head 13% (Transformer)
    #: and 18% (ResNet-BK) worse in validation perplexity on the quick budget.
    tie_embeddings: bool = False
    head_bias: bool = False
    init: str = "normal"  # "normal": N(0, 0.02) weights (GPT-2); "torch": PyTorch's default initialisation
    n_heads: int = 4
    #: "pre_norm" (this package's Transformer) or "word_language_model" (PyTorch's example's: post-norm,
    #: ReLU MLP of width d_ff, sinusoidal positions); see models.options.TRANSFORMER_STYLES.
    transformer_style: str = "pre_norm"
    d_ff: int = 0  # that example's MLP width (0: 4 * d_model)
    final_norm: bool = True  # a LayerNorm before the LM head
    num_experts: int = 4
    bk_channels: int = 1
    bk_mode: str = "causal"
    potential_limit: float = 3.0
    load_balance_weight: float = 0.01
    #: The LSTM's cell width; 0: matched to ResNet-BK's non-embedding parameters (models.recurrent).
    lstm_hidden: int = 0
    #: Mamba's inner width; 0: matched to ResNet-BK's non-embedding parameters.
    mamba_inner: int = 0
    mamba_d_state: int = 16
    mamba_layers_per_block: int = 2
    #: Mamba's selective scan: "mambapy" (pure PyTorch, any device), "mamba_ssm" (its CUDA kernel),
    #: "auto" (mamba_ssm on CUDA where it is installed, else mambapy).
    mamba_kernel: str = "auto"
    # Optimisation schedule.
    #: "adamw" (weight decay per parameter_groups) or "sgd" (plain, no momentum: the word_language_model example's).
    optimizer: str = "adamw"
    #: "cosine": linear warmup, then a cosine to lr * min_lr_ratio over the run; "plateau": lr constant
    #: within an epoch and multiplied by plateau_factor after an epoch whose validation loss did not improve.
    lr_schedule: str = "cosine"
    plateau_factor: float = 0.25
    #: Shuffle the order of the training windows every epoch; false: in text order (as batchify).
    shuffle_windows: bool = True
    #: LSTM only, with shuffle_windows false: each window starts from the state the previous one ended
    #: with (detached; truncated backpropagation through time), in training and evaluation.
    carry_state: bool = False
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
    #: False: no test evaluation (test perplexity null), for studies that must not look at the test split.
    evaluate_test: bool = True
    #: Tokens of the validation split that a method's own evaluations use (e.g. early exit's thresholds).
    method_eval_tokens: int = 65_536
    #: Validate on those first ``method_eval_tokens`` every k training steps (None: never): the
    #: results' ``valid_curve``, from which steps and time to a perplexity are read.
    valid_curve_interval: Optional[int] = None
    # Safety and execution.
    #: The LM head's loss and gradients computed a block of rows at a time, without the full
    #: logits (``models.head``); False: the plain path (logits, then cross-entropy), to compare.
    fused_head: bool = True
    #: The FLOPs tracer prices every k-th training step (1: all); the others time the throughput.
    flops_trace_interval: int = 10
    amp_dtype: str = "bfloat16"
    allow_noncausal: bool = False
    threads: Optional[int] = None
    #: Methods a model's definition turns on that this run leaves out, flag -> why (e.g. mixed
    #: precision on a CPU without native bf16, for resnet_bk_full); recorded in the results.
    left_out_methods: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self._validate_numbers()
        self._validate_choices()
        methods.validate(self)

    def _validate_numbers(self) -> None:
        positive = ("d_model", "n_layers", "n_seq", "batch_size", "epochs", "n_heads", "num_experts", "bk_channels",
                    "eval_batch_size", "max_consecutive_skips", "method_eval_tokens", "flops_trace_interval",
                    "mamba_d_state", "mamba_layers_per_block")
        for name in positive:
            _check_int(self, name, low=1)
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
        _check_int(self, "warmup_steps", low=0)
        _check_int(self, "d_ff", low=0)
        if not (isinstance(self.plateau_factor, (int, float)) and 0 < self.plateau_factor < 1):
            raise ValueError(f"plateau_factor: expected a number in (0, 1), got {self.plateau_factor!r}")
        _check_int(self, "lstm_hidden", low=0)
        _check_int(self, "mamba_inner", low=0)
        for name, low in (("max_steps", 1), ("max_train_tokens", 2), ("threads", 1), ("valid_curve_interval", 1)):
            _check_int(self, name, low=low, optional=True)
        if self.data_fraction is not None and not (isinstance(self.data_fraction, (int, float)) and 0 < self.data_fraction <= 1):
            raise ValueError(f"data_fraction: expected a number in (0, 1] or null, got {self.data_fraction!r}")

    def _validate_choices(self) -> None:
        for name, allowed in (("architecture", ARCHITECTURES), ("bk_mode", ("causal", "bidirectional")), ("init", INITS),
                              ("amp_dtype", ("bfloat16", "float16")), ("device", DEVICES),
                              ("mamba_kernel", MAMBA_KERNELS), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES), ("transformer_style", TRANSFORMER_STYLES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.carry_state and self.architecture != "lstm":
            raise ValueError(f"carry_state: only the LSTM carries its state across windows, got architecture "
                             f"{self.architecture!r}; set it to false")
        if self.carry_state and self.shuffle_windows:
            raise ValueError("carry_state: needs windows in text order (shuffle_windows: false), else the carried "
                             "state belongs to another part of the text")
        if self.lr_schedule == "plateau" and self.warmup_steps:
            raise ValueError(f"warmup_steps: only the 'cosine' schedule warms up, got {self.warmup_steps} with "
                             "lr_schedule 'plateau'; set it to 0")
        if self.architecture == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model = {self.d_model} must be divisible by n_heads = {self.n_heads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict):
        reject_unknown_fields(cls, data, "config")
        return cls(**data)


def _method_fields() -> list:
    """``(name, type, field)`` for every method's flag and hyper-parameters, in registry order."""
    out = []
    for m in methods.REGISTRY:
        out.append((m.flag, bool, field(default=m.default)))
        for name, default in m.hyperparameters.items():
            kind = type(default)
            if isinstance(default, (list, tuple)):  # mutable defaults need a factory; JSON gives lists
                out.append((name, list, field(default_factory=lambda d=default: list(d))))
            else:
                out.append((name, kind, field(default=default)))
    return out


BenchmarkConfig = dataclasses.make_dataclass("BenchmarkConfig", _method_fields(), bases=(_CoreConfig,))
BenchmarkConfig.__module__ = __name__  # so that pickling (worker processes) finds it
BenchmarkConfig.__doc__ = (
    "A benchmark run's settings: the core fields above plus, for each optimization method in "
    "resnetbk.methods.REGISTRY, its flag (use_*) and its hyper-parameters."
)


def model_options(config, vocab_size: int) -> ModelOptions:
    """The model a config trains: its base fields, then each enabled method's changes."""
    options = ModelOptions(
        architecture=config.architecture, vocab_size=vocab_size, d_model=config.d_model, n_layers=config.n_layers,
        n_seq=config.n_seq, dropout=config.dropout, tie_embeddings=config.tie_embeddings, head_bias=config.head_bias,
        init=config.init, n_heads=config.n_heads, transformer_style=config.transformer_style, d_ff=config.d_ff,
        final_norm=config.final_norm,
        num_experts=config.num_experts, bk_channels=config.bk_channels, bk_mode=config.bk_mode,
        potential_limit=config.potential_limit, bk_grad="autograd", lstm_hidden=config.lstm_hidden,
        mamba_d_state=config.mamba_d_state, mamba_inner=config.mamba_inner,
        mamba_layers_per_block=config.mamba_layers_per_block, mamba_cuda=_mamba_cuda(config),
    )
    for method in methods.enabled(config):
        options = method.configure_model(options, config)
    return options


def step_shape(config, vocab_size: int, seq: Optional[int] = None) -> StepShape:
    """The training step of ``config`` for the closed-form FLOPs estimate (full windows of
    ``n_seq`` unless ``seq`` is given). The estimate describes the models without optimization
    methods (and with those that do not change what a step executes: ``estimable``)."""
    changing = [m.flag for m in methods.enabled(config) if m.changes_model and not m.estimable]
    if changing:
        raise NotImplementedError(
            f"{', '.join(changing)}: the closed-form estimate covers ResNet-BK and the Transformer without methods "
            "that change what a step executes (partly data-dependent): use the measured trace "
            "(resnetbk.flops.FlopsTracer, or the benchmark's results)")
    return StepShape(model_options(config, vocab_size), batch=config.batch_size, seq=seq,
                     weight_decay=config.weight_decay, decay_norms_biases_embeddings=config.decay_norms_biases_embeddings)


def _mamba_cuda(config) -> bool:
    """Whether Mamba's scan runs through mamba-ssm's CUDA kernel (``mamba_kernel``)."""
    if config.architecture != "mamba" or config.mamba_kernel == "mambapy":
        return False
    if config.mamba_kernel == "mamba_ssm":
        if not mamba_cuda_available():
            raise ValueError("mamba_kernel: 'mamba_ssm' needs a CUDA device and the mamba-ssm package "
                             "(pip install mamba-ssm); use 'mambapy' or 'auto'")
        return True
    return config.device != "cpu" and mamba_cuda_available()


def load_config_file(path: str | Path) -> dict:
    """Fields from a JSON or YAML file (by extension); unknown keys are rejected by ``from_dict``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: no such file: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"--config: {path}:{where}: not valid YAML: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config: {path}: line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a mapping of BenchmarkConfig fields, got {type(data).__name__}")
    return data


def model_config(model_name: str, base):
    """The config of one of the original benchmark's three models, on top of ``base``'s settings."""
    no_methods = {flag: False for flag in OPTIMIZATION_FLAGS}
    if model_name == "transformer_baseline":
        return base.replace(model_name=model_name, architecture="transformer", **no_methods)
    if model_name == "resnet_bk_baseline":
        return base.replace(model_name=model_name, architecture="resnet_bk", **no_methods)
    if model_name == "resnet_bk_full":
        # Every implemented method of the original benchmark (this package's own stay off), but
        # mixed precision where this machine would run it slower than float32 (it says why).
        flags = {flag: flag in methods.ORIGINAL_FLAGS for flag in OPTIMIZATION_FLAGS}
        left_out = dict(base.left_out_methods)
        slow = slow_precision_reason(base)
        if slow is not None and not base.allow_slow_bf16:
            flags["use_mixed_precision"] = False
            left_out["use_mixed_precision"] = f"left out: {slow} (allow_slow_bf16: true keeps it)"
        return base.replace(model_name=model_name, architecture="resnet_bk", left_out_methods=left_out, **flags)
    if model_name in ("lstm", "mamba"):
        return base.replace(model_name=model_name, architecture=model_name, **no_methods)
    raise ValueError(f"--models: expected names from {MODEL_NAMES}, got {model_name!r}")


PRESETS = {
    # The original benchmark's exact configuration.
    "original": dict(),
    # About 10 minutes for all three models on 2 CPU cores; full valid/test evaluation.
    "quick": dict(epochs=1, max_train_tokens=614_400, warmup_steps=15, lr=2e-3),
    # A tiny model trained on 2,000 tokens (the tests' preset): seconds on tiny data; it still evaluates
    # the full validation and test splits it is given (about 3 minutes on WikiText-2 with 2 cores).
    "smoke": dict(d_model=16, n_layers=3, n_seq=16, batch_size=4, epochs=2, max_train_tokens=2_000, eval_batch_size=8),
}
