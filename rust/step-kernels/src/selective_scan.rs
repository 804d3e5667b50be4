//! Mamba's selective scan (Gu and Dao 2023), forward and backward, one batch row per task.
//!
//! With `x`, `delta` `(batch, L, E)`, `A` `(E, N)`, `B`, `C` `(batch, L, N)` and `D` `(E)`, for
//! every batch row `b` and channel `e` a state `h` of `N` numbers runs along the sequence:
//!
//! ```text
//! a_t = exp(delta_t A_e)            (per state n)
//! h_t = a_t * h_{t-1} + delta_t B_t x_t
//! y_t = sum_n h_t C_t + D_e x_t
//! ```
//!
//! mambapy's pure-PyTorch scan (the reference the Python tests hold this to) builds `a`, the
//! input term and `h` as `(batch, L, E, N)` tensors, memory-bound passes that made a Mamba step
//! 60x a ResNet-BK step on a CPU. Here the state lives in registers; the backward recomputes
//! each channel's `h` and `a` into a buffer of `L * N` numbers, then runs the adjoint recursion
//! backwards:
//!
//! ```text
//! dh_t = dy_t C_t + a_{t+1} * dh_{t+1}
//! dC_t += dy_t h_t,  dD_e += dy_t x_t,  dx_t = dy_t D_e + sum_n dh_t delta_t B_t
//! ddelta_t = sum_n (dh_t h_{t-1} a_t A_e + dh_t B_t x_t),  dA_e += dh_t h_{t-1} a_t delta_t
//! dB_t += dh_t delta_t x_t
//! ```
//!
//! `dA` and `dD` are summed over the batch: each row writes its own partial sums, added in row
//! order afterwards, so the result does not depend on the thread count.

use crate::exp::{exp, mul_add};
use crate::parallel::{for_each_task, Shared};
use std::fmt;

/// The scan's sizes: batch rows, sequence length, channels (`E`, Mamba's inner width) and
/// states per channel (`N`, its `d_state`).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub channels: usize,
    pub states: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError(pub String);

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScanError {}

impl Shape {
    fn sizes(&self) -> Result<(usize, usize, usize), ScanError> {
        let sequence = self.batch.checked_mul(self.seq);
        let by_channel = sequence.and_then(|s| s.checked_mul(self.channels));
        let by_state = sequence.and_then(|s| s.checked_mul(self.states));
        let table = self.channels.checked_mul(self.states);
        match (by_channel, by_state, table) {
            (Some(a), Some(b), Some(c)) if self.states > 0 => Ok((a, b, c)),
            _ if self.states == 0 => Err(ScanError("states: expected at least one state per channel".into())),
            _ => Err(ScanError(format!("shape: {self:?} has more elements than memory can address"))),
        }
    }
}

fn check(what: &[(&str, usize, usize)]) -> Result<(), ScanError> {
    for &(name, got, expected) in what {
        if got != expected {
            return Err(ScanError(format!("{name}: expected {expected} elements, got {got}")));
        }
    }
    Ok(())
}

/// The inputs of a scan, flat C-contiguous float32 arrays of the shapes in the module's doc.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub x: &'a [f32],
    pub delta: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub c: &'a [f32],
    pub d: &'a [f32],
}

impl Inputs<'_> {
    fn check(&self, s: Shape) -> Result<(), ScanError> {
        let (by_channel, by_state, table) = s.sizes()?;
        check(&[("x", self.x.len(), by_channel), ("delta", self.delta.len(), by_channel), ("A", self.a.len(), table),
                ("B", self.b.len(), by_state), ("C", self.c.len(), by_state), ("D", self.d.len(), s.channels)])
    }
}

/// The gradients of a scan, written (not accumulated) by `backward`, each as its input.
pub struct Gradients<'a> {
    pub x: &'a mut [f32],
    pub delta: &'a mut [f32],
    pub a: &'a mut [f32],
    pub b: &'a mut [f32],
    pub c: &'a mut [f32],
    pub d: &'a mut [f32],
}

/// `y` `(batch, L, E)` of the scan of `inputs`, on up to `threads` threads.
pub fn forward(inputs: Inputs<'_>, y: &mut [f32], shape: Shape, threads: usize) -> Result<(), ScanError> {
    inputs.check(shape)?;
    check(&[("y", y.len(), shape.batch * shape.seq * shape.channels)])?;
    let out = Shared(y.as_mut_ptr());
    let row = shape.seq * shape.channels;
    for_each_task(shape.batch, threads, |b| {
        // SAFETY: row b's outputs, disjoint from every other task's.
        let y = unsafe { out.slice(b * row, row) };
        best::forward_row(&inputs, y, shape, b);
    });
    Ok(())
}

/// The gradients of the scan of `inputs` for the incoming gradient `grad_y` (as `y`).
pub fn backward(inputs: Inputs<'_>, grad_y: &[f32], grads: Gradients<'_>, shape: Shape, threads: usize)
    -> Result<(), ScanError> {
    inputs.check(shape)?;
    let (by_channel, by_state, table) = shape.sizes()?;
    check(&[("grad_y", grad_y.len(), by_channel), ("grad_x", grads.x.len(), by_channel),
            ("grad_delta", grads.delta.len(), by_channel), ("grad_A", grads.a.len(), table),
            ("grad_B", grads.b.len(), by_state), ("grad_C", grads.c.len(), by_state),
            ("grad_D", grads.d.len(), shape.channels)])?;
    let Shape { batch, seq, channels, states } = shape;
    // Each row's own sums of dA and dD, added in row order below.
    let mut partial_a = vec![0.0_f32; batch * table];
    let mut partial_d = vec![0.0_f32; batch * channels];
    let ptrs = (Shared(grads.x.as_mut_ptr()), Shared(grads.delta.as_mut_ptr()), Shared(grads.b.as_mut_ptr()),
                Shared(grads.c.as_mut_ptr()), Shared(partial_a.as_mut_ptr()), Shared(partial_d.as_mut_ptr()));
    for_each_task(batch, threads, |b| {
        let (gx, gdelta, gb, gc, pa, pd) = ptrs;
        let (rc, rs) = (seq * channels, seq * states);
        // SAFETY: row b's slices of each gradient and of the partial sums: disjoint per task.
        let row = unsafe {
            RowGradients {
                x: gx.slice(b * rc, rc),
                delta: gdelta.slice(b * rc, rc),
                b: gb.slice(b * rs, rs),
                c: gc.slice(b * rs, rs),
                a: pa.slice(b * table, table),
                d: pd.slice(b * channels, channels),
            }
        };
        best::backward_row(&inputs, &grad_y[b * rc..][..rc], row, shape, b);
    });
    grads.a.fill(0.0);
    grads.d.fill(0.0);
    for b in 0..batch {
        grads.a.iter_mut().zip(&partial_a[b * table..][..table]).for_each(|(g, p)| *g += p);
        grads.d.iter_mut().zip(&partial_d[b * channels..][..channels]).for_each(|(g, p)| *g += p);
    }
    Ok(())
}

/// One batch row's gradients: its `x`, `delta`, `B` and `C` gradients, and its partial sums of
/// `A`'s and `D`'s.
struct RowGradients<'a> {
    x: &'a mut [f32],
    delta: &'a mut [f32],
    b: &'a mut [f32],
    c: &'a mut [f32],
    a: &'a mut [f32],
    d: &'a mut [f32],
}

/// Batch row `b`'s outputs. `NS`: the number of states known at compile time (0: `shape.states`).
#[inline(always)]
fn forward_row<const FMA: bool, const NS: usize>(inputs: &Inputs<'_>, y: &mut [f32], shape: Shape, b: usize) {
    let Shape { seq, channels: ch, .. } = shape;
    let ns = if NS > 0 { NS } else { shape.states };
    let (bm, cm) = (&inputs.b[b * seq * ns..][..seq * ns], &inputs.c[b * seq * ns..][..seq * ns]);
    let (x, delta) = (&inputs.x[b * seq * ch..][..seq * ch], &inputs.delta[b * seq * ch..][..seq * ch]);
    let mut h = vec![0.0_f32; ns];
    let mut terms = vec![0.0_f32; ns];
    for e in 0..ch {
        let a_e = &inputs.a[e * ns..][..ns];
        h.fill(0.0);
        for t in 0..seq {
            let (d, xv) = (delta[t * ch + e], x[t * ch + e]);
            let (b_t, c_t) = (&bm[t * ns..][..ns], &cm[t * ns..][..ns]);
            let dx = d * xv;
            let (h, terms) = (&mut h[..ns], &mut terms[..ns]);
            for n in 0..ns {
                h[n] = mul_add::<FMA>(exp::<FMA>(d * a_e[n]), h[n], dx * b_t[n]);
                terms[n] = h[n] * c_t[n];
            }
            y[t * ch + e] = mul_add::<FMA>(inputs.d[e], xv, lane_sum(terms));
        }
    }
}

/// The sum of `v` over eight independent partial sums: a reduction the compiler vectorises (one
/// running sum would chain every addition, and with it the whole loop that feeds it).
#[inline(always)]
fn lane_sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0_f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])) + rest
}

/// Batch row `b`'s gradients (see the module's doc).
#[inline(always)]
fn backward_row<const FMA: bool, const NS: usize>(inputs: &Inputs<'_>, grad_y: &[f32], g: RowGradients<'_>,
                                                  shape: Shape, b: usize) {
    let Shape { seq, channels: ch, .. } = shape;
    let ns = if NS > 0 { NS } else { shape.states };
    let (bm, cm) = (&inputs.b[b * seq * ns..][..seq * ns], &inputs.c[b * seq * ns..][..seq * ns]);
    let (x, delta) = (&inputs.x[b * seq * ch..][..seq * ch], &inputs.delta[b * seq * ch..][..seq * ch]);
    g.b.fill(0.0);
    g.c.fill(0.0);
    let mut hs = vec![0.0_f32; (seq + 1) * ns]; // hs[t + 1] = h_t; hs[0] = the zero initial state
    let mut decay = vec![0.0_f32; seq * ns]; // a_t
    let mut dh = vec![0.0_f32; ns];
    let (mut delta_terms, mut x_terms) = (vec![0.0_f32; ns], vec![0.0_f32; ns]);
    for e in 0..ch {
        let a_e = &inputs.a[e * ns..][..ns];
        for t in 0..seq {
            let (d, xv) = (delta[t * ch + e], x[t * ch + e]);
            let b_t = &bm[t * ns..][..ns];
            let (past, now) = hs.split_at_mut((t + 1) * ns);
            let (prev, h) = (&past[t * ns..][..ns], &mut now[..ns]);
            let a_t = &mut decay[t * ns..][..ns];
            for n in 0..ns {
                a_t[n] = exp::<FMA>(d * a_e[n]);
                h[n] = mul_add::<FMA>(a_t[n], prev[n], d * xv * b_t[n]);
            }
        }
        dh.fill(0.0);
        let (mut grad_a, mut grad_d) = (vec![0.0_f32; ns], 0.0_f32);
        for t in (0..seq).rev() {
            let (d, xv, gy) = (delta[t * ch + e], x[t * ch + e], grad_y[t * ch + e]);
            let (b_t, c_t) = (&bm[t * ns..][..ns], &cm[t * ns..][..ns]);
            let (prev, h) = (&hs[t * ns..][..ns], &hs[(t + 1) * ns..][..ns]);
            let a_t = &decay[t * ns..][..ns];
            let (gb, gc) = (&mut g.b[t * ns..][..ns], &mut g.c[t * ns..][..ns]);
            grad_d = mul_add::<FMA>(gy, xv, grad_d);
            let dxv = d * xv;
            let (dh, delta_terms, x_terms, grad_a) =
                (&mut dh[..ns], &mut delta_terms[..ns], &mut x_terms[..ns], &mut grad_a[..ns]);
            for n in 0..ns {
                let dh_n = mul_add::<FMA>(gy, c_t[n], dh[n]);
                gc[n] = mul_add::<FMA>(gy, h[n], gc[n]);
                let d_decay = dh_n * prev[n] * a_t[n]; // d(a_t) * a_t: the chain through exp
                delta_terms[n] = mul_add::<FMA>(d_decay, a_e[n], dh_n * b_t[n] * xv);
                x_terms[n] = dh_n * b_t[n];
                grad_a[n] = mul_add::<FMA>(d_decay, d, grad_a[n]);
                gb[n] = mul_add::<FMA>(dh_n, dxv, gb[n]);
                dh[n] = dh_n * a_t[n];
            }
            let gx = mul_add::<FMA>(d, lane_sum(x_terms), gy * inputs.d[e]);
            let gdelta = lane_sum(delta_terms);
            g.x[t * ch + e] = gx;
            g.delta[t * ch + e] = gdelta;
        }
        g.a[e * ns..][..ns].copy_from_slice(&grad_a);
        g.d[e] = grad_d;
    }
}

/// The rows compiled for AVX-512 and AVX2 (with fused multiply-adds) beside the baseline, for 16
/// states (Mamba's default `d_state`, one AVX-512 vector) and any other, the best chosen at run time.
mod best {
    use super::{backward_row as backward_generic, forward_row as forward_generic, Inputs, RowGradients, Shape};

    macro_rules! variants {
        ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
            pub(super) fn $name($($arg: $ty),*, shape: Shape, b: usize) {
                macro_rules! with_states {
                    ($ns:literal) => {{
                        #[cfg(target_arch = "x86_64")]
                        {
                            #[target_feature(enable = "avx512f,fma")]
                            unsafe fn avx512($($arg: $ty),*, shape: Shape, b: usize) {
                                $generic::<true, $ns>($($arg),*, shape, b)
                            }
                            #[target_feature(enable = "avx2,fma")]
                            unsafe fn avx2($($arg: $ty),*, shape: Shape, b: usize) {
                                $generic::<true, $ns>($($arg),*, shape, b)
                            }
                            match crate::isa::chosen() {
                                // SAFETY: the body is safe code; its only precondition, the CPU
                                // features, is what `chosen` checked at run time.
                                crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*, shape, b) },
                                // SAFETY: as above.
                                crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*, shape, b) },
                                crate::isa::Isa::Baseline => {}
                            }
                        }
                        $generic::<false, $ns>($($arg),*, shape, b)
                    }};
                }
                if shape.states == 16 {
                    with_states!(16)
                } else {
                    with_states!(0)
                }
            }
        };
    }

    variants!(forward_row, forward_generic, (inputs: &Inputs<'_>, y: &mut [f32]));
    variants!(backward_row, backward_generic, (inputs: &Inputs<'_>, grad_y: &[f32], g: RowGradients<'_>));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropout::bits;

    fn values(len: usize, salt: u64, low: f64, high: f64) -> Vec<f32> {
        (0..len).map(|i| (low + (high - low) * bits(i as u64, salt) as f64 / 4_294_967_296.0) as f32).collect()
    }

    struct Case {
        shape: Shape,
        x: Vec<f32>,
        delta: Vec<f32>,
        a: Vec<f32>,
        b: Vec<f32>,
        c: Vec<f32>,
        d: Vec<f32>,
    }

    impl Case {
        fn new(batch: usize, seq: usize, channels: usize, states: usize) -> Case {
            let shape = Shape { batch, seq, channels, states };
            let (bc, bs) = (batch * seq * channels, batch * seq * states);
            Case {
                shape,
                x: values(bc, 1, -1.0, 1.0),
                delta: values(bc, 2, 0.01, 0.5),
                a: values(channels * states, 3, -4.0, -0.1),
                b: values(bs, 4, -1.0, 1.0),
                c: values(bs, 5, -1.0, 1.0),
                d: values(channels, 6, -1.0, 1.0),
            }
        }

        fn inputs(&self) -> Inputs<'_> {
            Inputs { x: &self.x, delta: &self.delta, a: &self.a, b: &self.b, c: &self.c, d: &self.d }
        }

        /// The definition in float64, from the inputs as float64 (`shift`: one input moved).
        fn naive(&self, shift: Option<(usize, usize, f64)>) -> Vec<f64> {
            let Shape { batch, seq, channels: ch, states: ns } = self.shape;
            let mut all: Vec<Vec<f64>> = [&self.x, &self.delta, &self.a, &self.b, &self.c, &self.d]
                .iter()
                .map(|v| v.iter().map(|&z| z as f64).collect())
                .collect();
            if let Some((which, i, by)) = shift {
                all[which][i] += by;
            }
            let (x, delta, a, bm, cm, dd) = (&all[0], &all[1], &all[2], &all[3], &all[4], &all[5]);
            let mut y = vec![0.0; batch * seq * ch];
            for b in 0..batch {
                for e in 0..ch {
                    let mut h = vec![0.0; ns];
                    for t in 0..seq {
                        let (d, xv) = (delta[(b * seq + t) * ch + e], x[(b * seq + t) * ch + e]);
                        let mut acc = 0.0;
                        for n in 0..ns {
                            h[n] = (d * a[e * ns + n]).exp() * h[n] + d * bm[(b * seq + t) * ns + n] * xv;
                            acc += h[n] * cm[(b * seq + t) * ns + n];
                        }
                        y[(b * seq + t) * ch + e] = acc + dd[e] * xv;
                    }
                }
            }
            y
        }

        fn backward(&self, grad_y: &[f32], threads: usize) -> Vec<Vec<f32>> {
            let mut g: Vec<Vec<f32>> = [&self.x, &self.delta, &self.a, &self.b, &self.c, &self.d]
                .iter()
                .map(|v| vec![f32::NAN; v.len()])
                .collect();
            let [gx, gdelta, ga, gb, gc, gd] = &mut g[..] else { unreachable!() };
            let grads = Gradients { x: gx, delta: gdelta, a: ga, b: gb, c: gc, d: gd };
            backward(self.inputs(), grad_y, grads, self.shape, threads).unwrap();
            g
        }
    }

    #[test]
    fn forward_matches_the_float64_definition() {
        for (batch, seq, channels, states) in [(2, 37, 5, 16), (3, 9, 7, 3), (1, 1, 1, 1), (2, 64, 4, 16)] {
            let case = Case::new(batch, seq, channels, states);
            let mut y = vec![0.0_f32; batch * seq * channels];
            forward(case.inputs(), &mut y, case.shape, 2).unwrap();
            let exact = case.naive(None);
            let worst = y.iter().zip(&exact).map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max);
            assert!(worst < 1e-5, "{:?}: {worst}", case.shape);
        }
    }

    #[test]
    fn every_gradient_matches_finite_differences_of_the_definition() {
        for (batch, seq, channels, states) in [(2, 11, 3, 16), (2, 7, 3, 5)] {
            let case = Case::new(batch, seq, channels, states);
            let grad_y = values(batch * seq * channels, 9, -1.0, 1.0);
            let grads = case.backward(&grad_y, 2);
            let loss = |y: &[f64]| y.iter().zip(&grad_y).map(|(a, &g)| a * g as f64).sum::<f64>();
            let eps = 1e-6;
            for (which, grad) in grads.iter().enumerate() {
                for i in (0..grad.len()).step_by(grad.len().div_ceil(13).max(1)) {
                    let up = loss(&case.naive(Some((which, i, eps))));
                    let down = loss(&case.naive(Some((which, i, -eps))));
                    let numeric = (up - down) / (2.0 * eps);
                    let err = (grad[i] as f64 - numeric).abs() / (1.0 + numeric.abs());
                    assert!(err < 2e-4, "input {which}, element {i}: kernel {} vs {numeric}", grad[i]);
                }
            }
        }
    }

    #[test]
    fn the_same_bits_whatever_the_thread_count() {
        let case = Case::new(5, 23, 6, 16);
        let grad_y = values(5 * 23 * 6, 10, -1.0, 1.0);
        assert_eq!(case.backward(&grad_y, 1), case.backward(&grad_y, 3));
        let (mut y1, mut y3) = (vec![0.0_f32; 5 * 23 * 6], vec![0.0_f32; 5 * 23 * 6]);
        forward(case.inputs(), &mut y1, case.shape, 1).unwrap();
        forward(case.inputs(), &mut y3, case.shape, 3).unwrap();
        assert_eq!(y1, y3);
    }

    #[test]
    fn wrong_lengths_are_named_errors() {
        let case = Case::new(2, 4, 3, 2);
        let mut y = vec![0.0_f32; 5];
        let err = forward(case.inputs(), &mut y, case.shape, 1).unwrap_err();
        assert_eq!(err.0, "y: expected 24 elements, got 5");
        let bad = Inputs { d: &case.d[..2], ..case.inputs() };
        assert_eq!(forward(bad, &mut vec![0.0; 24], case.shape, 1).unwrap_err().0, "D: expected 3 elements, got 2");
        let shape = Shape { states: 0, ..case.shape };
        assert!(forward(case.inputs(), &mut vec![0.0; 24], shape, 1).unwrap_err().0.starts_with("states"));
    }
}
