"""Closed-form FLOPs of one training step from a configuration, without running anything.

The estimate lists the operations a training step of each model executes (the same names and
shapes the tracer records, module by module, forward and backward) and prices them with the
same Rust engine, so measured and estimated figures follow one price list. Assumptions: the
MoE router spreads tokens evenly over the experts (top-1: the expert FLOPs only depend on the
number of tokens; an expert that gets no token in a step also skips its optimizer update in
the measured trace, which the estimate does not foresee), dropout is active (training mode, ``dropout > 0``), attention runs the
math path that training with attention dropout uses on CPU, and the loss is the mean
cross-entropy plus the load-balancing term. Index bookkeeping that prices at 0 is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .. import _native
from ..models import ModelOptions, build_model
from ..models.parameter_groups import parameter_groups


@dataclass
class StepShape:
    """What a training step's FLOPs depend on: the model (its ``ModelOptions``), the batch, the
    sequence length of the step (default the model's ``n_seq``) and the optimizer's groups."""

    options: ModelOptions
    batch: int
    seq: Optional[int] = None
    weight_decay: float = 0.01
    decay_norms_biases_embeddings: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.options, ModelOptions):
            raise TypeError(f"options: expected a ModelOptions, got {type(self.options).__name__}")
        self.seq = self.seq or self.options.n_seq


@dataclass
class _Ops:
    records: list = field(default_factory=list)

    def op(self, phase, component, name, inputs, outputs=None, *, complex=False, detail="", count=1):
        if count <= 0:
            return
        outputs = outputs if outputs is not None else [inputs[0]] if inputs else []
        self.records.append((name, [list(s) for s in inputs], [list(s) for s in outputs], complex, detail, phase,
                             component, count))

    def elementwise(self, phase, component, name, numel, count=1, *, complex=False):
        self.op(phase, component, f"aten.{name}", [(numel,)], complex=complex, count=count)

    def linear(self, component, tokens, fan_in, fan_out, bias=True):
        """``y = x W^T + b`` on ``tokens`` rows: addmm forward; grad input, grad weight (and bias) backward."""
        if tokens <= 0:
            return
        if bias:
            self.op("forward", component, "aten.addmm", [(fan_out,), (tokens, fan_in), (fan_in, fan_out)])
        else:
            self.op("forward", component, "aten.mm", [(tokens, fan_in), (fan_in, fan_out)])
        self.op("backward", component, "aten.mm", [(tokens, fan_out), (fan_out, fan_in)])
        self.op("backward", component, "aten.mm", [(fan_out, tokens), (tokens, fan_in)])
        if bias:
            self.op("backward", component, "aten.sum", [(tokens, fan_out)])

    def layer_norm(self, component, tokens, d):
        self.op("forward", component, "aten.native_layer_norm", [(tokens, d), (d,), (d,)])
        self.op("backward", component, "aten.native_layer_norm_backward", [(tokens, d), (tokens, d)])

    def dropout(self, component, numel, active):
        if not active or numel <= 0:
            return
        for name in ("bernoulli_", "div_", "mul"):
            self.elementwise("forward", component, name, numel)
        self.elementwise("backward", component, "mul", numel)


def _transformer_block(ops: _Ops, s: StepShape, i: int) -> None:
    t, d, b, n, h = s.batch * s.seq, s.options.d_model, s.batch, s.seq, s.options.n_heads
    dh, drop = d // h, s.options.dropout > 0
    blk = f"blocks.{i}"
    ops.layer_norm(f"{blk}.norm1", t, d)
    ops.linear(f"{blk}.attention.qkv", t, d, 3 * d)
    att = f"{blk}.attention"
    scores = b * h * n * n
    ops.elementwise("forward", att, "mul", t * d, count=2)  # q and k scaling
    ops.op("forward", att, "aten.where", [(n, n)])  # the causal mask
    ops.op("forward", att, "aten.bmm", [(b * h, n, dh), (b * h, dh, n)])
    ops.elementwise("forward", att, "add", scores)
    ops.op("forward", att, "aten._safe_softmax", [(b, h, n, n)])
    ops.dropout(att, scores, drop)
    ops.op("forward", att, "aten.bmm", [(b * h, n, n), (b * h, n, dh)])
    ops.op("backward", att, "aten.bmm", [(b * h, n, n), (b * h, n, dh)], count=2)
    ops.op("backward", att, "aten.bmm", [(b * h, n, dh), (b * h, dh, n)])
    ops.op("backward", att, "aten.bmm", [(b * h, dh, n), (b * h, n, n)])
    ops.op("backward", att, "aten._softmax_backward_data", [(b, h, n, n), (b, h, n, n)])
    ops.elementwise("backward", att, "mul", t * d, count=2)
    ops.linear(f"{blk}.attention.proj", t, d, d)
    ops.dropout(f"{blk}.attention.resid_dropout", t * d, drop)
    ops.layer_norm(f"{blk}.norm2", t, d)
    ops.linear(f"{blk}.mlp.0", t, d, 4 * d)
    ops.elementwise("forward", f"{blk}.mlp.1", "gelu", t * 4 * d)
    ops.op("backward", f"{blk}.mlp.1", "aten.gelu_backward", [(t * 4 * d,), (t * 4 * d,)])
    ops.linear(f"{blk}.mlp.2", t, 4 * d, d)
    ops.dropout(f"{blk}.mlp.3", t * d, drop)
    ops.elementwise("forward", blk, "add", t * d, count=2)  # the two residual adds
    ops.elementwise("backward", blk, "add", t * d, count=2)  # gradients of both branches meet


def _resnet_bk_block(ops: _Ops, s: StepShape, i: int) -> None:
    t, d, e, c = s.batch * s.seq, s.options.d_model, s.options.num_experts, s.options.bk_channels
    drop, blk = s.options.dropout > 0, f"blocks.{i}"
    ops.layer_norm(f"{blk}.norm", t, d)
    moe = f"{blk}.moe"
    ops.linear(f"{moe}.router", t, d, e)
    ops.op("forward", moe, "aten._softmax", [(t, e)])
    ops.op("backward", moe, "aten._softmax_backward_data", [(t, e), (t, e)])
    ops.op("forward", moe, "aten.max", [(t, e)], [(t,), (t,)])
    ops.op("backward", moe, "aten.scatter", [(t, e), (t, 1), (t, 1)], [(t, e)])  # max's backward
    ops.op("backward", moe, "aten.add", [(t, e), (t, e)])  # the probabilities' two gradients meet
    # Rows grouped by expert (models.resnet_bk: a stable sort, its inverse permutation, gathers
    # in and out, the experts' outputs concatenated) and scaled by the chosen probability.
    ops.op("forward", moe, "aten.sort", [(t,)], [(t,), (t,)])
    ops.op("forward", moe, "aten.scatter_", [(t,), (t,), (t,)], [(t,)])
    base, extra = divmod(t, e)
    routed = [base + (1 if x < extra else 0) for x in range(e)]  # even routing
    for phase in ("forward", "backward"):
        ops.op(phase, moe, "aten.index_select", [(t, d), (t,)], [(t, d)], count=2)
        ops.op(phase, moe, "aten.index_select", [(t,), (t,)], [(t,)])
        ops.op(phase, moe, "aten.cat", [(r, d) for r in routed if r], [(t, d)])
    ops.op("forward", moe, "aten.mul", [(t, d), (t, 1)], [(t, d)])
    ops.op("backward", moe, "aten.mul", [(t, d), (t, 1)], [(t, d)])
    ops.op("backward", moe, "aten.mul", [(t, d), (t, d)], [(t, d)])
    ops.op("backward", moe, "aten.sum", [(t, d)], [(t, 1)])
    for x, tokens in enumerate(routed):
        expert = f"{moe}.experts.{x}"
        ops.linear(f"{expert}.0", tokens, d, 2 * d)
        ops.elementwise("forward", f"{expert}.1", "relu", tokens * 2 * d)
        ops.op("backward", f"{expert}.1", "aten.threshold_backward", [(tokens * 2 * d,), (tokens * 2 * d,)])
        ops.linear(f"{expert}.2", tokens, 2 * d, d)
    # Load balancing: bincount, fractions, mean probabilities, their product.
    ops.op("forward", moe, "aten.bincount", [(t,)])
    ops.elementwise("forward", moe, "div", e)
    ops.op("forward", moe, "aten.mean", [(t, e)], [(e,)])
    ops.elementwise("forward", moe, "mul", e)
    ops.op("forward", moe, "aten.sum", [(e,)])
    ops.elementwise("backward", moe, "mul", e)
    ops.elementwise("backward", moe, "div", t * e)
    if s.options.no_mixer:  # the control without the mixer: the residual update is the feed-forward's
        ops.elementwise("forward", blk, "add", t * d)
        ops.dropout(f"{blk}.resid_dropout", t * d, drop)
        ops.elementwise("backward", f"{blk}.norm", "add", t * d)
        return
    # The BK-Core mixer.
    bk = f"{blk}.bk"
    ops.linear(f"{bk}.v_proj", t, d, c)
    for name in ("div", "tanh", "mul", "add"):  # soft clamp and H = H0 + diag(v)
        ops.elementwise("forward", bk, name, t * c)
    ops.elementwise("backward", bk, "mul", t * c)
    ops.op("backward", bk, "aten.tanh_backward", [(t * c,), (t * c,)])
    ops.elementwise("backward", bk, "div", t * c)
    rows = (s.batch, c, s.seq)
    ops.op("forward", bk, "resnetbk.bk_core", [rows, (s.seq - 1,), rows[:2]], complex=True, detail=s.options.bk_mode)
    ops.op("backward", bk, "resnetbk.bk_core_backward", [rows, rows, (s.seq - 1,), rows[:2]], complex=True,
           detail=s.options.bk_mode)
    ops.elementwise("backward", bk, "add", t * c, complex=True)  # Re and Im gradients combine
    ops.linear(f"{bk}.output_proj", t, 2 * c, d)
    ops.elementwise("forward", bk, "mul", t * d)  # bk_scale
    ops.elementwise("backward", bk, "mul", t * d, count=2)
    ops.op("backward", bk, "aten.sum", [(t, d)])
    ops.elementwise("backward", f"{bk}.v_proj", "add", t * d)  # ffn_out feeds both the sum and the mixer
    ops.elementwise("forward", blk, "add", t * d, count=2)
    ops.dropout(f"{blk}.resid_dropout", t * d, drop)  # on the residual branch
    ops.elementwise("backward", f"{blk}.norm", "add", t * d)


def step_ops(s: StepShape) -> list:
    """The engine records of one training step (forward, backward, AdamW update)."""
    blocks = {"transformer": _transformer_block, "resnet_bk": _resnet_bk_block}
    if s.options.architecture not in blocks:
        raise ValueError(f"architecture: the closed-form estimate covers {tuple(blocks)}, not "
                         f"{s.options.architecture!r}; measure it with the execution tracer (flops.FlopsTracer)")
    if s.options.architecture == "resnet_bk" and s.options.bk_variant:
        raise ValueError(f"bk_coupling/bk_readout/bk_write: the closed-form estimate covers the fixed couplings, the "
                         f"complex read-out and the linear write, not {s.options.bk_coupling!r}/{s.options.bk_readout!r}/"
                         f"{s.options.bk_write!r}; measure it with the execution tracer (flops.FlopsTracer)")
    ops = _Ops()
    t, d, v = s.batch * s.seq, s.options.d_model, s.options.vocab_size
    ops.elementwise("forward", "model (top level)", "add", t * d)  # token + position embeddings
    ops.op("backward", "model (top level)", "aten.sum", [(t, d)])
    ops.dropout("dropout", t * d, s.options.dropout > 0)
    ops.op("backward", "token_embedding", "aten.embedding_dense_backward", [(t, d)])
    ops.op("backward", "position_embedding", "aten.embedding_dense_backward", [(s.seq, d)])
    block = blocks[s.options.architecture]
    for i in range(s.options.n_layers):
        block(ops, s, i)
    ops.layer_norm("final_norm", t, d)
    ops.linear("lm_head", t, d, v, bias=s.options.head_bias)
    if s.options.tie_embeddings:
        ops.elementwise("backward", "token_embedding", "add", v * d)  # the tied weight's two gradients
    loss = "(outside modules)"
    ops.op("forward", loss, "aten._log_softmax", [(t, v)])
    ops.op("backward", loss, "aten._log_softmax_backward_data", [(t, v), (t, v)])
    ops.op("forward", loss, "aten.nll_loss_forward", [(t, v), (t,)])
    ops.op("backward", loss, "aten.nll_loss_backward", [(), (t, v), (t,)])
    _optimizer(ops, s)
    return ops.records


def _optimizer(ops: _Ops, s: StepShape) -> None:
    """AdamW over the parameter groups the benchmark builds (decay on weight matrices)."""
    with torch.device("meta"):  # parameter shapes only: nothing is allocated or run
        model = build_model(s.options.replace(n_seq=max(s.options.n_seq, s.seq)))
    groups = {True: [], False: []}
    for group in parameter_groups(model, s.decay_norms_biases_embeddings, s.weight_decay):
        decay = group["weight_decay"] > 0
        groups[decay].extend(tuple(p.shape) for p in group["params"])
    for decay, shapes in groups.items():
        if shapes:
            ops.op("optimizer", "optimizer", "optimizer.adamw", shapes, [], detail="weight_decay" if decay else "")


def estimate_step(s: StepShape) -> dict:
    """The priced closed-form trace of one training step (same report layout as the tracer's)."""
    return _native.price_trace(step_ops(s))
