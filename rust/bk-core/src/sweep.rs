//! The kernels: forward sweeps and their exact adjoint, on blocks of `L` rows at once.
//!
//! Notation (one row of length N, `s_k = a_k - z`, `kap_k = b_k c_k`):
//!
//! ```text
//! gL_0 = 1/s_0,          gL_k = 1/dL_k,  dL_k = s_k - kap_{k-1} gL_{k-1}
//! gR_{N-1} = 1/s_{N-1},  gR_k = 1/dR_k,  dR_k = s_k - kap_k gR_{k+1}
//! G_k = 1/D_k,           D_k = dR_k - kap_{k-1} gL_{k-1}                    (absent terms are 0)
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
//!
//! Speed. Each sweep is a chain of dependent divisions, so one row alone is latency-bound. The
//! kernels therefore run `L` independent rows in lock-step, stored lane-interleaved
//! (structure of arrays: element k of lane l at `k * L + l`), so every step is `L`-wide
//! straight-line arithmetic that the compiler turns into SIMD. `L = 1` is the single-row case.
//! Every loop body is the scalar formula above, applied per lane.

use crate::{Mode, Real};

/// Complex numbers as (re, im) pairs of reals: the lane loops stay plain real arithmetic.
#[inline(always)]
fn recip<T: Real>(re: T, im: T) -> (T, T) {
    let inv = T::one() / (re * re + im * im);
    (re * inv, -im * inv)
}

#[inline(always)]
fn mul<T: Real>(a: (T, T), b: (T, T)) -> (T, T) {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

#[inline(always)]
fn square<T: Real>(a: (T, T)) -> (T, T) {
    mul(a, a)
}

/// One block of `L` rows, lane-interleaved: `a[k][l]` is site k of lane l. `kap` is padded to
/// `n + 1` entries so that `kap[k]` holds `kap_{k-1}` and `kap[k + 1]` holds `kap_k`, with zeros
/// at both ends: the boundary sites need no branches.
pub struct Block<'a, T, const L: usize> {
    pub n: usize,
    pub a: &'a [[T; L]],
    pub kap: &'a [[T; L]],
    pub z_re: [T; L],
    pub z_im: [T; L],
}

type Lanes<T, const L: usize> = [T; L];

/// `x[k - 1]`, or zeros at k = 0 (where it is multiplied by `kap_{-1} = 0`; reading a real
/// slot instead would turn an infinite value into NaN).
#[inline(always)]
fn previous<T: Real, const L: usize>(x: &[Lanes<T, L>], k: usize) -> Lanes<T, L> {
    if k > 0 {
        x[k - 1]
    } else {
        [T::zero(); L]
    }
}

/// Forward pass of one block: writes `(out_re, out_im)` (`n` entries of `L` lanes).
#[inline(always)]
pub fn forward_block<T: Real, const L: usize>(
    b: &Block<'_, T, L>,
    mode: Mode,
    out_re: &mut [Lanes<T, L>],
    out_im: &mut [Lanes<T, L>],
) {
    let n = b.n;
    left_sweep(b, &mut out_re[..n], &mut out_im[..n]);
    if mode == Mode::Causal {
        return;
    }
    // Right pass, overwriting gL_k with G_k going down: step k reads gL_{k-1}, still in place.
    let mut gr_re = [T::zero(); L];
    let mut gr_im = [T::zero(); L];
    for k in (0..n).rev() {
        let (kl, kr, a) = (&b.kap[k], &b.kap[k + 1], &b.a[k]);
        let (pl_re, pl_im) = (previous(out_re, k), previous(out_im, k));
        let (mut o_re, mut o_im) = ([T::zero(); L], [T::zero(); L]);
        for l in 0..L {
            let dr_re = a[l] - b.z_re[l] - kr[l] * gr_re[l];
            let dr_im = -b.z_im[l] - kr[l] * gr_im[l];
            (o_re[l], o_im[l]) = recip(dr_re - kl[l] * pl_re[l], dr_im - kl[l] * pl_im[l]);
            (gr_re[l], gr_im[l]) = recip(dr_re, dr_im);
        }
        (out_re[k], out_im[k]) = (o_re, o_im);
    }
}

#[inline(always)]
fn left_sweep<T: Real, const L: usize>(b: &Block<'_, T, L>, gl_re: &mut [Lanes<T, L>], gl_im: &mut [Lanes<T, L>]) {
    let mut g_re = [T::zero(); L];
    let mut g_im = [T::zero(); L];
    for k in 0..b.n {
        let (kl, a) = (&b.kap[k], &b.a[k]);
        for l in 0..L {
            (g_re[l], g_im[l]) = recip(a[l] - b.z_re[l] - kl[l] * g_re[l], -b.z_im[l] - kl[l] * g_im[l]);
        }
        gl_re[k] = g_re;
        gl_im[k] = g_im;
    }
}

/// Buffers for one block's backward pass.
pub struct BackwardScratch<T> {
    gl_re: Vec<T>,
    gl_im: Vec<T>,
    gr_re: Vec<T>,
    gr_im: Vec<T>,
    ld_re: Vec<T>,
    ld_im: Vec<T>,
}

impl<T: Real> Default for BackwardScratch<T> {
    fn default() -> Self {
        Self { gl_re: vec![], gl_im: vec![], gr_re: vec![], gr_im: vec![], ld_re: vec![], ld_im: vec![] }
    }
}

/// The first `n` lane-groups of `v`, growing it if needed (contents are overwritten before use).
pub(crate) fn lanes_of<T: Real, const L: usize>(v: &mut Vec<T>, n: usize) -> &mut [Lanes<T, L>] {
    if v.len() < n * L {
        v.resize(n * L, T::zero());
    }
    v[..n * L].as_chunks_mut::<L>().0
}

/// Exact vector-Jacobian product of one block.
///
/// `(go_re, go_im)` is the upstream gradient `dL/dRe G + i dL/dIm G`. Writes `grad_a` (`n`
/// entries) and `grad_kap` (padded like `kap`: `n + 1` entries, the two ends set to 0) and
/// returns `dL/dz` per lane, in torch's convention.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn backward_block<T: Real, const L: usize>(
    b: &Block<'_, T, L>,
    mode: Mode,
    go_re: &[Lanes<T, L>],
    go_im: &[Lanes<T, L>],
    grad_a: &mut [Lanes<T, L>],
    grad_kap: &mut [Lanes<T, L>],
    s: &mut BackwardScratch<T>,
) -> (Lanes<T, L>, Lanes<T, L>) {
    let n = b.n;
    let (gl_re, gl_im) = (lanes_of::<T, L>(&mut s.gl_re, n), lanes_of::<T, L>(&mut s.gl_im, n));
    left_sweep(b, gl_re, gl_im);
    let zeros = [T::zero(); L];
    grad_kap[0] = zeros;
    grad_kap[n] = zeros;
    let mut sum_re = zeros;
    let mut sum_im = zeros;

    match mode {
        Mode::Causal => {
            // lam_gL_k = conj(gamma_k) + carry_k, carry_{k-1} = -kap_{k-1} lam_dL_k.
            let mut carry_re = zeros;
            let mut carry_im = zeros;
            for k in (0..n).rev() {
                let kl = &b.kap[k];
                let (p_re, p_im) = (previous(gl_re, k), previous(gl_im, k));
                let (g_re, g_im, o_re, o_im) = (&gl_re[k], &gl_im[k], &go_re[k], &go_im[k]);
                let (mut ga, mut gk) = (zeros, zeros);
                for l in 0..L {
                    let lam_gl = (o_re[l] + carry_re[l], -o_im[l] + carry_im[l]);
                    let sq = square((g_re[l], g_im[l]));
                    let lam_dl = mul((-sq.0, -sq.1), lam_gl);
                    ga[l] = lam_dl.0;
                    sum_re[l] = sum_re[l] + lam_dl.0;
                    sum_im[l] = sum_im[l] + lam_dl.1;
                    gk[l] = -(p_re[l] * lam_dl.0 - p_im[l] * lam_dl.1); // kap_{k-1}; 0 at k = 0
                    carry_re[l] = -kl[l] * lam_dl.0;
                    carry_im[l] = -kl[l] * lam_dl.1;
                }
                (grad_a[k], grad_kap[k]) = (ga, gk);
            }
        }
        Mode::Bidirectional => {
            let (gr_re, gr_im) = (lanes_of::<T, L>(&mut s.gr_re, n), lanes_of::<T, L>(&mut s.gr_im, n));
            let (ld_re, ld_im) = (lanes_of::<T, L>(&mut s.ld_re, n), lanes_of::<T, L>(&mut s.ld_im, n));
            // Pass 2 (k descending): the gR sweep, G and lam_D.
            let (mut right_re, mut right_im) = (zeros, zeros); // gR_{k+1}
            for k in (0..n).rev() {
                let (kl, kr, a) = (&b.kap[k], &b.kap[k + 1], &b.a[k]);
                let (p_re, p_im) = (previous(gl_re, k), previous(gl_im, k));
                let (o_re, o_im) = (&go_re[k], &go_im[k]);
                let (mut d_re, mut d_im) = (zeros, zeros);
                for l in 0..L {
                    let dr = (a[l] - b.z_re[l] - kr[l] * right_re[l], -b.z_im[l] - kr[l] * right_im[l]);
                    let g2 = square(recip(dr.0 - kl[l] * p_re[l], dr.1 - kl[l] * p_im[l]));
                    (d_re[l], d_im[l]) = mul((-g2.0, -g2.1), (o_re[l], -o_im[l]));
                    (right_re[l], right_im[l]) = recip(dr.0, dr.1);
                }
                (ld_re[k], ld_im[k]) = (d_re, d_im);
                (gr_re[k], gr_im[k]) = (right_re, right_im);
            }
            // Pass 2b (k descending): the reverse scan for lam_gL.
            let (mut lgl_re, mut lgl_im) = (zeros, zeros); // lam_gL_k
            for k in (0..n).rev() {
                let kl = &b.kap[k];
                let (p_re, p_im) = (previous(gl_re, k), previous(gl_im, k));
                let (g_re, g_im, d_re, d_im) = (&gl_re[k], &gl_im[k], &ld_re[k], &ld_im[k]);
                let (mut ga, mut gk) = (zeros, zeros);
                for l in 0..L {
                    let sq = square((g_re[l], g_im[l]));
                    let lam_dl = mul((-sq.0, -sq.1), (lgl_re[l], lgl_im[l]));
                    let part = (d_re[l] + lam_dl.0, d_im[l] + lam_dl.1);
                    ga[l] = part.0;
                    sum_re[l] = sum_re[l] + part.0;
                    sum_im[l] = sum_im[l] + part.1;
                    gk[l] = -(p_re[l] * part.0 - p_im[l] * part.1);
                    lgl_re[l] = -kl[l] * part.0;
                    lgl_im[l] = -kl[l] * part.1;
                }
                (grad_a[k], grad_kap[k]) = (ga, gk);
            }
            // Pass 3 (k ascending): the forward scan for lam_gR.
            let (mut lgr_re, mut lgr_im) = (zeros, zeros); // lam_gR_k
            for k in 0..n {
                let kr = &b.kap[k + 1];
                // gR_{k+1}; past the end it is multiplied by kap_{n-1} = 0 (zeros, as in `previous`).
                let (q_re, q_im) = if k + 1 < n { (gr_re[k + 1], gr_im[k + 1]) } else { (zeros, zeros) };
                let (r_re, r_im, d_re, d_im) = (&gr_re[k], &gr_im[k], &ld_re[k], &ld_im[k]);
                let (mut ga, mut gk) = (grad_a[k], grad_kap[k + 1]);
                for l in 0..L {
                    let sq = square((r_re[l], r_im[l]));
                    let lam_dr = mul((-sq.0, -sq.1), (lgr_re[l], lgr_im[l]));
                    ga[l] = ga[l] + lam_dr.0;
                    sum_re[l] = sum_re[l] + lam_dr.0;
                    sum_im[l] = sum_im[l] + lam_dr.1;
                    let part = (d_re[l] + lam_dr.0, d_im[l] + lam_dr.1);
                    gk[l] = gk[l] - (q_re[l] * part.0 - q_im[l] * part.1);
                    lgr_re[l] = -kr[l] * part.0;
                    lgr_im[l] = -kr[l] * part.1;
                }
                (grad_a[k], grad_kap[k + 1]) = (ga, gk);
            }
        }
    }
    // dL/dz = -conj(sum lam_s)
    for v in sum_re.iter_mut() {
        *v = -*v;
    }
    (sum_re, sum_im)
}
