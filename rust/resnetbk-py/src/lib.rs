//! `resnetbk._native`: the Rust kernels as a Python extension module.
//!
//! Arrays cross the boundary without copies: the Python side hands in C-contiguous numpy views
//! of torch tensors (inputs and preallocated outputs), and the kernels run with the GIL released.

use bk_core::{backward_batch_masked, forward_batch_masked, Complex, Mode, OffDiagonals};
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1, PyReadwriteArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn parse_mode(mode: &str) -> PyResult<Mode> {
    match mode {
        "causal" => Ok(Mode::Causal),
        "bidirectional" => Ok(Mode::Bidirectional),
        other => Err(PyValueError::new_err(format!(
            "mode: expected 'causal' or 'bidirectional', got {other:?}"
        ))),
    }
}

fn contiguous<'a, T>(name: &str, slice: Result<&'a [T], numpy::AsSliceError>) -> PyResult<&'a [T]> {
    slice.map_err(|_| PyValueError::new_err(format!("{name}: the array must be C-contiguous")))
}

fn contiguous_mut<'a, T>(name: &str, slice: Result<&'a mut [T], numpy::AsSliceError>) -> PyResult<&'a mut [T]> {
    slice.map_err(|_| PyValueError::new_err(format!("{name}: the array must be C-contiguous")))
}

/// The inputs as the kernels take them: `(n, a, off-diagonals, z)`; `lower = None` means
/// symmetric H. Every array must be C-contiguous.
#[allow(clippy::type_complexity)]
fn inputs<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray2<'_, T>,
    upper: &'a PyReadonlyArray2<'_, T>,
    lower: &'a Option<PyReadonlyArray2<'_, T>>,
    z: &'a PyReadonlyArray1<'_, Complex<T>>,
) -> PyResult<(usize, &'a [T], OffDiagonals<'a, T>, &'a [Complex<T>])>
where
    Complex<T>: numpy::Element,
{
    let upper = contiguous("upper", upper.as_slice())?;
    let off = match lower {
        None => OffDiagonals::Symmetric(upper),
        Some(l) => OffDiagonals::General { upper, lower: contiguous("lower", l.as_slice())? },
    };
    Ok((a.shape()[1], contiguous("a", a.as_slice())?, off, contiguous("z", z.as_slice())?))
}

/// Defines the forward and backward entry points for one real dtype.
macro_rules! kernels {
    ($real:ty, $forward:ident, $backward:ident) => {
        /// Forward pass: `out[r, k]` is the resolvent diagonal of row r (see bk_core::sweep).
        /// `a` is (rows, n), `upper` and `lower` (rows, n-1), `lower=None` for symmetric H;
        /// `mask` (rows, n) bool or None: masked outputs are 0.
        #[pyfunction]
        #[pyo3(signature = (a, upper, lower, z, out, mode, threads, mask=None))]
        #[allow(clippy::too_many_arguments)]
        fn $forward(
            py: Python<'_>,
            a: PyReadonlyArray2<'_, $real>,
            upper: PyReadonlyArray2<'_, $real>,
            lower: Option<PyReadonlyArray2<'_, $real>>,
            z: PyReadonlyArray1<'_, Complex<$real>>,
            mut out: PyReadwriteArray2<'_, Complex<$real>>,
            mode: &str,
            threads: usize,
            mask: Option<PyReadonlyArray2<'_, bool>>,
        ) -> PyResult<()> {
            let mode = parse_mode(mode)?;
            let (n, a, off, z) = inputs(&a, &upper, &lower, &z)?;
            let out = contiguous_mut("out", out.as_slice_mut())?;
            let mask = match mask.as_ref() {
                Some(m) => Some(contiguous("mask", m.as_slice())?),
                None => None,
            };
            py.detach(|| forward_batch_masked(a, off, z, mask, mode, n, out, threads))
                .map_err(|e| PyValueError::new_err(e.to_string()))
        }

        /// Exact vector-Jacobian product: fills grad_a, grad_upper, grad_lower (when lower is
        /// given) and grad_z; with `mask`, of the masked forward (masked upstream gradients ignored).
        #[pyfunction]
        #[pyo3(signature = (a, upper, lower, z, grad_out, grad_a, grad_upper, grad_lower, grad_z, mode, threads, mask=None))]
        #[allow(clippy::too_many_arguments)]
        fn $backward(
            py: Python<'_>,
            a: PyReadonlyArray2<'_, $real>,
            upper: PyReadonlyArray2<'_, $real>,
            lower: Option<PyReadonlyArray2<'_, $real>>,
            z: PyReadonlyArray1<'_, Complex<$real>>,
            grad_out: PyReadonlyArray2<'_, Complex<$real>>,
            mut grad_a: PyReadwriteArray2<'_, $real>,
            mut grad_upper: PyReadwriteArray2<'_, $real>,
            mut grad_lower: Option<PyReadwriteArray2<'_, $real>>,
            mut grad_z: PyReadwriteArray1<'_, Complex<$real>>,
            mode: &str,
            threads: usize,
            mask: Option<PyReadonlyArray2<'_, bool>>,
        ) -> PyResult<()> {
            let mode = parse_mode(mode)?;
            let (n, a, off, z) = inputs(&a, &upper, &lower, &z)?;
            let grad_out = contiguous("grad_out", grad_out.as_slice())?;
            let mask = match mask.as_ref() {
                Some(m) => Some(contiguous("mask", m.as_slice())?),
                None => None,
            };
            let grad_a = contiguous_mut("grad_a", grad_a.as_slice_mut())?;
            let grad_upper = contiguous_mut("grad_upper", grad_upper.as_slice_mut())?;
            let grad_lower = match grad_lower.as_mut() {
                Some(g) => Some(contiguous_mut("grad_lower", g.as_slice_mut())?),
                None => None,
            };
            let grad_z = contiguous_mut("grad_z", grad_z.as_slice_mut())?;
            py.detach(|| {
                backward_batch_masked(a, off, z, mask, mode, n, grad_out, grad_a, grad_upper, grad_lower, grad_z, threads)
            })
            .map_err(|e| PyValueError::new_err(e.to_string()))
        }
    };
}

kernels!(f32, bk_forward_f32, bk_backward_f32);
kernels!(f64, bk_forward_f64, bk_backward_f64);

/// One traced op as the tracer hands it over:
/// `(name, input shapes, output shapes, complex, detail, phase, component, count)`.
type TracedOp = (String, Vec<Vec<usize>>, Vec<Vec<usize>>, bool, String, String, String, u64);

/// Prices a trace with the FLOPs engine; returns
/// `{"total", "by_phase", "by_category", "by_component": {component: {phase: flops}}, "by_op", "unknown"}`.
#[pyfunction]
fn price_trace<'py>(py: Python<'py>, records: Vec<TracedOp>) -> PyResult<Bound<'py, PyDict>> {
    let mut parsed = Vec::with_capacity(records.len());
    for (name, inputs, outputs, complex, detail, phase, component, count) in records {
        let phase = flops_engine::Phase::parse(&phase).ok_or_else(|| {
            PyValueError::new_err(format!("phase: expected 'forward', 'backward' or 'optimizer', got {phase:?}"))
        })?;
        let op = flops_engine::Op { name, inputs, outputs, complex, detail };
        parsed.push(flops_engine::Record { op, phase, component, count });
    }
    let report = py.detach(|| flops_engine::aggregate(&parsed));
    let out = PyDict::new(py);
    out.set_item("total", report.total)?;
    out.set_item("by_phase", report.by_phase)?;
    out.set_item("by_category", report.by_category)?;
    out.set_item("by_component", report.by_component)?;
    out.set_item("by_op", report.by_op)?;
    out.set_item("unknown", report.unknown)?;
    Ok(out)
}

/// Real FLOPs per position of the BK-Core: `{"forward": {mode: n}, "backward": {mode: n}}`.
#[pyfunction]
fn bk_flops_per_element<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (phase, (causal, bidirectional)) in
        [("forward", flops_engine::BK_FORWARD_PER_ELEMENT), ("backward", flops_engine::BK_BACKWARD_PER_ELEMENT)]
    {
        let d = PyDict::new(py);
        d.set_item("causal", causal)?;
        d.set_item("bidirectional", bidirectional)?;
        out.set_item(phase, d)?;
    }
    Ok(out)
}

/// FLOPs per parameter element of one optimizer update (`kind`: adamw, adam, sgd, sgd_momentum).
#[pyfunction]
fn optimizer_flops_per_parameter(kind: &str, weight_decay: bool) -> PyResult<u64> {
    flops_engine::optimizer_cost(kind, weight_decay)
        .ok_or_else(|| PyValueError::new_err(format!("kind: unknown optimizer {kind:?}; expected adamw, adam, sgd or sgd_momentum")))
}

/// The LM head's softmax cross-entropy over one vocabulary-major block, in place (see
/// step_kernels::xent): `logits` (vocab, rows) becomes the logits' gradient, `nll` (rows) the
/// rows' NLL (0 where the target is `ignore_index`), `grad_bias` (vocab) is added to; without
/// `gradient` only `nll` is meaningful (and `grad_bias` must be None).
#[pyfunction]
#[pyo3(signature = (logits, targets, ignore_index, nll, grad_bias, gradient, threads))]
#[allow(clippy::too_many_arguments)]
fn softmax_xent_grad_f32(
    py: Python<'_>,
    mut logits: PyReadwriteArray2<'_, f32>,
    targets: PyReadonlyArray1<'_, i64>,
    ignore_index: i64,
    mut nll: PyReadwriteArray1<'_, f32>,
    mut grad_bias: Option<PyReadwriteArray1<'_, f32>>,
    gradient: bool,
    threads: usize,
) -> PyResult<()> {
    let (vocab, rows) = (logits.shape()[0], logits.shape()[1]);
    let logits = contiguous_mut("logits", logits.as_slice_mut())?;
    let targets = contiguous("targets", targets.as_slice())?;
    let nll = contiguous_mut("nll", nll.as_slice_mut())?;
    let grad_bias = match grad_bias.as_mut() {
        Some(b) => Some(contiguous_mut("grad_bias", b.as_slice_mut())?),
        None => None,
    };
    py.detach(|| step_kernels::softmax_xent_grad(logits, vocab, rows, targets, ignore_index, nll, grad_bias, gradient, threads))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Dropout (see step_kernels::dropout): `out = input / keep` where an element is kept
/// (probability `keep`), else 0; element i is numbered `offset + i`; the same `seed` gives the
/// same mask (the backward is this call on the gradient).
#[pyfunction]
#[pyo3(signature = (input, out, keep, seed, offset, threads))]
fn dropout_f32(
    py: Python<'_>,
    input: PyReadonlyArray1<'_, f32>,
    mut out: PyReadwriteArray1<'_, f32>,
    keep: f32,
    seed: u64,
    offset: u64,
    threads: usize,
) -> PyResult<()> {
    if !(keep > 0.0 && keep <= 1.0) {
        return Err(PyValueError::new_err(format!("keep: expected a probability in (0, 1], got {keep}")));
    }
    let input = contiguous("input", input.as_slice())?;
    let out = contiguous_mut("out", out.as_slice_mut())?;
    if input.len() != out.len() {
        return Err(PyValueError::new_err(format!("out: expected {} elements (as input), got {}", input.len(), out.len())));
    }
    py.detach(|| step_kernels::dropout(input, out, keep, seed, offset, threads));
    Ok(())
}

fn attention_shape(batch: usize, seq: usize, heads: usize, head_dim: usize) -> step_kernels::attention::Shape {
    step_kernels::attention::Shape { batch, seq, heads, head_dim }
}

/// Causal multi-head self-attention with dropout on its probabilities (see
/// step_kernels::attention): from `qkv` `(batch, seq, 3, heads, head_dim)` writes `out`
/// `(batch, seq, heads, head_dim)` and `lse` `(batch, heads, seq)`, flat C-contiguous arrays.
#[pyfunction]
#[pyo3(signature = (qkv, out, lse, batch, seq, heads, head_dim, scale, keep, seed, threads))]
#[allow(clippy::too_many_arguments)]
fn causal_attention_forward_f32(
    py: Python<'_>,
    qkv: PyReadonlyArray1<'_, f32>,
    mut out: PyReadwriteArray1<'_, f32>,
    mut lse: PyReadwriteArray1<'_, f32>,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    keep: f32,
    seed: u64,
    threads: usize,
) -> PyResult<()> {
    let qkv = contiguous("qkv", qkv.as_slice())?;
    let out = contiguous_mut("out", out.as_slice_mut())?;
    let lse = contiguous_mut("lse", lse.as_slice_mut())?;
    let dropout = step_kernels::attention::Dropout { keep, seed };
    py.detach(|| {
        step_kernels::attention::forward(qkv, out, lse, attention_shape(batch, seq, heads, head_dim), scale, dropout, threads)
    })
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The backward of `causal_attention_forward_f32`: writes `grad_qkv` (as `qkv`) from `grad_out`
/// (as `out`) and the forward's `lse`, with the forward's `scale`, `keep` and `seed`.
#[pyfunction]
#[pyo3(signature = (qkv, grad_out, lse, grad_qkv, batch, seq, heads, head_dim, scale, keep, seed, threads))]
#[allow(clippy::too_many_arguments)]
fn causal_attention_backward_f32(
    py: Python<'_>,
    qkv: PyReadonlyArray1<'_, f32>,
    grad_out: PyReadonlyArray1<'_, f32>,
    lse: PyReadonlyArray1<'_, f32>,
    mut grad_qkv: PyReadwriteArray1<'_, f32>,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    keep: f32,
    seed: u64,
    threads: usize,
) -> PyResult<()> {
    let qkv = contiguous("qkv", qkv.as_slice())?;
    let grad_out = contiguous("grad_out", grad_out.as_slice())?;
    let lse = contiguous("lse", lse.as_slice())?;
    let grad_qkv = contiguous_mut("grad_qkv", grad_qkv.as_slice_mut())?;
    let dropout = step_kernels::attention::Dropout { keep, seed };
    let shape = attention_shape(batch, seq, heads, head_dim);
    py.detach(|| step_kernels::attention::backward(qkv, grad_out, lse, grad_qkv, shape, scale, dropout, threads))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

type Array<'py> = PyReadonlyArray1<'py, f32>;

/// The scan's six inputs as the kernel takes them (every array C-contiguous).
fn scan_inputs<'a>(arrays: [&'a Array<'_>; 6]) -> PyResult<step_kernels::selective_scan::Inputs<'a>> {
    let [x, delta, a, b, c, d] = arrays;
    Ok(step_kernels::selective_scan::Inputs {
        x: contiguous("x", x.as_slice())?,
        delta: contiguous("delta", delta.as_slice())?,
        a: contiguous("a", a.as_slice())?,
        b: contiguous("b", b.as_slice())?,
        c: contiguous("c", c.as_slice())?,
        d: contiguous("d", d.as_slice())?,
    })
}

fn scan_shape(batch: usize, seq: usize, channels: usize, states: usize) -> step_kernels::selective_scan::Shape {
    step_kernels::selective_scan::Shape { batch, seq, channels, states }
}

/// Mamba's selective scan (see step_kernels::selective_scan): from `x`, `delta` `(batch, seq,
/// channels)`, `a` `(channels, states)`, `b`, `c` `(batch, seq, states)` and `d` `(channels)`
/// writes `y` `(batch, seq, channels)`; flat C-contiguous float32 arrays.
#[pyfunction]
#[pyo3(signature = (x, delta, a, b, c, d, y, batch, seq, channels, states, threads))]
#[allow(clippy::too_many_arguments)]
fn selective_scan_forward_f32(
    py: Python<'_>,
    x: PyReadonlyArray1<'_, f32>,
    delta: PyReadonlyArray1<'_, f32>,
    a: PyReadonlyArray1<'_, f32>,
    b: PyReadonlyArray1<'_, f32>,
    c: PyReadonlyArray1<'_, f32>,
    d: PyReadonlyArray1<'_, f32>,
    mut y: PyReadwriteArray1<'_, f32>,
    batch: usize,
    seq: usize,
    channels: usize,
    states: usize,
    threads: usize,
) -> PyResult<()> {
    let inputs = scan_inputs([&x, &delta, &a, &b, &c, &d])?;
    let y = contiguous_mut("y", y.as_slice_mut())?;
    let shape = scan_shape(batch, seq, channels, states);
    py.detach(|| step_kernels::selective_scan::forward(inputs, y, shape, threads))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The backward of `selective_scan_forward_f32`: writes the gradients of all six inputs from
/// `grad_y` (as `y`); `grads` is `(grad_x, grad_delta, grad_a, grad_b, grad_c, grad_d)`.
#[pyfunction]
#[pyo3(signature = (x, delta, a, b, c, d, grad_y, grads, batch, seq, channels, states, threads))]
#[allow(clippy::too_many_arguments)]
fn selective_scan_backward_f32(
    py: Python<'_>,
    x: PyReadonlyArray1<'_, f32>,
    delta: PyReadonlyArray1<'_, f32>,
    a: PyReadonlyArray1<'_, f32>,
    b: PyReadonlyArray1<'_, f32>,
    c: PyReadonlyArray1<'_, f32>,
    d: PyReadonlyArray1<'_, f32>,
    grad_y: PyReadonlyArray1<'_, f32>,
    grads: (
        PyReadwriteArray1<'_, f32>,
        PyReadwriteArray1<'_, f32>,
        PyReadwriteArray1<'_, f32>,
        PyReadwriteArray1<'_, f32>,
        PyReadwriteArray1<'_, f32>,
        PyReadwriteArray1<'_, f32>,
    ),
    batch: usize,
    seq: usize,
    channels: usize,
    states: usize,
    threads: usize,
) -> PyResult<()> {
    let inputs = scan_inputs([&x, &delta, &a, &b, &c, &d])?;
    let grad_y = contiguous("grad_y", grad_y.as_slice())?;
    let (mut gx, mut gdelta, mut ga, mut gb, mut gc, mut gd) = grads;
    let grads = step_kernels::selective_scan::Gradients {
        x: contiguous_mut("grad_x", gx.as_slice_mut())?,
        delta: contiguous_mut("grad_delta", gdelta.as_slice_mut())?,
        a: contiguous_mut("grad_a", ga.as_slice_mut())?,
        b: contiguous_mut("grad_b", gb.as_slice_mut())?,
        c: contiguous_mut("grad_c", gc.as_slice_mut())?,
        d: contiguous_mut("grad_d", gd.as_slice_mut())?,
    };
    let shape = scan_shape(batch, seq, channels, states);
    py.detach(|| step_kernels::selective_scan::backward(inputs, grad_y, grads, shape, threads))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(price_trace, m)?)?;
    m.add_function(wrap_pyfunction!(bk_flops_per_element, m)?)?;
    m.add_function(wrap_pyfunction!(optimizer_flops_per_parameter, m)?)?;
    m.add_function(wrap_pyfunction!(bk_forward_f32, m)?)?;
    m.add_function(wrap_pyfunction!(bk_forward_f64, m)?)?;
    m.add_function(wrap_pyfunction!(bk_backward_f32, m)?)?;
    m.add_function(wrap_pyfunction!(bk_backward_f64, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_xent_grad_f32, m)?)?;
    m.add_function(wrap_pyfunction!(dropout_f32, m)?)?;
    m.add_function(wrap_pyfunction!(causal_attention_forward_f32, m)?)?;
    m.add_function(wrap_pyfunction!(causal_attention_backward_f32, m)?)?;
    m.add_function(wrap_pyfunction!(selective_scan_forward_f32, m)?)?;
    m.add_function(wrap_pyfunction!(selective_scan_backward_f32, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_and_errors() {
        assert_eq!(parse_mode("causal").unwrap(), Mode::Causal);
        assert_eq!(parse_mode("bidirectional").unwrap(), Mode::Bidirectional);
        Python::attach(|py| {
            let err = parse_mode("future").unwrap_err();
            assert!(err.value(py).to_string().contains("mode: expected 'causal' or 'bidirectional'"));
        });
    }

    #[test]
    fn price_trace_returns_the_engine_report_as_a_dict() {
        Python::attach(|py| {
            let mm: TracedOp = ("aten.mm".into(), vec![vec![4, 8], vec![8, 3]], vec![vec![4, 3]], false, String::new(),
                                "forward".into(), "lm_head".into(), 2);
            let report = price_trace(py, vec![mm]).unwrap();
            let total: u64 = report.get_item("total").unwrap().unwrap().extract().unwrap();
            assert_eq!(total, 2 * (2 * 4 * 8 * 3));
            let bad: TracedOp = ("aten.mm".into(), vec![], vec![], false, String::new(), "sideways".into(),
                                 String::new(), 1);
            let err = price_trace(py, vec![bad]).unwrap_err();
            assert!(err.value(py).to_string().contains("phase: expected"));
        });
    }

    #[test]
    fn optimizer_prices_and_unknown_kinds() {
        assert_eq!(optimizer_flops_per_parameter("adamw", true).unwrap(), 14);
        Python::attach(|py| {
            let err = optimizer_flops_per_parameter("lion", false).unwrap_err();
            assert!(err.value(py).to_string().contains("unknown optimizer"));
        });
    }

    #[test]
    fn module_registers_every_entry_point() {
        Python::attach(|py| {
            let module = PyModule::new(py, "_native").unwrap();
            _native(&module).unwrap();
            for name in ["price_trace", "bk_flops_per_element", "optimizer_flops_per_parameter", "bk_forward_f32",
                         "bk_forward_f64", "bk_backward_f32", "bk_backward_f64", "softmax_xent_grad_f32",
                         "dropout_f32", "causal_attention_forward_f32", "causal_attention_backward_f32",
                         "selective_scan_forward_f32", "selective_scan_backward_f32", "__version__"] {
                assert!(module.hasattr(name).unwrap(), "{name}");
            }
        });
    }
}
