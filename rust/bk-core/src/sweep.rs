//! Single-row kernels: the forward sweeps and their exact adjoint.
//!
//! Notation (one row of length N, `s_k = a_k - z`, `kap_k = b_k c_k`):
//!
//! ```text
//! gL_0 = 1/s_0,          gL_k = 1/dL_k,  dL_k = s_k - kap_{k-1} gL_{k-1}
//! gR_{N-1} = 1/s_{N-1},  gR_k = 1/dR_k,  dR_k = s_k - kap_k gR_{k+1}
//! G_k = 1/D_k,           D_k = s_k - kap_{k-1} gL_{k-1} - kap_k gR_{k+1}   (absent terms are 0)
//! ```
//!
//! Causal mode outputs `gL`; bidirectional mode outputs `G`.
//!
//! Backward. Every map above is holomorphic in its complex inputs, so we propagate
//! *conjugated* adjoints `lam_x = conj(dL/dRe x + i dL/dIm x)`, which obey the plain chain rule
//! `lam_x += (dy/dx) lam_y`. With `lam_G_k = conj(gamma_k)` (gamma = the upstream gradient in
//! torch's convention) and `1/x` having derivative `-1/x^2`:
//!
//! ```text
//! lam_D_k  = -G_k^2 lam_G_k
//! lam_dL_k = -gL_k^2 lam_gL_k,   lam_gL_{k-1} = -kap_{k-1} (lam_D_k + lam_dL_k)   (reverse scan)
//! lam_dR_k = -gR_k^2 lam_gR_k,   lam_gR_{k+1} = -kap_k (lam_D_k + lam_dR_k)       (forward scan)
//! lam_s_k  = lam_D_k + lam_dL_k + lam_dR_k
//! lam_kap_k = -gL_k (lam_D_{k+1} + lam_dL_{k+1}) - gR_{k+1} (lam_D_k + lam_dR_k)
//! ```
//!
//! In causal mode `lam_D = 0`, no `gR` exists, and `lam_gL_k` also receives `conj(gamma_k)`.
//! The real inputs get `dL/da_k = Re lam_s_k` and `dL/dkap_k = Re lam_kap_k`; the complex shift
//! gets `dL/dz = -conj(sum_k lam_s_k)` (since `s_k = a_k - z`), in torch's convention.
//! Two linear scans: O(N) time, exact up to rounding.

use crate::{Mode, Real};
use num_complex::Complex;

/// `1/x` with one real division (x is never 0 for Im z > 0 and real H).
#[inline(always)]
fn recip<T: Real>(x: Complex<T>) -> Complex<T> {
    let inv = T::one() / (x.re * x.re + x.im * x.im);
    Complex::new(x.re * inv, -x.im * inv)
}

/// `kap * x` for real `kap`.
#[inline(always)]
fn scale<T: Real>(kap: T, x: Complex<T>) -> Complex<T> {
    Complex::new(kap * x.re, kap * x.im)
}

/// Forward sweep from the left: `out[k] = gL_k` for every k.
#[inline]
fn left_sweep<T: Real>(a: &[T], kap: &[T], z: Complex<T>, out: &mut [Complex<T>]) {
    let mut g = recip(Complex::new(a[0], T::zero()) - z);
    out[0] = g;
    for k in 1..a.len() {
        let d = Complex::new(a[k], T::zero()) - z - scale(kap[k - 1], g);
        g = recip(d);
        out[k] = g;
    }
}

/// One row of the forward pass. `a.len() == out.len() == N >= 1`, `kap.len() == N - 1`.
pub fn forward_row<T: Real>(a: &[T], kap: &[T], z: Complex<T>, mode: Mode, out: &mut [Complex<T>]) {
    let n = a.len();
    debug_assert!(n >= 1 && kap.len() + 1 == n && out.len() == n);
    left_sweep(a, kap, z, out);
    if mode == Mode::Causal {
        return;
    }
    // Right sweep, overwriting gL_k with G_k as we go down: step k reads gL_{k-1}, which is
    // still in place because only indices >= k have been overwritten.
    let mut g_right = Complex::new(T::zero(), T::zero()); // gR_{k+1}, 0 past the end
    for k in (0..n).rev() {
        let s = Complex::new(a[k], T::zero()) - z;
        let from_right = if k + 1 < n { scale(kap[k], g_right) } else { Complex::new(T::zero(), T::zero()) };
        let from_left = if k > 0 { scale(kap[k - 1], out[k - 1]) } else { Complex::new(T::zero(), T::zero()) };
        let d_right = s - from_right;
        out[k] = recip(d_right - from_left);
        g_right = recip(d_right);
    }
}

/// Reusable per-thread buffers for [`backward_row`].
pub struct Scratch<T> {
    g_left: Vec<Complex<T>>,
    g_right: Vec<Complex<T>>,
    lam_d: Vec<Complex<T>>,
}

impl<T: Real> Scratch<T> {
    pub fn new() -> Self {
        Self { g_left: Vec::new(), g_right: Vec::new(), lam_d: Vec::new() }
    }

    fn resize(&mut self, n: usize) {
        let zero = Complex::new(T::zero(), T::zero());
        self.g_left.resize(n, zero);
        self.g_right.resize(n, zero);
        self.lam_d.resize(n, zero);
    }
}

/// One row of the exact vector-Jacobian product.
///
/// `grad_out` is the upstream gradient `dL/dRe G + i dL/dIm G`. Writes `grad_a` (N values),
/// `grad_kap` (N-1 values) and returns `dL/dz` in torch's convention.
pub fn backward_row<T: Real>(
    a: &[T],
    kap: &[T],
    z: Complex<T>,
    mode: Mode,
    grad_out: &[Complex<T>],
    grad_a: &mut [T],
    grad_kap: &mut [T],
    scratch: &mut Scratch<T>,
) -> Complex<T> {
    let n = a.len();
    debug_assert!(n >= 1 && kap.len() + 1 == n && grad_out.len() == n);
    debug_assert!(grad_a.len() == n && grad_kap.len() + 1 == n);
    let zero = Complex::new(T::zero(), T::zero());
    scratch.resize(n);
    let gl = &mut scratch.g_left[..n];
    left_sweep(a, kap, z, gl);

    let mut sum_lam_s = zero;
    match mode {
        Mode::Causal => {
            // lam_gL_k = conj(gamma_k) + carry, carry = -kap_k lam_dL_{k+1}.
            let mut carry = zero;
            for k in (0..n).rev() {
                let lam_gl = grad_out[k].conj() + carry;
                let lam_dl = -(gl[k] * gl[k]) * lam_gl;
                grad_a[k] = lam_dl.re;
                sum_lam_s = sum_lam_s + lam_dl;
                if k > 0 {
                    grad_kap[k - 1] = -(gl[k - 1] * lam_dl).re;
                    carry = -scale(kap[k - 1], lam_dl);
                }
            }
        }
        Mode::Bidirectional => {
            let gr = &mut scratch.g_right[..n];
            let lam_d = &mut scratch.lam_d[..n];
            // Pass 2 (k descending): gR sweep, G, lam_D, and the reverse scan for lam_gL.
            let mut g_right = zero; // gR_{k+1}
            let mut lam_gl = zero; // lam_gL_k (0 at k = N-1)
            for k in (0..n).rev() {
                let s = Complex::new(a[k], T::zero()) - z;
                let from_right = if k + 1 < n { scale(kap[k], g_right) } else { zero };
                let from_left = if k > 0 { scale(kap[k - 1], gl[k - 1]) } else { zero };
                let d_right = s - from_right;
                let g = recip(d_right - from_left);
                g_right = recip(d_right);
                gr[k] = g_right;
                let ld = -(g * g) * grad_out[k].conj();
                lam_d[k] = ld;
                let lam_dl = -(gl[k] * gl[k]) * lam_gl;
                let partial_s = ld + lam_dl;
                grad_a[k] = partial_s.re;
                sum_lam_s = sum_lam_s + partial_s;
                if k > 0 {
                    grad_kap[k - 1] = -(gl[k - 1] * partial_s).re;
                    lam_gl = -scale(kap[k - 1], partial_s);
                }
            }
            // Pass 3 (k ascending): the forward scan for lam_gR.
            let mut lam_gr = zero; // lam_gR_k (0 at k = 0)
            for k in 0..n {
                let lam_dr = -(gr[k] * gr[k]) * lam_gr;
                grad_a[k] = grad_a[k] + lam_dr.re;
                sum_lam_s = sum_lam_s + lam_dr;
                if k + 1 < n {
                    let partial = lam_d[k] + lam_dr;
                    grad_kap[k] = grad_kap[k] - (gr[k + 1] * partial).re;
                    lam_gr = -scale(kap[k], partial);
                }
            }
        }
    }
    -sum_lam_s.conj()
}
