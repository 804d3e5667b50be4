//! Causal multi-head self-attention with dropout on its probabilities, forward and backward.
//!
//! On a CPU at the benchmark's shape (batch 32, 128 tokens, 4 heads of 16) torch's math path
//! makes eight passes over a `(batch, heads, N, N)` tensor per layer (scores, mask, softmax,
//! dropout, and their backwards), ~9 ms of a ~320 ms training step per layer, and saves two of
//! them for the backward. Here each (batch, head) pair is one piece of work whose tile of scores
//! stays in the L2 cache, and the backward recomputes the probabilities from the saved
//! log-sum-exp (the recomputation of FlashAttention, Dao et al. 2022), so only `(batch, heads, N)`
//! floats are saved.
//!
//! Layouts: `qkv` is the fused projection's output `(batch, N, 3, heads, head_dim)` (query, key,
//! value); `out` is `(batch, N, heads, head_dim)`, the input of the output projection; `lse` is
//! `(batch, heads, N)`. With `q~ = scale q`:
//!
//! ```text
//! S[i, j] = q~_i . k_j (j <= i),   P = softmax_j(S),   P'[i, j] = P[i, j] * mask[i, j] / keep,
//! out_i = sum_j P'[i, j] v_j,      lse_i = log sum_j exp(S[i, j])
//! ```
//!
//! where `mask[i, j]` is `crate::dropout`'s mask of element `((b * heads + h) * N + i) * N + j`
//! under `seed`: the same mask that `dropout` with that seed draws for the probabilities as one
//! contiguous `(batch, heads, N, N)` tensor, so this kernel and torch's ops with that dropout
//! agree to rounding. The backward (`dS = P * (dP - D)` with `dP = (dout . v) * mask / keep` and
//! `D_i = sum_j P[i, j] dP[i, j]`) writes the gradient of `qkv`.
//!
//! Tiles are key-major (row `j` of a tile holds key `j`'s scores for a block of `QUERY_BLOCK`
//! queries), so the softmax's maximum and sums over keys are lane-wise over queries and every
//! loop vectorises; results do not depend on the thread count (each pair is one task's work).

use std::fmt;
use std::ops::Range;

use crate::dropout::{bits, key, low_bits};
use crate::exp::{exp, mul_add, select};
use crate::parallel::{for_each_task, split, Shared};

/// Queries per tile: a tile of `N` keys by 64 queries is 512 KiB at N = 2,048, inside L2; a
/// row of 64 is four AVX-512 (eight AVX2) registers, where the products accumulate. The last
/// block of a sequence is padded to 64 with zero queries.
const QUERY_BLOCK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Shape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `(qkv, out, lse)` element counts, or an error where a product overflows.
    fn lengths(&self) -> Result<(usize, usize, usize), AttentionError> {
        let product = |factors: &[usize]| factors.iter().try_fold(1_usize, |acc, &f| acc.checked_mul(f));
        let Shape { batch, seq, heads, head_dim } = *self;
        match (product(&[batch, seq, 3, heads, head_dim]), product(&[batch, seq, heads, head_dim]), product(&[batch, heads, seq])) {
            (Some(qkv), Some(out), Some(lse)) => Ok((qkv, out, lse)),
            _ => Err(AttentionError(format!("shape: {self:?} has more elements than memory can address"))),
        }
    }

    fn check(&self, what: &[(&str, usize, usize)]) -> Result<(), AttentionError> {
        if self.heads == 0 || self.head_dim == 0 {
            return Err(AttentionError(format!(
                "heads and head_dim: expected both > 0, got {} and {}",
                self.heads, self.head_dim
            )));
        }
        for &(name, expected, got) in what {
            if expected != got {
                return Err(AttentionError(format!("{name}: expected {expected} elements, got {got}")));
            }
        }
        Ok(())
    }
}

/// Dropout of the probabilities: kept with probability `keep` (1: no dropout), masks from `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub keep: f32,
    pub seed: u64,
}

impl Dropout {
    fn check(&self) -> Result<(), AttentionError> {
        if self.keep > 0.0 && self.keep <= 1.0 {
            Ok(())
        } else {
            Err(AttentionError(format!("keep: expected a probability in (0, 1], got {}", self.keep)))
        }
    }

    fn threshold(&self) -> u64 {
        ((self.keep as f64) * 4_294_967_296.0).round() as u64 // kept iff bits < threshold, as in dropout
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionError(pub String);

impl fmt::Display for AttentionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AttentionError {}

/// The forward: writes `out` and `lse` (see the module's documentation).
pub fn forward(
    qkv: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
    shape: Shape,
    scale: f32,
    dropout: Dropout,
    threads: usize,
) -> Result<(), AttentionError> {
    let (qkv_len, out_len, lse_len) = shape.lengths()?;
    shape.check(&[("qkv", qkv_len, qkv.len()), ("out", out_len, out.len()), ("lse", lse_len, lse.len())])?;
    dropout.check()?;
    let work = Work { qkv, shape, scale, dropout };
    run(&work, threads, Pass::Forward { out: Shared(out.as_mut_ptr()), lse: Shared(lse.as_mut_ptr()) });
    Ok(())
}

/// The backward: writes `grad_qkv` from `grad_out` and the forward's `lse`, same `scale` and
/// `dropout`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    qkv: &[f32],
    grad_out: &[f32],
    lse: &[f32],
    grad_qkv: &mut [f32],
    shape: Shape,
    scale: f32,
    dropout: Dropout,
    threads: usize,
) -> Result<(), AttentionError> {
    let (qkv_len, out_len, lse_len) = shape.lengths()?;
    shape.check(&[
        ("qkv", qkv_len, qkv.len()),
        ("grad_out", out_len, grad_out.len()),
        ("lse", lse_len, lse.len()),
        ("grad_qkv", qkv_len, grad_qkv.len()),
    ])?;
    dropout.check()?;
    let work = Work { qkv, shape, scale, dropout };
    run(&work, threads, Pass::Backward { grad_out, lse, grad_qkv: Shared(grad_qkv.as_mut_ptr()) });
    Ok(())
}

/// What every task reads.
struct Work<'a> {
    qkv: &'a [f32],
    shape: Shape,
    scale: f32,
    dropout: Dropout,
}

/// Which pass, with what it reads besides `Work` and where it writes.
#[derive(Clone, Copy)]
enum Pass<'a> {
    Forward { out: Shared<f32>, lse: Shared<f32> },
    Backward { grad_out: &'a [f32], lse: &'a [f32], grad_qkv: Shared<f32> },
}

fn run(work: &Work, threads: usize, pass: Pass) {
    let pairs = work.shape.batch * work.shape.heads;
    if pairs == 0 || work.shape.seq == 0 {
        return;
    }
    let tasks = threads.max(1).min(pairs);
    for_each_task(tasks, threads, |task| {
        let mine = split(pairs, tasks, task, 1);
        match pass {
            Pass::Forward { out, lse } => best::forward(work, out, lse, mine),
            Pass::Backward { grad_out, lse, grad_qkv } => best::backward(work, grad_out, lse, grad_qkv, mine),
        }
    });
}

/// `y += a x`, lane-wise.
#[inline(always)]
fn axpy<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = mul_add::<FMA>(a, x, *y);
    }
}

/// One pair's rows, gathered from `qkv` (the query scaled by `scale`) and zero-padded to
/// `padded` positions (a multiple of `QUERY_BLOCK`): `q`, `k`, `v` are `(padded, head_dim)`,
/// `q_t` is `(head_dim, padded)`.
struct Rows {
    q: Vec<f32>,
    q_t: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Rows {
    fn gather(work: &Work, pair: usize, dh: usize, padded: usize) -> Self {
        let Shape { seq: n, heads, .. } = work.shape;
        let (b, h) = (pair / heads, pair % heads);
        let width = work.shape.width();
        let zeros = || vec![0.0_f32; padded * dh];
        let mut rows = Rows { q: zeros(), q_t: zeros(), k: zeros(), v: zeros() };
        for i in 0..n {
            let at = |c: usize| ((b * n + i) * 3 + c) * width + h * dh;
            let (q, k, v) = (&work.qkv[at(0)..][..dh], &work.qkv[at(1)..][..dh], &work.qkv[at(2)..][..dh]);
            for (d, &x) in q.iter().enumerate() {
                rows.q[i * dh + d] = x * work.scale;
                rows.q_t[d * padded + i] = x * work.scale;
            }
            rows.k[i * dh..][..dh].copy_from_slice(k);
            rows.v[i * dh..][..dh].copy_from_slice(v);
        }
        rows
    }
}

type Lanes = [f32; QUERY_BLOCK];

/// `sum_d row[d] cols_t[d][c0..c0 + QUERY_BLOCK]` (`cols_t`: `(dh, padded)`), in registers.
#[inline(always)]
fn row_times<const FMA: bool, const D: usize>(row: &[f32], cols_t: &[f32], padded: usize, c0: usize, dh: usize) -> Lanes {
    let mut acc = [0.0_f32; QUERY_BLOCK];
    for (d, &r) in row[..if D == 0 { dh } else { D }].iter().enumerate() {
        let cols: &Lanes = cols_t[d * padded + c0..][..QUERY_BLOCK].try_into().unwrap();
        for (a, &x) in acc.iter_mut().zip(cols) {
            *a = mul_add::<FMA>(r, x, *a);
        }
    }
    acc
}

/// `out_t[d] += sum_j rows[j][d] tile[j]` over the tile's rows (`out_t`: `(dh, QUERY_BLOCK)`,
/// `rows`: `(keys, dh)`), two feature rows at a time held in registers.
#[inline(always)]
fn transposed_products<const FMA: bool, const D: usize>(out_t: &mut [f32], tile: &[f32], rows: &[f32], dh: usize) {
    let dh = if D == 0 { dh } else { D };
    let mut d = 0;
    while d + 2 <= dh {
        let (mut acc0, mut acc1) = ([0.0_f32; QUERY_BLOCK], [0.0_f32; QUERY_BLOCK]);
        for (lanes, row) in tile.chunks_exact(QUERY_BLOCK).zip(rows.chunks_exact(dh)) {
            let (r0, r1) = (row[d], row[d + 1]);
            for ((a0, a1), &x) in acc0.iter_mut().zip(acc1.iter_mut()).zip(lanes) {
                *a0 = mul_add::<FMA>(r0, x, *a0);
                *a1 = mul_add::<FMA>(r1, x, *a1);
            }
        }
        for (k, a) in [acc0, acc1].iter().enumerate() {
            for (o, &x) in out_t[(d + k) * QUERY_BLOCK..][..QUERY_BLOCK].iter_mut().zip(a) {
                *o += x;
            }
        }
        d += 2;
    }
    if d < dh {
        for (lanes, row) in tile.chunks_exact(QUERY_BLOCK).zip(rows.chunks_exact(dh)) {
            axpy::<FMA>(&mut out_t[d * QUERY_BLOCK..][..QUERY_BLOCK], row[d], lanes);
        }
    }
}

/// `acc += sum_t coefficients[t] rows[t]` for `rows` of width `dh` (`D` when not 0): four
/// partial sums held in registers, not a chain of adds through memory.
#[inline(always)]
fn accumulate_rows<const FMA: bool, const D: usize>(acc: &mut [f32], coefficients: &[f32], rows: &[f32], dh: usize) {
    if D == 0 {
        for (&c, row) in coefficients.iter().zip(rows.chunks_exact(dh)) {
            axpy::<FMA>(acc, c, row);
        }
        return;
    }
    let mut partial = [[0.0_f32; D]; 4];
    for (c, four) in coefficients.chunks_exact(4).zip(rows.chunks_exact(4 * D)) {
        for (k, part) in partial.iter_mut().enumerate() {
            for (p, &x) in part.iter_mut().zip(&four[k * D..(k + 1) * D]) {
                *p = mul_add::<FMA>(c[k], x, *p);
            }
        }
    }
    let done = coefficients.len() / 4 * 4;
    for (&c, row) in coefficients[done..].iter().zip(rows[done * D..].chunks_exact(D)) {
        for (p, &x) in partial[0].iter_mut().zip(row) {
            *p = mul_add::<FMA>(c, x, *p);
        }
    }
    for (d, a) in acc.iter_mut().enumerate() {
        *a += (partial[0][d] + partial[1][d]) + (partial[2][d] + partial[3][d]);
    }
}

/// Key `j`'s dropout factors for queries `c0..c0 + QUERY_BLOCK` (`1 / keep` where kept, else 0;
/// all 1 without dropout), from the mask index `first` of query `c0` (the next query's is `n` on).
#[inline(always)]
fn mask_row(dropout: &Dropout, threshold: u64, first: u64, n: usize) -> Lanes {
    let mut factor = [1.0_f32; QUERY_BLOCK];
    if dropout.keep == 1.0 {
        return factor;
    }
    let inverse = 1.0 / dropout.keep;
    let last = first + ((QUERY_BLOCK - 1) * n) as u64;
    if first >> 32 == last >> 32 {
        // One key for the whole row: 32-bit index arithmetic (what vectorises best).
        let (key, seed_low, base, step) = (key((first >> 32) as u32, dropout.seed), dropout.seed as u32, first as u32, n as u32);
        for (t, f) in factor.iter_mut().enumerate() {
            let kept = (low_bits(base.wrapping_add(t as u32 * step), seed_low, key) as u64) < threshold;
            *f = select(kept, inverse, 0.0);
        }
    } else {
        for (t, f) in factor.iter_mut().enumerate() {
            let kept = (bits(first + (t * n) as u64, dropout.seed) as u64) < threshold;
            *f = select(kept, inverse, 0.0);
        }
    }
    factor
}

fn padded(n: usize) -> usize {
    n.div_ceil(QUERY_BLOCK) * QUERY_BLOCK
}

#[inline(always)]
fn forward_pairs<const FMA: bool, const D: usize>(work: &Work, out: Shared<f32>, lse: Shared<f32>, pairs: Range<usize>) {
    let Shape { seq: n, heads, head_dim, .. } = work.shape;
    let dh = if D == 0 { head_dim } else { D };
    let padded = padded(n);
    let threshold = work.dropout.threshold();
    let mut tile = vec![0.0_f32; n * QUERY_BLOCK];
    let mut out_t = vec![0.0_f32; dh * QUERY_BLOCK];
    for pair in pairs {
        let rows = Rows::gather(work, pair, dh, padded);
        let (b, h) = (pair / heads, pair % heads);
        for c0 in (0..n).step_by(QUERY_BLOCK) {
            let c1 = (c0 + QUERY_BLOCK).min(n); // queries c0..c1 see keys 0..c1
            let tile = &mut tile[..c1 * QUERY_BLOCK];
            // Scores, and their maximum per query. Columns past the last query (padding) hold
            // finite products of zeros and are never written out.
            let mut top = [f32::NEG_INFINITY; QUERY_BLOCK];
            for (j, row) in tile.chunks_exact_mut(QUERY_BLOCK).enumerate() {
                let mut s = row_times::<FMA, D>(&rows.k[j * dh..], &rows.q_t, padded, c0, dh);
                if j > c0 {
                    s[..j - c0].fill(f32::NEG_INFINITY); // key j is in these queries' future
                }
                for (m, &x) in top.iter_mut().zip(&s) {
                    *m = if x > *m { x } else { *m };
                }
                row.copy_from_slice(&s);
            }
            let mut sum = [0.0_f32; QUERY_BLOCK];
            for row in tile.chunks_exact_mut(QUERY_BLOCK) {
                for ((x, &m), l) in row.iter_mut().zip(&top).zip(sum.iter_mut()) {
                    let e = exp::<FMA>(*x - m); // key j = query i is never masked: m is finite
                    *x = e;
                    *l += e;
                }
            }
            let inv = sum.map(|l| 1.0 / l);
            for (j, row) in tile.chunks_exact_mut(QUERY_BLOCK).enumerate() {
                let factor = mask_row(&work.dropout, threshold, ((pair * n + c0) * n + j) as u64, n);
                for ((x, &f), &l) in row.iter_mut().zip(&factor).zip(&inv) {
                    *x *= f * l;
                }
            }
            out_t.fill(0.0);
            transposed_products::<FMA, D>(&mut out_t, tile, &rows.v[..c1 * dh], dh);
            for t in 0..c1 - c0 {
                let i = c0 + t;
                // SAFETY: pair (b, h) alone writes out's (b, i, h, ..) rows and lse's (b, h, ..).
                let out = unsafe { out.slice(((b * n + i) * heads + h) * dh, dh) };
                for (d, o) in out.iter_mut().enumerate() {
                    *o = out_t[d * QUERY_BLOCK + t];
                }
                // SAFETY: as above.
                unsafe { lse.slice(pair * n + i, 1)[0] = top[t] + sum[t].ln() };
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_pairs<const FMA: bool, const D: usize>(
    work: &Work,
    grad_out: &[f32],
    lse_all: &[f32],
    grad: Shared<f32>,
    pairs: Range<usize>,
) {
    let Shape { seq: n, heads, head_dim, .. } = work.shape;
    let dh = if D == 0 { head_dim } else { D };
    let width = work.shape.width();
    let padded = padded(n);
    let threshold = work.dropout.threshold();
    let (mut probs, mut grads) = (vec![0.0_f32; n * QUERY_BLOCK], vec![0.0_f32; n * QUERY_BLOCK]);
    let mut dq_t = vec![0.0_f32; dh * QUERY_BLOCK];
    let zeros = || vec![0.0_f32; padded * dh];
    let (mut dy, mut dy_t, mut dk, mut dv) = (zeros(), zeros(), zeros(), zeros());
    let mut lse = vec![0.0_f32; padded];
    for pair in pairs {
        let rows = Rows::gather(work, pair, dh, padded);
        let (b, h) = (pair / heads, pair % heads);
        lse[..n].copy_from_slice(&lse_all[pair * n..][..n]);
        for i in 0..n {
            let g = &grad_out[((b * n + i) * heads + h) * dh..][..dh];
            dy[i * dh..][..dh].copy_from_slice(g);
            for (d, &x) in g.iter().enumerate() {
                dy_t[d * padded + i] = x;
            }
        }
        dk.fill(0.0);
        dv.fill(0.0);
        for c0 in (0..n).step_by(QUERY_BLOCK) {
            let c1 = (c0 + QUERY_BLOCK).min(n);
            let (probs, grads) = (&mut probs[..c1 * QUERY_BLOCK], &mut grads[..c1 * QUERY_BLOCK]);
            let lse: &Lanes = lse[c0..][..QUERY_BLOCK].try_into().unwrap();
            // Padding columns: lse 0 and a zero incoming gradient, so their dS is 0 and they add
            // nothing to the keys' and values' gradients.
            let mut diag = [0.0_f32; QUERY_BLOCK]; // D_i = sum_j P dP
            for (j, (p, g)) in probs.chunks_exact_mut(QUERY_BLOCK).zip(grads.chunks_exact_mut(QUERY_BLOCK)).enumerate() {
                let mut s = row_times::<FMA, D>(&rows.k[j * dh..], &rows.q_t, padded, c0, dh);
                if j > c0 {
                    s[..j - c0].fill(f32::NEG_INFINITY);
                }
                for (x, &l) in s.iter_mut().zip(lse) {
                    *x = exp::<FMA>(*x - l); // P
                }
                // dP' = dout . v_j, then dP = dP' mask / keep, and kept = P mask / keep.
                let mut dp = row_times::<FMA, D>(&rows.v[j * dh..], &dy_t, padded, c0, dh);
                let factor = mask_row(&work.dropout, threshold, ((pair * n + c0) * n + j) as u64, n);
                let mut kept = [0.0_f32; QUERY_BLOCK];
                for (((x, k), &pt), &f) in dp.iter_mut().zip(kept.iter_mut()).zip(&s).zip(&factor) {
                    *x *= f;
                    *k = pt * f;
                }
                accumulate_rows::<FMA, D>(&mut dv[j * dh..][..dh], &kept, &dy[c0 * dh..(c0 + QUERY_BLOCK) * dh], dh);
                for ((dd, &pt), &gt) in diag.iter_mut().zip(&s).zip(&dp) {
                    *dd = mul_add::<FMA>(pt, gt, *dd);
                }
                p.copy_from_slice(&s);
                g.copy_from_slice(&dp);
            }
            for (j, (p, g)) in probs.chunks_exact(QUERY_BLOCK).zip(grads.chunks_exact_mut(QUERY_BLOCK)).enumerate() {
                for ((x, &pt), &dd) in g.iter_mut().zip(p).zip(&diag) {
                    *x = pt * (*x - dd); // dS
                }
                accumulate_rows::<FMA, D>(&mut dk[j * dh..][..dh], g, &rows.q[c0 * dh..(c0 + QUERY_BLOCK) * dh], dh);
            }
            dq_t.fill(0.0);
            transposed_products::<FMA, D>(&mut dq_t, grads, &rows.k[..c1 * dh], dh);
            for t in 0..c1 - c0 {
                // SAFETY: pair (b, h) alone writes grad_qkv's (b, i, ., h, ..) rows.
                let dq = unsafe { grad.slice(((b * n + c0 + t) * 3) * width + h * dh, dh) };
                for (d, x) in dq.iter_mut().enumerate() {
                    *x = dq_t[d * QUERY_BLOCK + t] * work.scale;
                }
            }
        }
        for i in 0..n {
            // SAFETY: as above.
            let (gk, gv) = unsafe {
                (grad.slice(((b * n + i) * 3 + 1) * width + h * dh, dh), grad.slice(((b * n + i) * 3 + 2) * width + h * dh, dh))
            };
            gk.copy_from_slice(&dk[i * dh..][..dh]);
            gv.copy_from_slice(&dv[i * dh..][..dh]);
        }
    }
}

/// The passes compiled for AVX-512 and AVX2 (with fused multiply-adds) beside the baseline, each
/// for head widths 8, 16, 32 and 64 known at compile time (the per-key loops become whole
/// vectors) and any other, the best chosen at run time.
mod best {
    use super::{backward_pairs, forward_pairs, Shared, Work};
    use std::ops::Range;

    macro_rules! variants {
        ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
            #[allow(clippy::too_many_arguments)]
            pub(super) fn $name(work: &Work, $($arg: $ty),*) {
                macro_rules! with_width {
                    ($d:literal) => {{
                        #[cfg(target_arch = "x86_64")]
                        {
                            #[target_feature(enable = "avx512f,fma")]
                            #[allow(clippy::too_many_arguments)]
                            unsafe fn avx512(work: &Work, $($arg: $ty),*) { $generic::<true, $d>(work, $($arg),*) }
                            #[target_feature(enable = "avx2,fma")]
                            #[allow(clippy::too_many_arguments)]
                            unsafe fn avx2(work: &Work, $($arg: $ty),*) { $generic::<true, $d>(work, $($arg),*) }
                            match crate::isa::chosen() {
                                // SAFETY: the body is safe code; its only precondition, the CPU
                                // features, is what `chosen` checked at run time.
                                crate::isa::Isa::Avx512 => return unsafe { avx512(work, $($arg),*) },
                                // SAFETY: as above.
                                crate::isa::Isa::Avx2 => return unsafe { avx2(work, $($arg),*) },
                                crate::isa::Isa::Baseline => {}
                            }
                        }
                        $generic::<false, $d>(work, $($arg),*)
                    }};
                }
                match work.shape.head_dim {
                    8 => with_width!(8),
                    16 => with_width!(16),
                    32 => with_width!(32),
                    64 => with_width!(64),
                    _ => with_width!(0),
                }
            }
        };
    }

    variants!(forward, forward_pairs, (out: Shared<f32>, lse: Shared<f32>, pairs: Range<usize>));
    variants!(backward, backward_pairs, (grad_out: &[f32], lse: &[f32], grad: Shared<f32>, pairs: Range<usize>));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random vector in [-1, 1).
    fn values(len: usize, salt: u64) -> Vec<f32> {
        (0..len).map(|i| (bits(i as u64, salt) as f64 / 2_147_483_648.0 - 1.0) as f32).collect()
    }

    /// The definition, in float64: (out, lse).
    fn naive(qkv: &[f32], s: Shape, scale: f32, dropout: Dropout) -> (Vec<f64>, Vec<f64>) {
        let Shape { batch, seq: n, heads, head_dim: dh } = s;
        let width = s.width();
        let at = |b: usize, i: usize, c: usize, h: usize, d: usize| qkv[((b * n + i) * 3 + c) * width + h * dh + d] as f64;
        let mut out = vec![0.0; batch * n * width];
        let mut lse = vec![0.0; batch * heads * n];
        let threshold = dropout.threshold();
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..n {
                    let sc: Vec<f64> =
                        (0..=i).map(|j| (0..dh).map(|d| at(b, i, 0, h, d) * scale as f64 * at(b, j, 1, h, d)).sum()).collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    lse[(b * heads + h) * n + i] = m + z.ln();
                    for (j, x) in sc.iter().enumerate() {
                        let index = (((b * heads + h) * n + i) * n + j) as u64;
                        let kept = (bits(index, dropout.seed) as u64) < threshold;
                        let p = if kept { (x - m).exp() / z / dropout.keep as f64 } else { 0.0 };
                        for d in 0..dh {
                            out[((b * n + i) * heads + h) * dh + d] += p * at(b, j, 2, h, d);
                        }
                    }
                }
            }
        }
        (out, lse)
    }

    fn run_forward(qkv: &[f32], s: Shape, scale: f32, dropout: Dropout, threads: usize) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0.0; s.batch * s.seq * s.width()];
        let mut lse = vec![0.0; s.batch * s.heads * s.seq];
        forward(qkv, &mut out, &mut lse, s, scale, dropout, threads).unwrap();
        (out, lse)
    }

    const SHAPES: [Shape; 3] = [
        Shape { batch: 2, seq: 7, heads: 3, head_dim: 5 },
        Shape { batch: 1, seq: 130, heads: 2, head_dim: 16 }, // three query blocks, the last of 2
        Shape { batch: 3, seq: 65, heads: 1, head_dim: 8 },
    ];

    #[test]
    fn forward_matches_the_definition() {
        for s in SHAPES {
            let qkv = values(s.batch * s.seq * 3 * s.width(), 5);
            for dropout in [Dropout { keep: 1.0, seed: 0 }, Dropout { keep: 0.7, seed: 9 }] {
                let (out, lse) = run_forward(&qkv, s, 0.4, dropout, 2);
                let (out_ref, lse_ref) = naive(&qkv, s, 0.4, dropout);
                for (a, b) in out.iter().zip(&out_ref).chain(lse.iter().zip(&lse_ref)) {
                    assert!((*a as f64 - b).abs() < 2e-5 * (1.0 + b.abs()), "{s:?} {dropout:?}: {a} vs {b}");
                }
            }
        }
    }

    /// The backward against central differences of `sum(out * weights)`.
    #[test]
    fn backward_matches_finite_differences() {
        for s in SHAPES {
            let qkv = values(s.batch * s.seq * 3 * s.width(), 3);
            let weights = values(s.batch * s.seq * s.width(), 4);
            for dropout in [Dropout { keep: 1.0, seed: 0 }, Dropout { keep: 0.6, seed: 2 }] {
                let (_, lse) = run_forward(&qkv, s, 0.5, dropout, 1);
                let mut grad = vec![0.0; qkv.len()];
                backward(&qkv, &weights, &lse, &mut grad, s, 0.5, dropout, 3).unwrap();
                let loss = |x: &[f32]| -> f64 {
                    let (out, _) = naive(x, s, 0.5, dropout);
                    out.iter().zip(&weights).map(|(o, &w)| o * w as f64).sum()
                };
                let step = (qkv.len() / 40).max(1);
                for e in (0..qkv.len()).step_by(step) {
                    let (mut up, mut down) = (qkv.clone(), qkv.clone());
                    let eps = 1e-2;
                    up[e] += eps;
                    down[e] -= eps;
                    let numeric = (loss(&up) - loss(&down)) / (2.0 * eps as f64);
                    assert!((grad[e] as f64 - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
                            "{s:?} {dropout:?} element {e}: {} vs {numeric}", grad[e]);
                }
            }
        }
    }

    #[test]
    fn the_same_bits_whatever_the_threads() {
        let s = Shape { batch: 3, seq: 33, heads: 2, head_dim: 16 };
        let qkv = values(s.batch * s.seq * 3 * s.width(), 8);
        let dropout = Dropout { keep: 0.9, seed: 1 };
        let (one, lse) = run_forward(&qkv, s, 0.25, dropout, 1);
        assert_eq!(run_forward(&qkv, s, 0.25, dropout, 4), (one.clone(), lse.clone()));
        let mut grads = [vec![0.0; qkv.len()], vec![0.0; qkv.len()]];
        for (g, threads) in grads.iter_mut().zip([1, 5]) {
            backward(&qkv, &one, &lse, g, s, 0.25, dropout, threads).unwrap();
        }
        assert_eq!(grads[0], grads[1]);
    }

    #[test]
    fn bad_sizes_and_probabilities_are_named() {
        let s = Shape { batch: 1, seq: 4, heads: 2, head_dim: 3 };
        let (mut out, mut lse) = (vec![0.0; 24], vec![0.0; 8]);
        let err = forward(&[0.0; 10], &mut out, &mut lse, s, 1.0, Dropout { keep: 1.0, seed: 0 }, 1).unwrap_err();
        assert!(err.0.starts_with("qkv: expected 72 elements"), "{err}");
        let err = forward(&[0.0; 72], &mut out, &mut lse, s, 1.0, Dropout { keep: 0.0, seed: 0 }, 1).unwrap_err();
        assert!(err.0.starts_with("keep:"), "{err}");
        let s0 = Shape { heads: 0, ..s };
        assert!(forward(&[], &mut [], &mut [], s0, 1.0, Dropout { keep: 1.0, seed: 0 }, 1).is_err());
        let huge = Shape { batch: 1 << 62, seq: 2, heads: 1, head_dim: 1 }; // products wrap to 0 unchecked
        let err = forward(&[], &mut [], &mut [], huge, 1.0, Dropout { keep: 1.0, seed: 0 }, 1).unwrap_err();
        assert!(err.0.starts_with("shape:"), "{err}");
    }

    /// A row of 64 queries whose mask indices cross a multiple of 2^32 takes the 64-bit path;
    /// both paths give `bits` of each element's index.
    #[test]
    fn the_mask_of_a_row_is_the_dropout_mask_on_both_sides_of_2_pow_32() {
        let dropout = Dropout { keep: 0.5, seed: 0x1234_5678_9abc_def0 };
        let threshold = dropout.threshold();
        for n in [1_usize, 7, 128, 70_000] {
            for first in [0_u64, (1 << 32) - 63 * n as u64, (1 << 32) - 5 * n as u64, 3 << 32, (5 << 32) - 1] {
                let row = mask_row(&dropout, threshold, first, n);
                for (t, &f) in row.iter().enumerate() {
                    let kept = (bits(first + (t * n) as u64, dropout.seed) as u64) < threshold;
                    assert_eq!(f, if kept { 2.0 } else { 0.0 }, "n {n} first {first} t {t}");
                }
            }
        }
    }
}
