//! The price list: FLOPs of one operation from its shapes.
//!
//! Conventions (stated once, used everywhere):
//! * 1 multiply-add = 2 FLOPs; a real add, multiply, division, comparison or max is 1 FLOP;
//!   a transcendental (exp, log, tanh, sqrt, rsqrt, erf) is 1 FLOP.
//! * Complex tensors: a complex multiply is 6 real FLOPs, an add 2, so a complex matmul MAC is
//!   8 (4x the real count) and complex elementwise ops count 2x per element (6x for products).
//! * Matmul-family ops are priced exactly as `torch.utils.flop_counter.FlopCounterMode` prices
//!   them (2 m n k; bias adds of `addmm` go to the elementwise category), so the two can be
//!   cross-checked. Fused attention kernels are priced at their full (non-causal) score matrix,
//!   as FlopCounterMode does; a causal kernel can skip about half of that, which the report states.
//! * Data movement (views, copies, indexing, allocation) is known and priced 0.
//! * Optimizer updates are priced per parameter element (see [`optimizer_cost`]).

use crate::Category;

/// One traced operation: `name` is the op (e.g. `aten.mm`, `resnetbk.bk_core`,
/// `optimizer.adamw`), `inputs`/`outputs` the shapes of its tensor arguments and results in
/// order, `complex` whether its inputs are complex, `detail` an op-specific string (the
/// BK-Core mode, whether an optimizer group has weight decay).
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub name: String,
    pub inputs: Vec<Vec<usize>>,
    pub outputs: Vec<Vec<usize>>,
    pub complex: bool,
    pub detail: String,
}

/// Real FLOPs per position of the BK-Core as the Rust kernels execute it (causal, bidirectional).
pub const BK_FORWARD_PER_ELEMENT: (u64, u64) = (12, 12 + 22);
/// The backward recomputes the sweeps it needs; that recomputation is included.
pub const BK_BACKWARD_PER_ELEMENT: (u64, u64) = (12 + 21, 12 + 55 + 23);

fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

fn first_output(op: &Op) -> u64 {
    op.outputs.first().map(|s| numel(s)).unwrap_or(0)
}

fn first_input(op: &Op) -> u64 {
    op.inputs.first().map(|s| numel(s)).unwrap_or(0)
}

/// `(m, k, n)` of a 2-D product `a @ b`.
fn mm_dims(a: &[usize], b: &[usize]) -> Option<(u64, u64, u64)> {
    match (a, b) {
        ([m, k], [k2, n]) if k == k2 => Some((*m as u64, *k as u64, *n as u64)),
        _ => None,
    }
}

/// `(batch, m, k, n)` of a batched product.
fn bmm_dims(a: &[usize], b: &[usize]) -> Option<(u64, u64, u64, u64)> {
    match (a, b) {
        ([bt, m, k], [bt2, k2, n]) if bt == bt2 && k == k2 => Some((*bt as u64, *m as u64, *k as u64, *n as u64)),
        _ => None,
    }
}

/// Per-element cost of elementwise ops (real tensors), by the op's base name.
fn elementwise_cost(base: &str) -> Option<u64> {
    Some(match base {
        "add" | "sub" | "mul" | "div" | "neg" | "relu" | "threshold_backward" | "abs" | "eq" | "ne" | "lt" | "gt"
        | "le" | "ge" | "where" | "maximum" | "minimum" | "clamp" | "clamp_min" | "clamp_max" | "sign"
        | "reciprocal" | "exp" | "log" | "tanh" | "sqrt" | "rsqrt" | "erf" | "square" | "pow" | "rsub"
        | "masked_fill" | "bernoulli" | "conj_physical" | "native_dropout_backward" | "isfinite" | "isnan"
        | "isinf" | "logical_and" | "logical_or" | "logical_not" | "bitwise_and" | "bitwise_or" | "bitwise_not"
        | "round" => 1,
        "native_dropout" => 2,
        // sgn of a complex x is x / |x|: |x| (2 multiplies, an add, a square root) and two
        // divisions make 6 real FLOPs, i.e. 3 here times the complex factor 2.
        "lerp" | "addcmul" | "addcdiv" | "tanh_backward" | "sgn" => 3,
        "sigmoid" => 4,
        // grad * y * (1 - y)
        "sigmoid_backward" => 3,
        // max(x, 0) - x t + log(1 + exp(-|x|)): abs, neg, exp, add, log, mul, sub, max, add
        "binary_cross_entropy_with_logits" => 9,
        // log(1 + exp(x)): exp, add, log; its gradient is grad * sigmoid(x).
        "softplus" => 3,
        "softplus_backward" => 5,
        // (x - y)^2 summed: sub, mul, add; the gradient 2 (x - y) grad / n: sub, mul, mul.
        "mse_loss" | "mse_loss_backward" => 3,
        // Quantization-aware training's fused observer and fake-quant (torch.ao): min and max
        // (2), then x / scale, round, + zero point, clamp (2), - zero point, * scale.
        "_fused_moving_avg_obs_fq_helper" => 9,
        "gelu" => 5,
        "gelu_backward" => 11,
        // x sigmoid(x); its gradient grad s (1 + x (1 - s)) recomputes s.
        "silu" => 5,
        "silu_backward" => 9,
        _ => return None,
    })
}

/// Ops that move or allocate data and compute nothing.
fn is_data_movement(base: &str) -> bool {
    matches!(
        base,
        "view" | "_unsafe_view" | "reshape" | "_reshape_alias" | "alias" | "t" | "transpose" | "permute" | "expand"
            | "unsqueeze" | "squeeze" | "select" | "slice" | "detach" | "clone" | "_to_copy" | "copy" | "copy_"
            | "zeros_like" | "empty_like" | "ones_like" | "full" | "full_like" | "zeros" | "ones" | "empty"
            | "empty_strided" | "new_empty_strided" | "new_zeros" | "new_empty" | "new_full" | "new_ones" | "arange" | "lift_fresh"
            | "stack" | "cat" | "view_as_real" | "view_as_complex" | "unbind" | "split" | "split_with_sizes"
            | "scalar_tensor" | "_local_scalar_dense" | "tril" | "triu" | "fill" | "zero" | "as_strided"
            | "index" | "index_select" | "index_copy" | "gather" | "scatter" | "index_put" | "select_backward"
            | "slice_backward" | "resolve_conj" | "resolve_neg" | "_conj" | "embedding" | "randperm"
            | "constant_pad_nd" | "flip" | "repeat" | "unfold" | "diagonal" | "diag_embed" | "eye"
            // Random number generation is not counted as arithmetic.
            | "randn" | "rand" | "randint" | "randn_like" | "rand_like" | "normal" | "uniform"
    )
}

/// Per-parameter-element cost of an optimizer update, as PyTorch's implementations execute it.
///
/// AdamW: decoupled decay 1 (param *= 1 - lr wd), first moment lerp 3, second moment 1 + 3
/// (mul, addcmul), denominator 3 (sqrt, divide by the bias correction, add eps), update 3
/// (addcdiv) = 14; without decay 13. Adam: 13, plus 2 for L2 decay folded into the gradient.
/// SGD: 2 (param -= lr g); with momentum +2 (buf = m buf + g); with decay +2.
pub fn optimizer_cost(kind: &str, weight_decay: bool) -> Option<u64> {
    Some(match (kind, weight_decay) {
        ("adamw", true) => 14,
        ("adamw", false) | ("adam", false) => 13,
        ("adam", true) => 15,
        ("sgd_momentum", wd) => 4 + if wd { 2 } else { 0 },
        ("sgd", wd) => 2 + if wd { 2 } else { 0 },
        _ => return None,
    })
}

/// FLOPs of one LSTM layer over a sequence (forward) from its input `(.., I)` and recurrent
/// weight `(4H, H)`: the gate pre-activations `2 T (4H)(I + H)` as matmul, and per cell element
/// 30 elementwise FLOPs (two bias adds and the sum of the two products over 4H, three sigmoids,
/// two tanh, `c = f c + i g`, `h = o tanh c`). The backward is priced at twice both (gradients
/// for the inputs and the weights; the gate derivatives, which reuse saved activations, at
/// 2x the forward's elementwise work: an estimate, the fused kernels do not expose it).
fn lstm_layer(input: &[usize], w_hh: &[usize], backward: bool) -> Option<Vec<(Category, u64)>> {
    let (i, h) = (*input.last()? as u64, *w_hh.get(1)? as u64);
    let tokens = numel(input) / i.max(1);
    let scale = if backward { 2 } else { 1 };
    Some(vec![(Category::Matmul, scale * 2 * tokens * 4 * h * (i + h)), (Category::Elementwise, scale * 30 * tokens * h)])
}

/// Prices one op: `Some(parts)` with the FLOPs per category, or `None` for an unknown op.
pub fn price(op: &Op) -> Option<Vec<(Category, u64)>> {
    let (namespace, base) = op.name.split_once('.').unwrap_or(("aten", op.name.as_str()));
    let base = base.trim_end_matches('_'); // in-place variants cost the same
    let complex = if op.complex { 4 } else { 1 };
    let ins = &op.inputs;
    match namespace {
        "resnetbk" => {
            // Priced per position of `diag`: the first input of the forward, the second
            // (after the upstream gradient) of the backward.
            let causal = op.detail != "bidirectional";
            let (per, diag) = match (base, causal) {
                ("bk_core", true) => (BK_FORWARD_PER_ELEMENT.0, ins.first()?),
                ("bk_core", false) => (BK_FORWARD_PER_ELEMENT.1, ins.first()?),
                ("bk_core_backward", true) => (BK_BACKWARD_PER_ELEMENT.0, ins.get(1)?),
                ("bk_core_backward", false) => (BK_BACKWARD_PER_ELEMENT.1, ins.get(1)?),
                _ => return None,
            };
            return Some(vec![(Category::BkCore, per * numel(diag))]);
        }
        "optimizer" => {
            let cost = optimizer_cost(base, op.detail == "weight_decay")?;
            let params: u64 = ins.iter().map(|s| numel(s)).sum();
            return Some(vec![(Category::Optimizer, cost * params)]);
        }
        // Collective communication moves data; it computes nothing that counts here.
        "c10d" | "_c10d_functional" => return Some(vec![(Category::DataMovement, 0)]),
        "aten" => {}
        _ => return None,
    }
    let parts = match base {
        "mm" => {
            let (m, k, n) = mm_dims(ins.first()?, ins.get(1)?)?;
            vec![(Category::Matmul, 2 * m * k * n * complex)]
        }
        "addmm" => {
            let (m, k, n) = mm_dims(ins.get(1)?, ins.get(2)?)?;
            vec![(Category::Matmul, 2 * m * k * n * complex), (Category::Elementwise, m * n)]
        }
        "bmm" => {
            let (b, m, k, n) = bmm_dims(ins.first()?, ins.get(1)?)?;
            vec![(Category::Matmul, 2 * b * m * k * n * complex)]
        }
        "baddbmm" => {
            let (b, m, k, n) = bmm_dims(ins.get(1)?, ins.get(2)?)?;
            vec![(Category::Matmul, 2 * b * m * k * n * complex), (Category::Elementwise, b * m * n)]
        }
        "_scaled_dot_product_flash_attention_for_cpu"
        | "_scaled_dot_product_flash_attention"
        | "_scaled_dot_product_efficient_attention"
        | "_scaled_dot_product_cudnn_attention" => {
            let (q, k, v) = (ins.first()?, ins.get(1)?, ins.get(2)?);
            let (bh, sq, d) = (numel(&q[..q.len() - 2]), q[q.len() - 2] as u64, q[q.len() - 1] as u64);
            let (sk, dv) = (k[k.len() - 2] as u64, v[v.len() - 1] as u64);
            vec![(Category::Attention, 2 * bh * sq * sk * d + 2 * bh * sq * sk * dv)]
        }
        "_scaled_dot_product_flash_attention_for_cpu_backward"
        | "_scaled_dot_product_flash_attention_backward"
        | "_scaled_dot_product_efficient_attention_backward"
        | "_scaled_dot_product_cudnn_attention_backward" => {
            // Inputs: grad_out, q, k, v, ...: recompute scores, dP, dV, dQ, dK.
            let (q, k, v) = (ins.get(1)?, ins.get(2)?, ins.get(3)?);
            let (bh, sq, d) = (numel(&q[..q.len() - 2]), q[q.len() - 2] as u64, q[q.len() - 1] as u64);
            let (sk, dv) = (k[k.len() - 2] as u64, v[v.len() - 1] as u64);
            vec![(Category::Attention, 2 * bh * sq * sk * (3 * d + 2 * dv))]
        }
        "native_layer_norm" => vec![(Category::Normalization, 8 * first_input(op))],
        "native_layer_norm_backward" => vec![(Category::Normalization, 14 * first_input(op))],
        "_softmax" | "_safe_softmax" | "_log_softmax" => vec![(Category::Softmax, 5 * first_input(op))],
        "_softmax_backward_data" | "_log_softmax_backward_data" => vec![(Category::Softmax, 4 * first_input(op))],
        "nll_loss_forward" | "nll_loss_backward" => {
            let target = if base == "nll_loss_forward" { ins.get(1)? } else { ins.get(2)? };
            vec![(Category::Loss, numel(target))]
        }
        "embedding_dense_backward" => vec![(Category::Embedding, first_input(op))],
        // One LSTM layer: oneDNN (CPU) and cuDNN (CUDA) kernels; tensor inputs start with the
        // sequence, then the weights `(4H, I)` and `(4H, H)`.
        "mkldnn_rnn_layer" | "_cudnn_rnn" => lstm_layer(ins.first()?, ins.get(2)?, false)?,
        "mkldnn_rnn_layer_backward" | "_cudnn_rnn_backward" => lstm_layer(ins.first()?, ins.get(2)?, true)?,
        // Convolution as FlopCounterMode prices it: 2 x output elements x (input channels per
        // group x kernel size); the backward computes the input's and the weight's gradients
        // (2x), plus the bias gradient's sum over the output.
        "convolution" => {
            let per_output = numel(ins.get(1)?.get(1..)?);
            let out = first_output(op);
            let mut parts = vec![(Category::Matmul, 2 * out * per_output)];
            if ins.len() > 2 {
                parts.push((Category::Elementwise, out));
            }
            parts
        }
        "convolution_backward" => {
            let (grad_out, weight) = (numel(ins.first()?), ins.get(2)?);
            let per_output = numel(weight.get(1..)?);
            vec![(Category::Matmul, 4 * grad_out * per_output), (Category::Reduction, grad_out)]
        }
        "sum" | "mean" | "amax" | "amin" | "max" | "min" | "argmax" | "argmin" | "prod" | "linalg_vector_norm"
        | "norm" | "any" | "all" => vec![(Category::Reduction, first_input(op) * complex.min(2))],
        "index_add" => vec![(Category::Routing, numel(ins.get(2)?))],
        // One add per element of the source (tensor inputs: self, index, src).
        "scatter_add" => vec![(Category::Elementwise, numel(ins.get(2)?))],
        "bincount" | "nonzero" | "topk" | "sort" => vec![(Category::Routing, first_input(op))],
        other => {
            if is_data_movement(other) {
                vec![(Category::DataMovement, 0)]
            } else {
                let per = elementwise_cost(other)?;
                // Complex elementwise: products 6x, the rest 2x.
                let factor = if !op.complex { 1 } else if matches!(other, "mul" | "div") { 6 } else { 2 };
                vec![(Category::Elementwise, per * factor * first_output(op).max(first_input(op)))]
            }
        }
    };
    Some(parts)
}
