//! `resnetbk._native`: the Rust kernels as a Python extension module.
//!
//! Arrays cross the boundary without copies: the Python side hands in C-contiguous numpy views
//! of torch tensors (inputs and preallocated outputs), and the kernels run with the GIL released.

use bk_core::{backward_batch, forward_batch, Complex, Mode};
use numpy::{PyUntypedArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1, PyReadwriteArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

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

/// Defines the forward and backward entry points for one real dtype.
macro_rules! kernels {
    ($real:ty, $forward:ident, $backward:ident) => {
        /// Forward pass: `out[r, k]` is the resolvent diagonal of row r (see bk_core::sweep).
        #[pyfunction]
        #[pyo3(signature = (a, kap, z, out, mode, threads))]
        fn $forward(
            py: Python<'_>,
            a: PyReadonlyArray2<'_, $real>,
            kap: PyReadonlyArray2<'_, $real>,
            z: PyReadonlyArray1<'_, Complex<$real>>,
            mut out: PyReadwriteArray2<'_, Complex<$real>>,
            mode: &str,
            threads: usize,
        ) -> PyResult<()> {
            let mode = parse_mode(mode)?;
            let n = a.shape()[1];
            let (a, kap, z) = (contiguous("a", a.as_slice())?, contiguous("kap", kap.as_slice())?, contiguous("z", z.as_slice())?);
            let out = contiguous_mut("out", out.as_slice_mut())?;
            py.detach(|| forward_batch(a, kap, z, mode, n, out, threads))
                .map_err(|e| PyValueError::new_err(e.to_string()))
        }

        /// Exact vector-Jacobian product: fills grad_a, grad_kap and grad_z.
        #[pyfunction]
        #[pyo3(signature = (a, kap, z, grad_out, grad_a, grad_kap, grad_z, mode, threads))]
        #[allow(clippy::too_many_arguments)]
        fn $backward(
            py: Python<'_>,
            a: PyReadonlyArray2<'_, $real>,
            kap: PyReadonlyArray2<'_, $real>,
            z: PyReadonlyArray1<'_, Complex<$real>>,
            grad_out: PyReadonlyArray2<'_, Complex<$real>>,
            mut grad_a: PyReadwriteArray2<'_, $real>,
            mut grad_kap: PyReadwriteArray2<'_, $real>,
            mut grad_z: PyReadwriteArray1<'_, Complex<$real>>,
            mode: &str,
            threads: usize,
        ) -> PyResult<()> {
            let mode = parse_mode(mode)?;
            let n = a.shape()[1];
            let (a, kap, z) = (contiguous("a", a.as_slice())?, contiguous("kap", kap.as_slice())?, contiguous("z", z.as_slice())?);
            let grad_out = contiguous("grad_out", grad_out.as_slice())?;
            let grad_a = contiguous_mut("grad_a", grad_a.as_slice_mut())?;
            let grad_kap = contiguous_mut("grad_kap", grad_kap.as_slice_mut())?;
            let grad_z = contiguous_mut("grad_z", grad_z.as_slice_mut())?;
            py.detach(|| backward_batch(a, kap, z, mode, n, grad_out, grad_a, grad_kap, grad_z, threads))
                .map_err(|e| PyValueError::new_err(e.to_string()))
        }
    };
}

kernels!(f32, bk_forward_f32, bk_backward_f32);
kernels!(f64, bk_forward_f64, bk_backward_f64);

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(bk_forward_f32, m)?)?;
    m.add_function(wrap_pyfunction!(bk_forward_f64, m)?)?;
    m.add_function(wrap_pyfunction!(bk_backward_f32, m)?)?;
    m.add_function(wrap_pyfunction!(bk_backward_f64, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
