//! The LM head's softmax cross-entropy and its logits gradient, for one block of rows.
//!
//! The block is vocabulary-major: `logits[v * cols + r]` is word `v`'s logit for row `r` (the
//! layout in which the head's products run fastest on a CPU; see `resnetbk.models.head`). For
//! every row `r` with target `t = targets[r]` (rows whose target is `ignore_index` contribute
//! nothing):
//!
//! ```text
//! lse[r]  = log sum_v exp(logits[v, r])          nll[r] = lse[r] - logits[t, r]
//! logits[v, r] <- exp(logits[v, r] - lse[r]) - [v == t]      (the gradient of nll[r]; 0 on ignored rows)
//! grad_bias[v] += sum_r logits[v, r]                          (optional)
//! ```
//!
//! Two passes over the block, each chunk of `CHUNK` vocabulary rows handled while it sits in
//! the L1 cache. Pass 1 takes the chunk's maximum per row, stores `exp(logit - chunk max)` in
//! place and merges the chunk's sum into a running (maximum, sum) per row (the online softmax of
//! Milakov and Gimelshein 2018, a chunk at a time). Pass 2 rescales each stored chunk by
//! `exp(chunk max - lse)`, subtracts the one-hot and sums the bias gradient. One exponential per
//! logit, two reads and two writes of the block; torch's ops (max, subtract, exp, sum, scale,
//! scatter, sum) take seven passes. The vocabulary is split between the threads.

use std::fmt;

use crate::exp::exp;
use crate::parallel::{for_each_task, split, Shared};

/// Vocabulary rows per chunk: 32 rows of 128 float32 (one block row count) are 16 KiB, inside
/// every x86 L1 data cache.
const CHUNK: usize = 32;
/// Lanes of the explicit partial sums (wide enough for AVX-512; the order of the additions is the
/// same whatever the vector width the compiler picks). Results do depend, in the last bits, on
/// the thread count (each thread's share of the vocabulary is summed apart, then merged) and on
/// whether the CPU has FMA.
const LANES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XentError(pub String);

impl fmt::Display for XentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XentError {}

/// See the module's documentation. `logits` is `(vocab, cols)`, `targets` and `nll` `(cols)`,
/// `grad_bias` `(vocab)`. A target must be in `0..vocab` or equal `ignore_index`. Without
/// `gradient` only the NLL is computed (pass 1), `logits` is left holding intermediate values
/// and `grad_bias` must be `None`.
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_grad(
    logits: &mut [f32],
    vocab: usize,
    cols: usize,
    targets: &[i64],
    ignore_index: i64,
    nll: &mut [f32],
    grad_bias: Option<&mut [f32]>,
    gradient: bool,
    threads: usize,
) -> Result<(), XentError> {
    check_sizes(logits.len(), vocab, cols, targets.len(), nll.len(), grad_bias.as_ref().map(|b| b.len()))?;
    if !gradient && grad_bias.is_some() {
        return Err(XentError("grad_bias: must be None when no gradient is computed".into()));
    }
    let targets = Targets::new(targets, ignore_index, vocab)?;
    if cols == 0 {
        return Ok(());
    }
    let target_logit: Vec<f32> =
        (0..cols).map(|r| targets.of[r].map_or(0.0, |t| logits[t * cols + r])).collect();
    let chunks = vocab.div_ceil(CHUNK);
    let tasks = threads.max(1).min(chunks.max(1));
    let mut chunk_max = vec![0.0_f32; chunks * cols];
    let mut partial = vec![(f32::NEG_INFINITY, 0.0_f32); tasks * cols];

    let (logits_ptr, max_ptr, partial_ptr) =
        (Shared(logits.as_mut_ptr()), Shared(chunk_max.as_mut_ptr()), Shared(partial.as_mut_ptr()));
    // Task `task`'s vocabulary rows, and its parts of the block and of the chunks' maxima.
    // SAFETY (of every call below): split gives disjoint ranges starting on chunk boundaries,
    // so each task alone owns its rows, their chunks' maxima and (below) its own partials and
    // bias rows; all lie inside the buffers, and each pass makes each task's slices once.
    let share = |task: usize| {
        let rows = split(vocab, tasks, task, CHUNK);
        // SAFETY: as said above `share`.
        let (block, maxima) = unsafe {
            (
                logits_ptr.slice(rows.start * cols, rows.len() * cols),
                max_ptr.slice(rows.start / CHUNK * cols, rows.len().div_ceil(CHUNK) * cols),
            )
        };
        (rows, block, maxima)
    };
    for_each_task(tasks, threads, |task| {
        let (_, block, maxima) = share(task);
        // SAFETY: see `share`.
        let part = unsafe { partial_ptr.slice(task * cols, cols) };
        best::pass1(block, cols, maxima, part);
    });

    // The tasks' (maximum, sum) merged into each row's log-sum-exp.
    let mut lse = vec![0.0_f32; cols];
    for (r, value) in lse.iter_mut().enumerate() {
        let top = (0..tasks).map(|t| partial[t * cols + r].0).fold(f32::NEG_INFINITY, f32::max);
        let shift = finite_or_zero(top);
        let sum: f32 = (0..tasks).map(|t| partial[t * cols + r].1 * (partial[t * cols + r].0 - shift).exp()).sum();
        *value = shift + sum.ln();
    }
    for r in 0..cols {
        nll[r] = if targets.of[r].is_some() { lse[r] - target_logit[r] } else { 0.0 };
    }
    if !gradient {
        return Ok(());
    }

    let bias_ptr = grad_bias.map(|b| Shared(b.as_mut_ptr()));
    let (lse, targets) = (&lse, &targets);
    for_each_task(tasks, threads, |task| {
        let (rows, block, maxima) = share(task);
        // SAFETY: see `share`.
        let bias = bias_ptr.map(|b| unsafe { b.slice(rows.start, rows.len()) });
        best::pass2(block, cols, maxima, lse, &targets.valid, targets.in_rows(rows.clone()), rows.start, bias);
    });
    Ok(())
}

fn check_sizes(
    logits: usize,
    vocab: usize,
    cols: usize,
    targets: usize,
    nll: usize,
    bias: Option<usize>,
) -> Result<(), XentError> {
    let wrong = |what: &str, expected: usize, got: usize| {
        Err(XentError(format!("{what}: expected {expected} elements, got {got}")))
    };
    if logits != vocab * cols {
        return wrong("logits", vocab * cols, logits);
    }
    if targets != cols {
        return wrong("targets", cols, targets);
    }
    if nll != cols {
        return wrong("nll", cols, nll);
    }
    match bias {
        Some(len) if len != vocab => wrong("grad_bias", vocab, len),
        _ => Ok(()),
    }
}

/// The rows' targets, checked, with the (target, row) pairs sorted by target.
struct Targets {
    of: Vec<Option<usize>>,
    valid: Vec<f32>,
    by_target: Vec<(usize, usize)>,
}

impl Targets {
    fn new(targets: &[i64], ignore_index: i64, vocab: usize) -> Result<Self, XentError> {
        let mut of = Vec::with_capacity(targets.len());
        for (r, &t) in targets.iter().enumerate() {
            if t == ignore_index {
                of.push(None);
            } else if t < 0 || t as u64 >= vocab as u64 {
                return Err(XentError(format!(
                    "targets: row {r} has target {t}, outside 0..{vocab} and not the ignore index {ignore_index}"
                )));
            } else {
                of.push(Some(t as usize));
            }
        }
        let valid = of.iter().map(|t| if t.is_some() { 1.0 } else { 0.0 }).collect();
        let mut by_target: Vec<(usize, usize)> =
            of.iter().enumerate().filter_map(|(r, t)| t.map(|t| (t, r))).collect();
        by_target.sort_unstable();
        Ok(Self { of, valid, by_target })
    }

    /// The (target, row) pairs whose target lies in `rows`.
    fn in_rows(&self, rows: std::ops::Range<usize>) -> &[(usize, usize)] {
        let lo = self.by_target.partition_point(|&(t, _)| t < rows.start);
        let hi = self.by_target.partition_point(|&(t, _)| t < rows.end);
        &self.by_target[lo..hi]
    }
}

/// Pass 1 over one task's vocabulary rows (`block`, `(rows, cols)`): per chunk, its maximum per
/// row into `maxima`, `exp(logit - max)` in place, and the running (maximum, sum) in `part`.
#[inline(always)]
fn pass1<const FMA: bool>(block: &mut [f32], cols: usize, maxima: &mut [f32], part: &mut [(f32, f32)]) {
    let mut run_max = vec![f32::NEG_INFINITY; cols];
    let mut run_sum = vec![0.0_f32; cols];
    let mut sum = vec![0.0_f32; cols];
    for (chunk, top) in block.chunks_mut(CHUNK * cols).zip(maxima.chunks_exact_mut(cols)) {
        top.fill(f32::NEG_INFINITY);
        for row in chunk.chunks_exact(cols) {
            for (m, &x) in top.iter_mut().zip(row) {
                *m = if x > *m { x } else { *m };
            }
        }
        // A row whose logits in this chunk are all -inf is shifted by 0 (its exponentials are
        // 0), not by -inf (-inf - -inf would be NaN).
        for m in top.iter_mut() {
            *m = finite_or_zero(*m);
        }
        sum.fill(0.0);
        for row in chunk.chunks_exact_mut(cols) {
            for ((x, s), &m) in row.iter_mut().zip(sum.iter_mut()).zip(top.iter()) {
                let e = exp::<FMA>(*x - m);
                *x = e;
                *s += e;
            }
        }
        // (Iterators, not indices: bounds checks would keep this loop from vectorising.)
        for (((run_m, run_s), &m_chunk), &s_chunk) in run_max.iter_mut().zip(run_sum.iter_mut()).zip(top.iter()).zip(&sum) {
            let m = if m_chunk > *run_m { m_chunk } else { *run_m }; // finite: m_chunk is
            *run_s = *run_s * exp::<FMA>(*run_m - m) + s_chunk * exp::<FMA>(m_chunk - m);
            *run_m = m;
        }
    }
    for ((p, &m), &s) in part.iter_mut().zip(&run_max).zip(&run_sum) {
        *p = (m, s);
    }
}

/// Pass 2 over one task's rows: each chunk rescaled to the softmax (zero on ignored rows), the
/// one-hot subtracted (`hits`: (target, row) pairs in these rows; `first`: the first row's
/// index in the whole vocabulary), and the bias gradient summed.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass2<const FMA: bool>(
    block: &mut [f32],
    cols: usize,
    maxima: &[f32],
    lse: &[f32],
    valid: &[f32],
    hits: &[(usize, usize)],
    first: usize,
    mut bias: Option<&mut [f32]>,
) {
    let mut factor = vec![0.0_f32; cols];
    let mut hits = hits.iter().peekable();
    for (c, (chunk, top)) in block.chunks_mut(CHUNK * cols).zip(maxima.chunks_exact(cols)).enumerate() {
        for (((f, &m), &l), &keep) in factor.iter_mut().zip(top).zip(lse).zip(valid) {
            *f = exp::<FMA>(m - l) * keep;
        }
        for row in chunk.chunks_exact_mut(cols) {
            for (x, &f) in row.iter_mut().zip(&factor) {
                *x *= f;
            }
        }
        let end = first + (c + 1) * CHUNK;
        while let Some(&&(t, r)) = hits.peek() {
            if t >= end {
                break;
            }
            chunk[(t - first - c * CHUNK) * cols + r] -= 1.0;
            hits.next();
        }
        if let Some(bias) = bias.as_deref_mut() {
            for (v, row) in chunk.chunks_exact(cols).enumerate() {
                bias[c * CHUNK + v] += lane_sum(row);
            }
        }
    }
}

/// `x`, or 0 where `x` is -inf (or +inf, NaN: those poison the row's loss anyway, as in torch).
#[inline(always)]
fn finite_or_zero(x: f32) -> f32 {
    if x.is_infinite() {
        0.0
    } else {
        x
    }
}

/// A sum in `LANES` interleaved partial sums: vectorisable, and the same order on every CPU.
#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0_f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l += x;
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    lanes.iter().sum::<f32>() + tail
}

/// The passes compiled for AVX-512 and for AVX2 (both with fused multiply-adds in the
/// exponential) beside the baseline, the best chosen at run time. Results differ between CPUs
/// with and without FMA in the last bit of a logit's gradient.
mod best {
    use super::{pass1 as pass1_generic, pass2 as pass2_generic};

    macro_rules! variants {
        ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
            #[allow(clippy::too_many_arguments)]
            pub(super) fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,fma")]
                    #[allow(clippy::too_many_arguments)]
                    unsafe fn avx512($($arg: $ty),*) { $generic::<true>($($arg),*) }
                    #[target_feature(enable = "avx2,fma")]
                    #[allow(clippy::too_many_arguments)]
                    unsafe fn avx2($($arg: $ty),*) { $generic::<true>($($arg),*) }
                    match crate::isa::chosen() {
                        // SAFETY: the body is the safe generic pass; its only precondition, that
                        // the CPU has AVX-512F and FMA, is what `chosen` checked at run time.
                        crate::isa::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                        // SAFETY: as above, for AVX2 and FMA.
                        crate::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                        crate::isa::Isa::Baseline => {}
                    }
                }
                $generic::<false>($($arg),*)
            }
        };
    }

    variants!(pass1, pass1_generic, (block: &mut [f32], cols: usize, maxima: &mut [f32], part: &mut [(f32, f32)]));
    variants!(pass2, pass2_generic, (block: &mut [f32], cols: usize, maxima: &[f32], lse: &[f32], valid: &[f32],
        hits: &[(usize, usize)], first: usize, bias: Option<&mut [f32]>));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain float64 computation, row by row.
    fn reference(logits: &[f32], vocab: usize, cols: usize, targets: &[i64], ignore: i64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut grad = vec![0.0; vocab * cols];
        let mut nll = vec![0.0; cols];
        let mut bias = vec![0.0; vocab];
        for r in 0..cols {
            if targets[r] == ignore {
                continue;
            }
            let col: Vec<f64> = (0..vocab).map(|v| logits[v * cols + r] as f64).collect();
            let top = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = top + col.iter().map(|x| (x - top).exp()).sum::<f64>().ln();
            let t = targets[r] as usize;
            nll[r] = lse - col[t];
            for v in 0..vocab {
                let g = (col[v] - lse).exp() - if v == t { 1.0 } else { 0.0 };
                grad[v * cols + r] = g;
                bias[v] += g;
            }
        }
        (nll, grad, bias)
    }

    fn case(vocab: usize, cols: usize, threads: usize) {
        let mut state = 12345_u64 + (vocab * 31 + cols) as u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 20.0
        };
        let logits: Vec<f32> = (0..vocab * cols).map(|_| next()).collect();
        let targets: Vec<i64> =
            (0..cols).map(|r| if r % 5 == 3 { -100 } else { ((r * 7919) % vocab) as i64 }).collect();
        let (want_nll, want_grad, want_bias) = reference(&logits, vocab, cols, &targets, -100);
        let mut got = logits.clone();
        let mut nll = vec![f32::NAN; cols];
        let mut bias = vec![0.0_f32; vocab];
        softmax_xent_grad(&mut got, vocab, cols, &targets, -100, &mut nll, Some(&mut bias), true, threads).unwrap();
        let (mut scratch, mut nll_only) = (logits.clone(), vec![f32::NAN; cols]);
        softmax_xent_grad(&mut scratch, vocab, cols, &targets, -100, &mut nll_only, None, false, threads).unwrap();
        assert_eq!(nll, nll_only);
        for r in 0..cols {
            assert!((nll[r] as f64 - want_nll[r]).abs() <= 1e-5 * (1.0 + want_nll[r].abs()), "nll {r}");
        }
        for i in 0..vocab * cols {
            assert!((got[i] as f64 - want_grad[i]).abs() <= 1e-6, "grad {i}: {} vs {}", got[i], want_grad[i]);
        }
        for v in 0..vocab {
            assert!((bias[v] as f64 - want_bias[v]).abs() <= 1e-5, "bias {v}");
        }
    }

    #[test]
    fn equals_the_plain_computation_on_odd_sizes() {
        for (vocab, cols) in [(1, 1), (7, 3), (33, 5), (100, 17), (257, 64), (1000, 33)] {
            for threads in [1, 2, 3] {
                case(vocab, cols, threads);
            }
        }
    }

    #[test]
    fn rows_with_minus_infinite_logits_in_whole_chunks_stay_finite() {
        // vocab 70: chunks of 32, 32, 6; row 0 is -inf in the whole first chunk, row 1 in every
        // chunk but the last, row 2 everywhere but word 69 (its target).
        let (vocab, cols) = (70, 3);
        let mut logits: Vec<f32> = (0..vocab * cols).map(|i| ((i * 37) % 11) as f32 * 0.3 - 1.0).collect();
        for v in 0..vocab {
            if v < 32 {
                logits[v * cols] = f32::NEG_INFINITY;
            }
            if v < 64 {
                logits[v * cols + 1] = f32::NEG_INFINITY;
            }
            if v != 69 {
                logits[v * cols + 2] = f32::NEG_INFINITY;
            }
        }
        let targets = [40, 65, 69];
        let (want_nll, want_grad, _) = reference(&logits, vocab, cols, &targets, -100);
        for threads in [1, 2, 3] {
            let mut got = logits.clone();
            let mut nll = vec![f32::NAN; cols];
            softmax_xent_grad(&mut got, vocab, cols, &targets, -100, &mut nll, None, true, threads).unwrap();
            for r in 0..cols {
                assert!((nll[r] as f64 - want_nll[r]).abs() < 1e-5, "row {r}: {} vs {}", nll[r], want_nll[r]);
            }
            for i in 0..vocab * cols {
                assert!((got[i] as f64 - want_grad[i]).abs() < 1e-6, "{i}: {} vs {}", got[i], want_grad[i]);
            }
        }
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let mut logits = vec![0.0; 6];
        let mut nll = vec![0.0; 2];
        let err = softmax_xent_grad(&mut logits, 3, 2, &[0, 3], -100, &mut nll, None, true, 1).unwrap_err();
        assert!(err.0.contains("row 1 has target 3"), "{err}");
        let err = softmax_xent_grad(&mut logits, 4, 2, &[0, 1], -100, &mut nll, None, true, 1).unwrap_err();
        assert!(err.0.starts_with("logits: expected 8"), "{err}");
    }

    #[test]
    fn a_non_finite_logit_gives_a_non_finite_loss() {
        let mut logits = vec![0.0, 1.0, f32::NAN, 2.0];
        let mut nll = vec![0.0; 2];
        softmax_xent_grad(&mut logits, 2, 2, &[0, 1], -100, &mut nll, None, true, 1).unwrap();
        assert!(nll[0].is_nan() && nll[1].is_finite());
    }
}
