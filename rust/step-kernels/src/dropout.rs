//! Dropout with masks from a counter-based hash.
//!
//! torch's CPU dropout draws every element from a Mersenne Twister one at a time (~2.5 ns per
//! element here, 10 ms for one layer's attention probabilities at the benchmark's shape). Here
//! element `i` of a call with seed `s` is kept when `hash(i, s) < keep * 2^32`, with `hash` two
//! rounds of Wellons' `lowbias32` integer mix (full avalanche: every input bit flips each
//! output bit with probability ~1/2): independent of the thread count and the CPU, the same
//! mask for the same seed, vectorised (32-bit multiplies and shifts).

use crate::parallel::{for_each_task, split, Shared};

/// Elements per task below which one thread does it all.
const MIN_PER_TASK: usize = 1 << 16;

#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The 32 random bits of element `index` under `seed`.
#[inline(always)]
pub fn bits(index: u64, seed: u64) -> u32 {
    low_bits(index as u32, seed as u32, key((index >> 32) as u32, seed))
}

/// The second key of the elements whose index has `high` as its upper 32 bits (every element
/// below 2^32, at the benchmark's sizes, shares one).
#[inline(always)]
pub(crate) fn key(high: u32, seed: u64) -> u32 {
    ((seed >> 32) as u32) ^ lowbias32(high)
}

/// `bits(index, seed)` from the index's lower 32 bits, the seed's and the index's `key`.
#[inline(always)]
pub(crate) fn low_bits(index_low: u32, seed_low: u32, key: u32) -> u32 {
    lowbias32(lowbias32(index_low ^ seed_low) ^ key)
}

/// Dropout: `out[i] = input[i] / keep` where element `i` is kept (probability `keep`,
/// 0 < keep <= 1), else 0. Elements are numbered from `offset`. The backward is the same call
/// on the incoming gradient with the same seed: the mask is recomputed, never stored.
pub fn dropout(input: &[f32], out: &mut [f32], keep: f32, seed: u64, offset: u64, threads: usize) {
    assert!(keep > 0.0 && keep <= 1.0, "keep: expected a probability in (0, 1], got {keep}");
    assert_eq!(input.len(), out.len(), "input and out: expected the same length");
    let threshold = ((keep as f64) * 4_294_967_296.0).round() as u64; // kept iff bits < threshold
    let scale = 1.0 / keep;
    let len = out.len();
    let tasks = threads.max(1).min(len.div_ceil(MIN_PER_TASK)).max(1);
    let ptr = Shared(out.as_mut_ptr());
    for_each_task(tasks, threads, |task| {
        let range = split(len, tasks, task, 64);
        // SAFETY: the tasks' ranges are disjoint and inside `out`.
        let part = unsafe { ptr.slice(range.start, range.len()) };
        best::apply(&input[range.clone()], part, offset + range.start as u64, seed, threshold, scale);
    });
}

#[inline(always)]
fn apply(input: &[f32], out: &mut [f32], first: u64, seed: u64, threshold: u64, scale: f32) {
    for (i, (y, &x)) in out.iter_mut().zip(input).enumerate() {
        *y = if (bits(first + i as u64, seed) as u64) < threshold { x * scale } else { 0.0 };
    }
}

mod best {
    use super::apply as apply_generic;

    /// `apply` compiled for AVX-512 and AVX2 beside the baseline (integer arithmetic and one
    /// multiply: the same result on every CPU), the best chosen at run time.
    pub(super) fn apply(input: &[f32], out: &mut [f32], first: u64, seed: u64, threshold: u64, scale: f32) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512dq")]
            unsafe fn avx512(input: &[f32], out: &mut [f32], first: u64, seed: u64, threshold: u64, scale: f32) {
                apply_generic(input, out, first, seed, threshold, scale)
            }
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(input: &[f32], out: &mut [f32], first: u64, seed: u64, threshold: u64, scale: f32) {
                apply_generic(input, out, first, seed, threshold, scale)
            }
            match crate::isa::chosen() {
                // SAFETY: the body is safe code; its only precondition, the CPU features, is
                // what `chosen` checked at run time.
                crate::isa::Isa::Avx512 => return unsafe { avx512(input, out, first, seed, threshold, scale) },
                // SAFETY: as above.
                crate::isa::Isa::Avx2 => return unsafe { avx2(input, out, first, seed, threshold, scale) },
                crate::isa::Isa::Baseline => {}
            }
        }
        apply_generic(input, out, first, seed, threshold, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(len: usize, keep: f32, seed: u64, offset: u64, threads: usize) -> Vec<f32> {
        let mut out = vec![0.0_f32; len];
        dropout(&vec![1.0; len], &mut out, keep, seed, offset, threads);
        out
    }

    #[test]
    fn keeps_the_requested_share_and_scales_by_its_inverse() {
        let out = mask(1 << 20, 0.9, 7, 0, 2);
        let kept = out.iter().filter(|&&x| x != 0.0).count() as f64 / out.len() as f64;
        assert!((kept - 0.9).abs() < 0.002, "{kept}"); // 5 standard deviations: 0.0015
        assert!(out.iter().all(|&x| x == 0.0 || x == 1.0 / 0.9));
    }

    #[test]
    fn neighbours_are_uncorrelated() {
        let out = mask(1 << 20, 0.5, 11, 0, 1);
        let both = out.windows(2).filter(|w| w[0] != 0.0 && w[1] != 0.0).count() as f64 / (out.len() - 1) as f64;
        assert!((both - 0.25).abs() < 0.003, "{both}");
    }

    #[test]
    fn same_seed_same_mask_whatever_the_threads_other_seed_other_mask() {
        let (a, b, c) = (mask(300_001, 0.7, 3, 0, 1), mask(300_001, 0.7, 3, 0, 3), mask(300_001, 0.7, 4, 0, 1));
        assert_eq!(a, b);
        let same = a.iter().zip(&c).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
        assert!((same - (0.7 * 0.7 + 0.3 * 0.3)).abs() < 0.01, "{same}");
        assert_eq!(&a[299_001..], &mask(1000, 0.7, 3, 299_001, 1)[..]);
    }

    #[test]
    fn scales_the_input_and_keep_one_keeps_everything() {
        let input: Vec<f32> = (0..1000).map(|i| i as f32 - 500.0).collect();
        let mut out = vec![0.0_f32; 1000];
        dropout(&input, &mut out, 1.0, 1, 0, 1);
        assert_eq!(out, input);
        dropout(&input, &mut out, 0.5, 1, 0, 1);
        let m = mask(1000, 0.5, 1, 0, 1);
        assert!(out.iter().zip(&input).zip(&m).all(|((&y, &x), &k)| y == x * k));
    }
}
