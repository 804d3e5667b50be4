//! The Rust kernels against a dense complex inverse (Gauss-Jordan in f64) and against
//! central finite differences of the forward pass.
#![allow(clippy::needless_range_loop)] // index loops mirror the math over positions

use bk_core::{backward_batch, backward_batch_masked, forward_batch, forward_batch_masked, Complex, Mode, OffDiagonals};

type C = Complex<f64>;

/// A small deterministic generator (no dev-dependency needed for test data).
struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Inverse of a dense complex matrix by Gauss-Jordan with partial pivoting.
fn dense_inverse(mut m: Vec<Vec<C>>) -> Vec<Vec<C>> {
    let n = m.len();
    let mut inv: Vec<Vec<C>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { C::new(1.0, 0.0) } else { C::new(0.0, 0.0) }).collect())
        .collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| m[x][col].norm().total_cmp(&m[y][col].norm())).unwrap();
        m.swap(col, pivot);
        inv.swap(col, pivot);
        let p = m[col][col];
        for j in 0..n {
            m[col][j] /= p;
            inv[col][j] /= p;
        }
        for i in 0..n {
            if i != col {
                let f = m[i][col];
                for j in 0..n {
                    let (mc, ic) = (m[col][j], inv[col][j]);
                    m[i][j] -= f * mc;
                    inv[i][j] -= f * ic;
                }
            }
        }
    }
    inv
}

/// The oracle: diag of (H - zI)^-1 (bidirectional) or of each leading block (causal).
fn oracle(a: &[f64], b: &[f64], c: &[f64], z: C, mode: Mode) -> Vec<C> {
    let n = a.len();
    let resolvent_diag = |size: usize| {
        let mut m = vec![vec![C::new(0.0, 0.0); size]; size];
        for i in 0..size {
            m[i][i] = C::new(a[i], 0.0) - z;
            if i + 1 < size {
                m[i][i + 1] = C::new(b[i], 0.0);
                m[i + 1][i] = C::new(c[i], 0.0);
            }
        }
        dense_inverse(m)
    };
    match mode {
        Mode::Bidirectional => {
            let inv = resolvent_diag(n);
            (0..n).map(|k| inv[k][k]).collect()
        }
        Mode::Causal => (1..=n).map(|size| resolvent_diag(size)[size - 1][size - 1]).collect(),
    }
}

fn random_row(rng: &mut Lcg, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let a = (0..n).map(|_| -2.0 + rng.uniform()).collect();
    let b = (0..n.saturating_sub(1)).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
    let c = (0..n.saturating_sub(1)).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
    (a, b, c)
}

fn forward(a: &[f64], b: &[f64], c: &[f64], z: C, mode: Mode) -> Vec<C> {
    let mut out = vec![C::new(0.0, 0.0); a.len()];
    forward_batch(a, OffDiagonals::General { upper: b, lower: c }, &[z], mode, a.len(), &mut out, 1).unwrap();
    out
}

#[test]
fn forward_matches_dense_inverse() {
    let mut rng = Lcg(7);
    for &n in &[1usize, 2, 3, 15, 63, 120] {
        for mode in [Mode::Causal, Mode::Bidirectional] {
            for z in [C::new(0.0, 1.0), C::new(0.3, 0.2)] {
                let (a, b, c) = random_row(&mut rng, n);
                let got = forward(&a, &b, &c, z, mode);
                let want = oracle(&a, &b, &c, z, mode);
                for k in 0..n {
                    let err = (got[k] - want[k]).norm() / want[k].norm();
                    assert!(err < 1e-11, "n={n} {mode:?} z={z} k={k}: rel err {err}");
                }
            }
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Lcg(11);
    let h = 1e-6;
    let close = |fd: f64, got: f64| (fd - got).abs() < 1e-6 * (1.0 + fd.abs());
    for &n in &[1usize, 2, 5, 17] {
        for mode in [Mode::Causal, Mode::Bidirectional] {
            let (a, b, c) = random_row(&mut rng, n);
            let z = C::new(0.1, 0.7);
            let gamma: Vec<C> = (0..n).map(|_| C::new(rng.uniform(), rng.uniform())).collect();
            // L = sum_k Re(conj(gamma_k) G_k), whose torch-convention gradient wrt G is gamma.
            let loss = |a: &[f64], b: &[f64], c: &[f64], z: C| -> f64 {
                forward(a, b, c, z, mode).iter().zip(&gamma).map(|(g, w)| (w.conj() * g).re).sum()
            };
            let (mut ga, mut gb, mut gc, mut gz) = (vec![0.0; n], vec![0.0; n - 1], vec![0.0; n - 1], vec![C::new(0.0, 0.0)]);
            let off = OffDiagonals::General { upper: &b, lower: &c };
            backward_batch(&a, off, &[z], mode, n, &gamma, &mut ga, &mut gb, Some(&mut gc), &mut gz, 1).unwrap();
            let bump = |v: &[f64], j: usize, d: f64| {
                let mut w = v.to_vec();
                w[j] += d;
                w
            };
            for j in 0..n {
                let fd = (loss(&bump(&a, j, h), &b, &c, z) - loss(&bump(&a, j, -h), &b, &c, z)) / (2.0 * h);
                assert!(close(fd, ga[j]), "{mode:?} n={n} da[{j}]: {fd} vs {}", ga[j]);
            }
            for j in 0..n - 1 {
                let fd = (loss(&a, &bump(&b, j, h), &c, z) - loss(&a, &bump(&b, j, -h), &c, z)) / (2.0 * h);
                assert!(close(fd, gb[j]), "{mode:?} n={n} db[{j}]: {fd} vs {}", gb[j]);
                let fd = (loss(&a, &b, &bump(&c, j, h), z) - loss(&a, &b, &bump(&c, j, -h), z)) / (2.0 * h);
                assert!(close(fd, gc[j]), "{mode:?} n={n} dc[{j}]: {fd} vs {}", gc[j]);
            }
            let fd_re = (loss(&a, &b, &c, z + h) - loss(&a, &b, &c, z - h)) / (2.0 * h);
            let ih = C::new(0.0, h);
            let fd_im = (loss(&a, &b, &c, z + ih) - loss(&a, &b, &c, z - ih)) / (2.0 * h);
            assert!((gz[0] - C::new(fd_re, fd_im)).norm() < 1e-6 * (1.0 + gz[0].norm()), "{mode:?} n={n} dz");

            // Symmetric H (lower = upper): all of dL/dkap flows into upper, twice.
            let (mut gs, mut gzs) = (vec![0.0; n - 1], vec![C::new(0.0, 0.0)]);
            backward_batch(&a, OffDiagonals::Symmetric(&b), &[z], mode, n, &gamma, &mut ga, &mut gs, None, &mut gzs, 1).unwrap();
            for j in 0..n - 1 {
                let fd = (loss(&a, &bump(&b, j, h), &bump(&b, j, h), z) - loss(&a, &bump(&b, j, -h), &bump(&b, j, -h), z)) / (2.0 * h);
                assert!(close(fd, gs[j]), "{mode:?} n={n} symmetric db[{j}]: {fd} vs {}", gs[j]);
            }
        }
    }
}

#[test]
fn long_rows_stay_bounded_in_f32() {
    let n = 200_000;
    let mut rng = Lcg(3);
    let a: Vec<f32> = (0..n).map(|_| (-2.0 + 3.0 * rng.uniform()) as f32).collect();
    let b = vec![1.0f32; n - 1];
    let z = Complex::new(0.0f32, 1.0);
    for mode in [Mode::Causal, Mode::Bidirectional] {
        let mut out = vec![Complex::new(0.0f32, 0.0); n];
        forward_batch(&a, OffDiagonals::Symmetric(&b), &[z], mode, n, &mut out, 1).unwrap();
        assert!(out.iter().all(|g| g.re.is_finite() && g.im.is_finite() && g.norm() <= 1.0 + 1e-5));
    }
}

#[test]
fn threads_do_not_change_results() {
    let (rows, n) = (37, 129);
    let mut rng = Lcg(5);
    let a: Vec<f64> = (0..rows * n).map(|_| rng.uniform()).collect();
    let kap: Vec<f64> = (0..rows * (n - 1)).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
    let z: Vec<C> = (0..rows).map(|_| C::new(rng.uniform(), 1.0)).collect();
    let gout: Vec<C> = (0..rows * n).map(|_| C::new(rng.uniform(), rng.uniform())).collect();
    let run = |threads| {
        let mut out = vec![C::new(0.0, 0.0); rows * n];
        forward_batch(&a, OffDiagonals::Symmetric(&kap), &z, Mode::Bidirectional, n, &mut out, threads).unwrap();
        let (mut ga, mut gk, mut gz) = (vec![0.0; rows * n], vec![0.0; rows * (n - 1)], vec![C::new(0.0, 0.0); rows]);
        let off = OffDiagonals::Symmetric(&kap);
        backward_batch(&a, off, &z, Mode::Bidirectional, n, &gout, &mut ga, &mut gk, None, &mut gz, threads).unwrap();
        (out, ga, gk, gz)
    };
    assert_eq!(run(1), run(2));
    assert_eq!(run(1), run(4));
}

#[test]
fn shape_errors_are_reported() {
    let mut out = vec![C::new(0.0, 0.0); 4];
    let err = forward_batch(&[0.0; 4], OffDiagonals::Symmetric(&[1.0; 2]), &[C::new(0.0, 1.0)], Mode::Causal, 4, &mut out, 1).unwrap_err();
    assert!(err.0.contains("upper"), "{err}");
    let off = OffDiagonals::General { upper: &[1.0; 3], lower: &[1.0; 2] };
    let err = forward_batch(&[0.0; 4], off, &[C::new(0.0, 1.0)], Mode::Causal, 4, &mut out, 1).unwrap_err();
    assert!(err.0.contains("lower"), "{err}");
    let (mut ga, mut gu, mut gz) = ([0.0; 4], [0.0; 3], [C::new(0.0, 0.0)]);
    let err = backward_batch(&[0.0; 4], OffDiagonals::Symmetric(&[1.0; 3]), &[C::new(0.0, 1.0)], Mode::Causal, 4, &[C::new(0.0, 0.0); 4], &mut ga, &mut gu, Some(&mut [0.0; 3]), &mut gz, 1).unwrap_err();
    assert!(err.0.contains("grad_lower"), "{err}");
    let err = forward_batch::<f64>(&[], OffDiagonals::Symmetric(&[]), &[], Mode::Causal, 0, &mut [], 1).unwrap_err();
    assert!(err.0.contains("at least 1"), "{err}");
}

#[test]
fn a_row_gives_the_same_bits_alone_or_in_any_block() {
    // Rows run alone (1 lane) or lane-interleaved in blocks of 2..16: the same scalar operations
    // in the same order, so bit-identical results.
    let (rows, n) = (37, 50);
    let mut rng = Lcg(13);
    let a: Vec<f32> = (0..rows * n).map(|_| (rng.uniform() - 2.0) as f32).collect();
    let b: Vec<f32> = (0..rows * (n - 1)).map(|_| (1.0 + 0.2 * rng.uniform()) as f32).collect();
    let c: Vec<f32> = (0..rows * (n - 1)).map(|_| (1.0 + 0.2 * rng.uniform()) as f32).collect();
    let z: Vec<Complex<f32>> = (0..rows).map(|_| Complex::new(rng.uniform() as f32, 0.5)).collect();
    let gout: Vec<Complex<f32>> = (0..rows * n).map(|_| Complex::new(rng.uniform() as f32, rng.uniform() as f32)).collect();
    for mode in [Mode::Causal, Mode::Bidirectional] {
        let mut batch = vec![Complex::new(0.0f32, 0.0); rows * n];
        let m = n - 1;
        forward_batch(&a, OffDiagonals::General { upper: &b, lower: &c }, &z, mode, n, &mut batch, 1).unwrap();
        let (mut ga, mut gb, mut gc, mut gz) = (vec![0.0f32; rows * n], vec![0.0f32; rows * m], vec![0.0f32; rows * m], vec![Complex::new(0.0f32, 0.0); rows]);
        let off = OffDiagonals::General { upper: &b, lower: &c };
        backward_batch(&a, off, &z, mode, n, &gout, &mut ga, &mut gb, Some(&mut gc), &mut gz, 1).unwrap();
        for r in [0, 5, 36] {
            let (ar, gr) = (&a[r * n..(r + 1) * n], &gout[r * n..(r + 1) * n]);
            let off1 = OffDiagonals::General { upper: &b[r * m..(r + 1) * m], lower: &c[r * m..(r + 1) * m] };
            let mut alone = vec![Complex::new(0.0f32, 0.0); n];
            forward_batch(ar, off1, &z[r..r + 1], mode, n, &mut alone, 1).unwrap();
            assert_eq!(&alone[..], &batch[r * n..(r + 1) * n], "{mode:?} row {r} forward");
            let (mut ga1, mut gb1, mut gc1, mut gz1) = (vec![0.0f32; n], vec![0.0f32; m], vec![0.0f32; m], vec![Complex::new(0.0f32, 0.0)]);
            backward_batch(ar, off1, &z[r..r + 1], mode, n, gr, &mut ga1, &mut gb1, Some(&mut gc1), &mut gz1, 1).unwrap();
            assert_eq!(&ga1[..], &ga[r * n..(r + 1) * n], "{mode:?} row {r} grad a");
            assert_eq!(&gb1[..], &gb[r * m..(r + 1) * m], "{mode:?} row {r} grad upper");
            assert_eq!(&gc1[..], &gc[r * m..(r + 1) * m], "{mode:?} row {r} grad lower");
            assert_eq!(gz1[0], gz[r], "{mode:?} row {r} grad z");
        }
    }
}

#[test]
fn the_masked_variant_equals_the_unmasked_op_with_masked_outputs_and_gradients_zeroed() {
    let (rows, n) = (21, 33);
    let mut rng = Lcg(29);
    let a: Vec<f64> = (0..rows * n).map(|_| rng.uniform() - 2.0).collect();
    let b: Vec<f64> = (0..rows * (n - 1)).map(|_| 1.0 + 0.2 * rng.uniform()).collect();
    let z: Vec<C> = (0..rows).map(|_| C::new(rng.uniform(), 0.7)).collect();
    let gout: Vec<C> = (0..rows * n).map(|_| C::new(rng.uniform(), rng.uniform())).collect();
    let mask: Vec<bool> = (0..rows * n).map(|_| rng.uniform() > 0.0).collect();
    let zero = C::new(0.0, 0.0);
    for mode in [Mode::Causal, Mode::Bidirectional] {
        let off = OffDiagonals::Symmetric(&b);
        let (mut plain, mut masked) = (vec![zero; rows * n], vec![zero; rows * n]);
        forward_batch(&a, off, &z, mode, n, &mut plain, 2).unwrap();
        forward_batch_masked(&a, off, &z, Some(&mask), mode, n, &mut masked, 2).unwrap();
        for i in 0..rows * n {
            assert_eq!(masked[i], if mask[i] { plain[i] } else { zero }, "{mode:?} forward {i}");
        }
        let gout_zeroed: Vec<C> = (0..rows * n).map(|i| if mask[i] { gout[i] } else { zero }).collect();
        let m = n - 1;
        let (mut ga, mut gb, mut gz) = (vec![0.0; rows * n], vec![0.0; rows * m], vec![zero; rows]);
        backward_batch(&a, off, &z, mode, n, &gout_zeroed, &mut ga, &mut gb, None, &mut gz, 2).unwrap();
        let (mut ga2, mut gb2, mut gz2) = (vec![0.0; rows * n], vec![0.0; rows * m], vec![zero; rows]);
        backward_batch_masked(&a, off, &z, Some(&mask), mode, n, &gout, &mut ga2, &mut gb2, None, &mut gz2, 2).unwrap();
        assert_eq!((ga, gb, gz), (ga2, gb2, gz2), "{mode:?} backward");
    }
    let mut out = vec![zero; rows * n];
    let err = forward_batch_masked(&a, OffDiagonals::Symmetric(&b), &z, Some(&mask[1..]), Mode::Causal, n, &mut out, 1);
    assert!(err.unwrap_err().to_string().contains("mask: expected"));
}
