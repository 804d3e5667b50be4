"""``use_quantization``: quantization-aware training (fake INT8) in a late window, an INT8 export and INT8 inference.

What it does: with torch's own fake-quantization modules (``torch.ao.quantization``, the fbgemm
QAT configuration), every linear layer's weight is fake-quantized per output channel to
symmetric INT8 (a parametrization: the forward, the fused LM head included, reads the rounded
weight; the gradient passes straight through) and its input per tensor to 8 bits (a forward
pre-hook). Left in float: the tiny ``d -> 1`` heads (halting, confidence, gate scores, a
one-channel mixer's potential: one output whose every weight matters, and nothing to save) and
the LM head's input (inference quantizes it per batch from its own range, so a fixed trained
range would model the wrong thing). The BK-Core stays float32. The token embedding's rows are
fake-quantized like a weight (per row, INT8; weight-only, as torch quantizes embeddings).

The QAT window: the fake quantization acts from ``quantization_start_fraction`` of the steps
(0.7: after pruning's window ends at 0.6, the last 30%) and its observers freeze at
``quantization_freeze_fraction`` (0.9), so that the weights settle on fixed ranges for the last
10%; before the window the model trains in float. (Fake-quantizing from the first step, with
observers never frozen, cost +42.9% test perplexity in the quick ablation, while INT8 inference
of the same weights matched float.) ``quantization_mode: ptq`` trains in float and quantizes
after training (per-row scales from each weight's range): the control of the ablation's
``ptq_int8`` row.

With ``quantization_int4_experts`` the experts' weights use 4-bit groups of
``quantization_group_size`` input channels instead (fake-quantized in the same window), exported
packed two values a byte with one scale per group (``methods.export.pack_int4``): 8x smaller for
those matrices, so the claimed 8x can be tested.

After training: the export (``resnetbk.methods.export``: INT8 values with per-channel scales,
packed INT4 groups), its size on disk; and an INT8 CPU inference path through torch's quantized
kernels (``torch.ao.quantization.quantize_dynamic``: INT8 weights per channel, activations
quantized per batch at run time, fbgemm matmuls; the embedding through torch's quantized
embedding), its perplexity and tokens/s on the method-evaluation slice, against the same model
in float32. torch marks its eager-mode quantization as deprecated in favour of the separate
``torchao`` package; it still ships and runs (checked by the tests).

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads): QAT in
the last 30% of the steps (observers frozen at 90%) costs +0.1% test perplexity (it was +42.9% from
step 0); the INT8 export is 4.67 MiB on disk against 17.33 MiB float32 (3.71x smaller: the claim's
4x at 90%, held); INT8 inference perplexity 367.2 against 367.4 in float. The post-training control
(``ptq_int8``: the baseline trained in float, quantized after) reaches the same 3.71x at 367.0
against 367.0: at this size QAT buys nothing over post-training quantization. With pruning as well
(all twelve) the export is 9.67x smaller.

Paper: Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference"; Krishnamoorthi 2018, "Quantizing deep convolutional
networks for efficient inference: A whitepaper" (per-channel weights, QAT late in training with
frozen observers); group-wise INT4 as in GPTQ / AWQ-style weight-only schemes (Frantar et al.
2023; Lin et al. 2024).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..train.evaluate import evaluate
from ..validate import check_bool, check_choice
from .base import Method, check_int, check_number
from .export import describe_export
from .verdict import Factor, judge

_QCONFIG_BACKEND = "fbgemm"
#: qat: fake quantization in a late window of training; ptq: trained in float, quantized after
#: (the control of the ablation's ``ptq_int8`` row).
MODES = ("qat", "ptq")


def weight_fake_quant_module() -> nn.Module:
    """torch's QAT weight fake-quant for x86 (fbgemm): per output channel, symmetric qint8."""
    from torch.ao.quantization import FusedMovingAvgObsFakeQuantize, MovingAveragePerChannelMinMaxObserver

    return FusedMovingAvgObsFakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                         quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)


def activation_fake_quant_module() -> nn.Module:
    """torch's QAT activation fake-quant for fbgemm: per tensor, affine quint8 over the 7-bit
    range fbgemm's kernels need (what ``reduce_range=True`` means, without its deprecation)."""
    from torch.ao.quantization import FusedMovingAvgObsFakeQuantize, MovingAverageMinMaxObserver

    return FusedMovingAvgObsFakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=127,
                                         dtype=torch.quint8, qscheme=torch.per_tensor_affine)


class FakeQuant(nn.Module):
    """A torch FakeQuantize that computes in float32 (autocast-safe), observes in training only
    and while ``observing``, and passes its input through unchanged until ``enabled`` (the QAT
    window: ``Quantization.on_batch_start``)."""

    def __init__(self, fake_quant: nn.Module):
        super().__init__()
        self.fake_quant = fake_quant
        self.enabled, self.observing = True, True
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))  # has its range been seen

    def reset(self) -> None:
        """Forget the observed range (the next observation starts it afresh)."""
        self.fake_quant.activation_post_process.reset_min_max_vals()
        self.observed.fill_(False)

    def forward(self, x):
        if not self.enabled:
            return x
        observe = self.training and self.observing
        self.fake_quant.observer_enabled[0] = int(observe)
        if observe:
            self.observed.fill_(True)
        return self.fake_quant(x.float()).to(x.dtype)


class GroupInt4(nn.Module):
    """Weight-only fake INT4 over groups of ``group`` input channels (symmetric, scale from the
    group's max; straight-through gradient)."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group
        self.enabled = True

    def forward(self, w):
        if not self.enabled:
            return w
        rows, cols = w.shape
        pad = (-cols) % self.group
        g = torch.nn.functional.pad(w, (0, pad)).view(rows, -1, self.group)
        scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 7
        q = torch.clamp(torch.round(g / scale), -8, 7) * scale
        q = q.view(rows, -1)[:, :cols]
        return w + (q - w).detach()


def _input_hook(module, args):
    return (module.input_fake_quant(args[0]), *args[1:])


def _output_hook(module, args, output):
    return module.output_fake_quant(output)


def _bake_parametrizations(module) -> None:
    """A parametrized module of a *copy* as a plain module whose tensors hold the parametrized
    values. (``parametrize.remove_parametrizations`` would delete the property from the class
    that the copy shares with the original, and so break the original.)"""
    if not parametrize.is_parametrized(module):
        return
    values = {name: getattr(module, name).detach().clone() for name in module.parametrizations.keys()}
    module.__class__ = module.__class__.__bases__[0]  # parametrize's generated subclass -> the module's own
    del module._modules["parametrizations"]
    for name, value in values.items():
        module.register_parameter(name, nn.Parameter(value))


def _remove_activation_fake_quant(module) -> None:
    """``module`` without the activations' fake-quant this method attached (hooks and modules)."""
    for hooks, hook in ((module._forward_pre_hooks, _input_hook), (module._forward_hooks, _output_hook)):
        for key in [key for key, fn in hooks.items() if fn is hook]:
            del hooks[key]
    for name in ("input_fake_quant", "output_fake_quant"):
        if name in module._modules:
            del module._modules[name]


def quantized_linears(model) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def weight_fake_quant(module):
    """The weight's ``FakeQuant`` (per-channel INT8) of a quantized module, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, FakeQuant):
            return p
    return None


def int8_scales(model) -> dict:
    """``"<module>.weight" -> per-channel scale`` of every INT8 fake-quantized weight: the scales
    the fake-quant op last used, or, where it never observed (a run stopped before the QAT
    window), the weight's own per-row range."""
    scales = {}
    for name, module in model.named_modules():
        fq = weight_fake_quant(module)
        if fq is not None:
            scales[f"{name}.weight"] = (fq.fake_quant.scale.detach().float().clone() if bool(fq.observed) else
                                        per_row_scales(module.weight.detach()))
    return scales


def per_row_scales(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 scales per row (output channel): the row's largest magnitude over 127."""
    return (weight.abs().amax(dim=1).float() / 127).clamp_min(1e-12)


def quantized_targets(model) -> dict:
    """Name -> module whose weight is quantized: every linear layer but the tiny ``d -> 1``
    heads (halting, confidence, gate scores, a one-channel mixer's potential: a single output
    whose every weight matters, and too small to save anything), and the token embedding."""
    chosen = {name: m for name, m in quantized_linears(model).items() if m.out_features > 1}
    chosen["token_embedding"] = model.token_embedding
    return chosen


class Quantization(Method):
    flag = "use_quantization"
    claim = "4-8x model size"
    version = 2  # the fair-methods form (issue 22)
    acts_on = "the linear layers' weights and inputs, the BK-Core's input and output, the embedding (fake INT8)"
    paper = "Jacob et al. 2018, Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"
    hyperparameters = {"quantization_mode": "qat", "quantization_start_fraction": 0.7,
                       "quantization_freeze_fraction": 0.9, "quantization_int4_experts": False,
                       "quantization_group_size": 32}

    @classmethod
    def validate(cls, config) -> None:
        settings = cls.settings_of(config)
        check_choice(settings, "quantization_mode", MODES)
        check_number(settings, "quantization_start_fraction", low=0.0, high=1.0)
        check_number(settings, "quantization_freeze_fraction", low=settings.quantization_start_fraction, high=1.0,
                     low_open=True)  # observers need some steps of the window to see the ranges
        check_bool(settings, "quantization_int4_experts")
        check_int(settings, "quantization_group_size", low=1)
        if settings.quantization_mode == "ptq" and settings.quantization_int4_experts:
            raise ValueError("quantization_int4_experts: the INT4 experts are trained (qat); with quantization_mode "
                             "ptq set it to false")

    #: Every linear layer is quantized, the other methods' included: they attach first.
    attach_after = ("use_koopman", "use_physics_informed", "use_act", "use_multi_scale", "use_sparse_bk",
                    "use_early_exit", "use_spectral_z")

    @classmethod
    def attach(cls, model, config) -> None:
        settings = cls.settings_of(config)
        if settings.quantization_mode == "ptq":
            return  # trained in float; quantized after training (on_export, on_evaluation)
        for name, module in quantized_targets(model).items():
            if name == "token_embedding":  # rows like a weight, weight-only (as torch quantizes embeddings)
                parametrize.register_parametrization(module, "weight", FakeQuant(weight_fake_quant_module()))
                continue
            if settings.quantization_int4_experts and ".experts." in name:
                parametrize.register_parametrization(module, "weight", GroupInt4(settings.quantization_group_size))
            else:
                parametrize.register_parametrization(module, "weight", FakeQuant(weight_fake_quant_module()))
            if name != "lm_head":  # inference quantizes the head's input per batch (dynamic): no fixed range
                module.input_fake_quant = FakeQuant(activation_fake_quant_module())
                module.register_forward_pre_hook(_input_hook)

    def best_from_step(self, total_steps: int) -> int:
        if self.settings.quantization_mode == "ptq":
            return 0
        return math.ceil(self.settings.quantization_freeze_fraction * total_steps)  # ranges seen and frozen

    def on_batch_start(self, state) -> None:
        # The QAT window: fake quantization from quantization_start_fraction of the steps, its
        # observers frozen from quantization_freeze_fraction (the ranges then stay put while the
        # weights settle on them).
        progress = state.progress.step / max(state.total_steps, 1)
        enabled = progress >= self.settings.quantization_start_fraction
        observing = progress < self.settings.quantization_freeze_fraction
        for module in state.model.modules():
            if isinstance(module, FakeQuant):
                module.enabled, module.observing = enabled, observing
            elif isinstance(module, GroupInt4):
                module.enabled = enabled
        figures = state.figures.setdefault(self.flag, {})
        if enabled and "qat_started_at_step" not in figures:
            # The window opens: every range starts from what the trained model shows now (the
            # observers saw the initial weights once, when the parametrizations were registered).
            for module in state.model.modules():
                if isinstance(module, FakeQuant):
                    module.reset()
            figures["qat_started_at_step"] = state.progress.step
        if enabled and not observing and "observers_frozen_at_step" not in figures:
            figures["observers_frozen_at_step"] = state.progress.step

    def on_evaluation(self, state) -> None:
        for module in state.model.modules():  # the evaluated model is the quantized one
            if isinstance(module, (FakeQuant, GroupInt4)):
                module.enabled = True
        state.figures[self.flag] = {**state.figures.get(self.flag, {}), **int8_inference(state),
                                    "mode": self.settings.quantization_mode}

    def on_export(self, state) -> None:
        # The exported file (methods.export.Exporter) stores these weights as INT8 per channel,
        # the INT4 experts packed two to a byte with their group scales.
        if self.settings.quantization_mode == "ptq":
            scales = {f"{name}.weight": per_row_scales(m.weight.detach())
                      for name, m in quantized_targets(state.model).items()}
        else:
            scales = int8_scales(state.model)
        int4 = {f"{name}.weight": self.settings.quantization_group_size
                for name, m in state.model.named_modules()
                if parametrize.is_parametrized(m, "weight") and any(isinstance(p, GroupInt4)
                                                                      for p in m.parametrizations.weight)}
        state.exports[self.flag] = {"int8_scales": scales, "int4_groups": int4}

    @classmethod
    def assess(cls, row):
        figures = row.figures
        export = figures.get("export")
        if not export:
            return "-", "not measured"
        ratio, own = describe_export(export)
        inference = figures.get("int8_inference")
        if inference:
            own += (f"; INT8 inference ppl {inference['perplexity']:.1f} vs float {figures['float_inference']['perplexity']:.1f}, "
                    f"{inference['tokens_per_second'] / figures['float_inference']['tokens_per_second']:.2f}x tokens/s")
        return own, judge([Factor("export size (4x, the low end of the claimed 4-8x)", ratio, 4)],
                          row.test_perplexity_change_percent, noise_percent=row.perplexity_noise_percent)


def float_copy(model):
    """A float32 copy of ``model`` that computes with its effective weights: every
    parametrization (fake-quant rounding, pruning masks) baked into the weight and removed, the
    activations' fake-quant switched off, the LM head a plain ``nn.Linear`` (what torch's
    quantized kernels accept). Every attached module comes along, so the copy runs the same
    forward; the methods' training aids (Koopman lifts, energy MLPs) are carried, not used."""
    was_training = model.training
    model.eval()  # in training, reading a fake-quantized weight would update its observer
    try:
        plain = copy.deepcopy(model, _last_forward_left_behind(model))
        for module in plain.modules():
            _bake_parametrizations(module)
            _remove_activation_fake_quant(module)
    finally:
        model.train(was_training)
    plain = plain.float()
    head = nn.Linear(plain.lm_head.in_features, plain.lm_head.out_features, bias=plain.lm_head.bias is not None)
    with torch.no_grad():
        head.weight.copy_(plain.lm_head.weight)
        if head.bias is not None:
            head.bias.copy_(plain.lm_head.bias)
    plain.lm_head = head
    return plain.eval()


def _last_forward_left_behind(model) -> dict:
    """A ``deepcopy`` memo that copies what the modules kept of the last forward (auxiliary losses,
    block states: tensors inside an autograd graph, which cannot be deep-copied) as nothing."""
    memo = {}

    def transient(value) -> bool:
        if isinstance(value, torch.Tensor):
            return value.grad_fn is not None
        return isinstance(value, (list, tuple)) and any(transient(v) for v in value)

    for module in model.modules():
        for value in vars(module).values():
            if transient(value):
                memo[id(value)] = None if isinstance(value, torch.Tensor) else type(value)()
    return memo


@contextlib.contextmanager
def quantized_engine(name: str = _QCONFIG_BACKEND):
    """torch's quantized engine set to ``name`` within, and the previous one back after."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def quantize_for_inference(plain):
    """torch's dynamic INT8 quantization of the linear layers (per channel) and the embeddings
    (run it, and the quantized model, inside ``quantized_engine()``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao import quantization as tq

        return tq.quantize_dynamic(copy.deepcopy(plain), {nn.Linear: tq.per_channel_dynamic_qconfig,
                                                          nn.Embedding: tq.float_qparams_weight_only_qconfig})


def int8_inference(state) -> dict:
    """Perplexity and tokens/s of the float32 copy and of its INT8 version on the method-evaluation
    slice (CPU, plain head: torch's quantized linear returns logits)."""
    config = state.config.replace(fused_head=False)
    device = torch.device("cpu")
    plain = float_copy(state.model).to(device)
    figures = {}
    with quantized_engine():
        quantized = quantize_for_inference(plain)
        for key, model in (("float_inference", plain), ("int8_inference", quantized)):
            start = time.perf_counter()
            nll, count = evaluate(model, state.corpus.valid, config, device, max_tokens=config.method_eval_tokens)
            elapsed = time.perf_counter() - start
            figures[key] = {"perplexity": math.exp(nll), "tokens": count,
                            "tokens_per_second": count / max(elapsed, 1e-9), "seconds": elapsed}
    figures["inference_path"] = ("torch.ao.quantization.quantize_dynamic (fbgemm): INT8 per-channel weights, activations "
                                 "quantized per batch at run time; embeddings weight-only 8-bit; the BK-Core, norms "
                                 "and the softmax in float32")
    figures["int4_experts"] = Quantization.settings_of(state.config).quantization_int4_experts
    return figures
