"""``BenchmarkConfig``: every setting the original benchmark had, plus what an honest run needs, validated.

One plain dataclass: the model's settings (``model``, a ``ModelOptions``), the training, data
and execution fields, and one frozen settings object per optimization method (``methods``,
flag -> ``enabled`` and its hyper-parameters; the methods come from ``resnetbk.methods.REGISTRY``,
the original benchmark's twelve, then this package's own). Files (JSON or YAML) nest the same way::

    model: {architecture: resnet_bk, d_model: 64, n_layers: 4, n_seq: 128}
    epochs: 5
    methods: {use_act: {enabled: true, act_threshold: 0.99}}

A key in the older flat layout (``d_model: 64``, ``use_act: true``) is an error naming its new place.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .. import methods
from ..flops.estimate import StepShape
from ..methods.mixed_precision import slow_precision_reason
from ..models import ModelOptions
from ..models.recurrent import mamba_cuda_available
from ..validate import check_choice, check_int, check_number, reject_unknown_fields

OPTIMIZATION_FLAGS = methods.FLAGS
#: The original benchmark's three models, the peers people pick instead (models.recurrent), then
#: the best ResNet-BK variant of the recall study.
MODEL_NAMES = ("transformer_baseline", "resnet_bk_baseline", "resnet_bk_full", "lstm", "mamba", "resnet_bk_selective")
#: ``resnet_bk_selective``: the recall study's best variant (``results/recall``, the harness's
#: ``resnet_bk_selective_gated_64ch_b128``): 64 BK-Core channels with input-dependent couplings up
#: to 128 and the multiplicative read-out (``models.bk_variants``); no optimization method.
RESNET_BK_SELECTIVE = dict(bk_channels=64, bk_coupling="selective", bk_readout="gated", bk_coupling_max=128.0)
#: What ``--models`` runs when not given: the original benchmark's three.
DEFAULT_MODELS = MODEL_NAMES[:3]
MAMBA_KERNELS = ("auto", "mambapy", "mamba_ssm")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "plateau")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class BenchmarkConfig:
    """A benchmark run's settings: the model's (``model``), the training, data and execution
    fields below, and each optimization method's own settings (``methods``: flag -> that
    method's frozen ``Settings``, from the registry). Files nest the same way (``from_dict``)."""

    model_name: str = "resnet_bk_baseline"
    #: The model (architecture, widths, the BK-Core's settings); its vocab_size is set from the data.
    model: ModelOptions = field(default_factory=ModelOptions)
    # Training (the original benchmark's: batch 32, 5 epochs, AdamW lr 1e-3, weight decay 0.01, clip 0.5).
    batch_size: int = 32
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    #: "adamw" (weight decay per parameter_groups) or "sgd" (plain, no momentum: the word_language_model example's).
    optimizer: str = "adamw"
    #: "cosine": linear warmup, then a cosine to lr * min_lr_ratio over the run; "plateau": lr constant
    #: within an epoch and multiplied by plateau_factor after an epoch whose validation loss did not improve.
    lr_schedule: str = "cosine"
    plateau_factor: float = 0.25
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_norms_biases_embeddings: bool = False
    #: The weight of ResNet-BK's MoE load-balancing loss (part of the model, not a method).
    load_balance_weight: float = 0.01
    #: Shuffle the order of the training windows every epoch; false: in text order (as batchify).
    shuffle_windows: bool = True
    #: LSTM only, with shuffle_windows false: each window starts from the state the previous one ended
    #: with (detached; truncated backpropagation through time), in training and evaluation.
    carry_state: bool = False
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
    # Execution.
    device: str = "auto"
    seed: int = 42
    threads: Optional[int] = None
    #: The LM head's loss and gradients computed a block of rows at a time, without the full
    #: logits (``models.head``); False: the plain path (logits, then cross-entropy), to compare.
    fused_head: bool = True
    #: The FLOPs tracer prices every k-th training step (1: all); the others time the throughput.
    flops_trace_interval: int = 10
    #: Mamba's selective scan: "mambapy" (pure PyTorch, any device), "mamba_ssm" (its CUDA kernel),
    #: "auto" (mamba_ssm on CUDA where it is installed, else mambapy).
    mamba_kernel: str = "auto"
    allow_noncausal: bool = False
    #: Methods a model's definition turns on that this run leaves out, flag -> why (e.g. mixed
    #: precision on a CPU without native bf16, for resnet_bk_full); recorded in the results.
    left_out_methods: dict = field(default_factory=dict)
    #: Flag -> the method's settings (``enabled`` and its hyper-parameters; ``methods.REGISTRY``).
    methods: dict = field(default_factory=methods.default_settings)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelOptions):
            raise ValueError(f"model: expected the model's options (a ModelOptions), got {type(self.model).__name__}")
        defaults = ModelOptions()
        for name, source in DERIVED_MODEL_FIELDS.items():
            if getattr(self.model, name) != getattr(defaults, name):
                raise ValueError(f"model.{name}: set by {source} when the model is built (model_options); leave it out")
        self._validate_numbers()
        self._validate_choices()
        methods.validate(self)

    def _validate_numbers(self) -> None:
        for name in ("batch_size", "epochs", "eval_batch_size", "max_consecutive_skips", "method_eval_tokens",
                     "flops_trace_interval"):
            check_int(self, name, low=1)
        for name in ("lr", "grad_clip"):
            check_number(self, name, low=0.0, low_open=True)
        for name in ("weight_decay", "load_balance_weight"):
            check_number(self, name, low=0.0)
        check_number(self, "min_lr_ratio", low=0.0, high=1.0, low_open=True)
        check_number(self, "plateau_factor", low=0.0, high=1.0, low_open=True, high_open=True)
        check_int(self, "warmup_steps", low=0)
        for name, low in (("max_steps", 1), ("max_train_tokens", 2), ("threads", 1), ("valid_curve_interval", 1)):
            check_int(self, name, low=low, optional=True)
        check_number(self, "data_fraction", low=0.0, high=1.0, low_open=True, optional=True)

    def _validate_choices(self) -> None:
        for name, allowed in (("device", DEVICES), ("mamba_kernel", MAMBA_KERNELS), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES)):
            check_choice(self, name, allowed)
        if self.carry_state and self.model.architecture != "lstm":
            raise ValueError(f"carry_state: only the LSTM carries its state across windows, got architecture "
                             f"{self.model.architecture!r}; set it to false")
        if self.carry_state and self.shuffle_windows:
            raise ValueError("carry_state: needs windows in text order (shuffle_windows: false), else the carried "
                             "state belongs to another part of the text")
        if self.lr_schedule == "plateau" and self.warmup_steps:
            raise ValueError(f"warmup_steps: only the 'cosine' schedule warms up, got {self.warmup_steps} with "
                             "lr_schedule 'plateau'; set it to 0")

    # Reading and changing it.

    def enabled(self, flag: str) -> bool:
        """Whether the method ``flag`` is on."""
        return self.methods[flag].enabled

    def replace(self, **changes) -> BenchmarkConfig:
        """A copy with top-level fields changed (``model=`` and ``methods=`` take whole values;
        see ``with_model`` and ``with_methods`` for parts of them)."""
        return dataclasses.replace(self, **changes)

    def with_model(self, **changes) -> BenchmarkConfig:
        """A copy with the model's fields changed (``d_model=16``)."""
        return self.replace(model=self.model.replace(**changes))

    def with_methods(self, **changes) -> BenchmarkConfig:
        """A copy with methods switched (``use_act=True``) or hyper-parameters changed
        (``act_threshold=0.9``: the method that owns the name)."""
        return self.replace(methods=self.method_settings(**changes))

    def method_settings(self, **changes) -> dict:
        """``methods`` with ``changes`` (as ``with_methods`` takes them), for a ``replace`` that
        changes the model and the methods at once."""
        settings = dict(self.methods)
        for name, value in changes.items():
            if name in methods.BY_FLAG:
                settings[name] = dataclasses.replace(settings[name], enabled=value)
            elif name in HYPERPARAMETER_OWNER:
                owner = HYPERPARAMETER_OWNER[name]
                settings[owner] = dataclasses.replace(settings[owner], **{name: value})
            else:
                raise ValueError(f"{name}: no method has this flag or hyper-parameter; known: "
                                 f"{', '.join([*methods.FLAGS, *sorted(HYPERPARAMETER_OWNER)])}")
        return settings

    def to_dict(self) -> dict:
        """The nested dict a file holds (``from_dict`` reads it back)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model"] = {k: v for k, v in dataclasses.asdict(self.model).items() if k not in DERIVED_MODEL_FIELDS}
        data["methods"] = {flag: dataclasses.asdict(s) for flag, s in self.methods.items()}
        return copy.deepcopy(data)

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkConfig:
        """From a nested dict (a config file, the results' ``config``): ``model:`` and ``methods:``
        hold their parts; any part may be left out (its defaults). A key of the older flat layout
        is an error that names its new place."""
        data = dict(data)
        top = {f.name for f in dataclasses.fields(cls)}
        misplaced = [f"{key}: now {new_place(key)}" for key in data if key not in top and new_place(key)]
        if misplaced:
            raise ValueError("config keys in their old flat places (model and method settings are nested now): "
                             + "; ".join(misplaced))
        reject_unknown_fields(cls, data, "config")
        model = data.pop("model", {}) or {}
        if not isinstance(model, dict):
            raise ValueError(f"model: expected a mapping of the model's fields, got {model!r}")
        reject_unknown_fields(ModelOptions, model, "model")
        data["model"] = ModelOptions(**model)
        data["methods"] = _method_settings(data.pop("methods", {}) or {})
        return cls(**data)


#: The model's fields a run derives (``model_options``), not settings: left at their defaults in the
#: config and out of its files and results, which would otherwise state what did not run.
DERIVED_MODEL_FIELDS = {"vocab_size": "the data's vocabulary", "bk_grad": "use_analytic_gradient",
                        "mamba_cuda": "mamba_kernel and the device"}
#: Hyper-parameter name -> the flag of the method that owns it.
HYPERPARAMETER_OWNER = {name: m.flag for m in methods.REGISTRY for name in m.hyperparameters}
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelOptions))


def new_place(key: str) -> Optional[str]:
    """Where a key of the older flat config layout lives now (None: it was never one)."""
    if key in MODEL_FIELDS:
        return f"model.{key}"
    if key in methods.BY_FLAG:
        return f"methods.{key}.enabled"
    if key in HYPERPARAMETER_OWNER:
        return f"methods.{HYPERPARAMETER_OWNER[key]}.{key}"
    return None


def nest(fields: dict) -> dict:
    """Flat keyword fields (``d_model=16, use_act=True, act_threshold=0.9, epochs=2``) placed where
    the config keeps them (``model``, ``methods``): for code that spells a config out in one
    mapping (the reproduction's protocol, tests). Files must be nested already (``from_dict``)."""
    out: dict = {}
    for key, value in fields.items():
        place = new_place(key)
        if place is None:
            out = merge(out, {key: value})
        elif place.startswith("model."):
            out = merge(out, {"model": {key: value}})
        else:
            _, flag, name = place.split(".")
            out = merge(out, {"methods": {flag: {name: value}}})
    return out


def _method_settings(data: dict) -> dict:
    """``methods:`` of a file (flag -> its fields, any left out) as settings objects."""
    if not isinstance(data, dict):
        raise ValueError(f"methods: expected a mapping of method flags to their settings, got {data!r}")
    settings = methods.default_settings()
    for flag, fields in data.items():
        if flag not in settings:
            raise ValueError(f"methods: unknown method {flag!r}; known: {', '.join(methods.FLAGS)}")
        if not isinstance(fields, dict):
            raise ValueError(f"methods.{flag}: expected a mapping (enabled and its hyper-parameters), got {fields!r}")
        reject_unknown_fields(methods.BY_FLAG[flag].Settings, fields, f"methods.{flag}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}  # JSON gives lists
        settings[flag] = dataclasses.replace(settings[flag], **fields)
    return settings


def flat_view(config: dict) -> dict:
    """A results file's ``config`` as one flat mapping (model fields, flags and hyper-parameters
    beside the rest), whatever its layout: nested (results schema 6 on) or flat (older files)."""
    if "methods" not in config and "model" not in config:
        return dict(config)
    flat = {k: v for k, v in config.items() if k not in ("model", "methods")}
    flat.update(config.get("model", {}))
    for flag, fields in config.get("methods", {}).items():
        flat[flag] = fields.get("enabled", False)
        flat.update({k: v for k, v in fields.items() if k != "enabled"})
    return flat


def model_options(config, vocab_size: int) -> ModelOptions:
    """The model a config trains: its ``model`` with the data's vocabulary, the BK-Core's gradient
    by autograd (the analytic gradient method switches to the exact one) and Mamba's kernel for
    the device, then each enabled method's changes."""
    options = config.model.replace(vocab_size=vocab_size, bk_grad="autograd", mamba_cuda=_mamba_cuda(config))
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
    if config.model.architecture != "mamba" or config.mamba_kernel == "mambapy":
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


def model_config(model_name: str, base: BenchmarkConfig) -> BenchmarkConfig:
    """The config of one of the benchmark's models, on top of ``base``'s settings."""
    off = {flag: False for flag in OPTIMIZATION_FLAGS}
    if model_name in ("transformer_baseline", "resnet_bk_baseline", "lstm", "mamba"):
        architecture = {"transformer_baseline": "transformer", "resnet_bk_baseline": "resnet_bk"}.get(model_name, model_name)
        return base.replace(model_name=model_name, model=base.model.replace(architecture=architecture),
                            methods=base.method_settings(**off))
    if model_name == "resnet_bk_selective":
        return base.replace(model_name=model_name, model=base.model.replace(architecture="resnet_bk", **RESNET_BK_SELECTIVE),
                            methods=base.method_settings(**off))
    if model_name == "resnet_bk_full":
        # Every method of the original benchmark (this package's own stay off), but mixed
        # precision where this machine would run it slower than float32 (it says why).
        flags = {flag: flag in methods.ORIGINAL_FLAGS for flag in OPTIMIZATION_FLAGS}
        left_out = dict(base.left_out_methods)
        slow = slow_precision_reason(base)
        if slow is not None and not base.methods["use_mixed_precision"].allow_slow_bf16:
            flags["use_mixed_precision"] = False
            left_out["use_mixed_precision"] = f"left out: {slow} (allow_slow_bf16: true keeps it)"
        return base.replace(model_name=model_name, left_out_methods=left_out,
                            model=base.model.replace(architecture="resnet_bk"), methods=base.method_settings(**flags))
    raise ValueError(f"--models: expected names from {MODEL_NAMES}, got {model_name!r}")


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` on top, the nested parts (model, methods) merged key by key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


PRESETS = {
    # The original benchmark's exact configuration.
    "original": dict(),
    # One full pass over the training data with the original model and optimizer (510 steps):
    # a budget at which the methods can act (the ablation's rows: ~5-10 minutes each here).
    "epoch": dict(epochs=1),
    # About 10 minutes for all three models on 2 CPU cores; full valid/test evaluation.
    "quick": dict(epochs=1, max_train_tokens=614_400, warmup_steps=15, lr=2e-3),
    # A tiny model trained on 2,000 tokens (the tests' preset): seconds on tiny data; it still evaluates
    # the full validation and test splits it is given (about 3 minutes on WikiText-2 with 2 cores).
    "smoke": dict(model=dict(d_model=16, n_layers=3, n_seq=16), batch_size=4, epochs=2, max_train_tokens=2_000,
                  eval_batch_size=8),
}
