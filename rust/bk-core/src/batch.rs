//! Batches of independent rows: grouped into lane-interleaved blocks (see [`crate::sweep`]) and
//! run in parallel on a caller-chosen number of threads (the `thread-team` crate: torch's OpenMP
//! team where the process has one, else a rayon pool).
//!
//! Arrays are row-major and contiguous: `a` is `rows x n`, the off-diagonals are
//! `rows x (n-1)`, `z` has one shift per row. The couplings `kap = upper * lower` are formed
//! while a block is gathered, and the backward applies the chain rule to `upper` and `lower`
//! while it scatters, so the caller never makes a pass over them. Results do not depend on the thread count or the block width:
//! every lane runs the same scalar operations in the same order.
//!
//! A read-out mask (`rows x n` booleans, or none) is applied in the same gather and scatter:
//! masked outputs are written as 0 and masked upstream gradients read as 0, so the masked
//! variant makes no extra pass. It cannot skip arithmetic: every position stays in the recursion
//! (it shapes all later outputs), and the lanes of a block run in lock-step.

use crate::sweep::{backward_block, forward_block, lanes_of, BackwardScratch, Block};
use crate::{Mode, Real};
use num_complex::Complex;

/// Below this many elements per parallel task, splitting costs more than it saves.
const MIN_ELEMENTS_PER_TASK: usize = 16 * 1024;

/// The lengths of the arrays handed to a batch kernel do not describe `rows x n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchShapeError(pub String);

impl std::fmt::Display for BatchShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BatchShapeError {}

fn check(name: &str, len: usize, expected: usize) -> Result<(), BatchShapeError> {
    if len == expected {
        Ok(())
    } else {
        Err(BatchShapeError(format!("{name}: expected {expected} elements, got {len}")))
    }
}

/// Checks that the inputs describe `z.len()` rows of length `n`; returns the row count.
fn check_inputs<T: Real>(a: &[T], off: &OffDiagonals<'_, T>, z: &[Complex<T>], n: usize) -> Result<usize, BatchShapeError> {
    if n == 0 {
        return Err(BatchShapeError("n: the sequence length must be at least 1".into()));
    }
    let rows = z.len();
    check("a", a.len(), rows * n)?;
    off.check(rows * (n - 1))?;
    Ok(rows)
}

/// Where a batch's rows live and which rows one block covers.
struct Rows<'a, T> {
    n: usize,
    a: &'a [T],
    off: OffDiagonals<'a, T>,
    z: &'a [Complex<T>],
    /// The read-out mask, `rows x n`; `None` reads every position.
    mask: Option<&'a [bool]>,
}

/// The off-diagonals of H: `lower = upper` (symmetric) or both given.
#[derive(Clone, Copy)]
pub enum OffDiagonals<'a, T> {
    Symmetric(&'a [T]),
    General { upper: &'a [T], lower: &'a [T] },
}

impl<T: Real> OffDiagonals<'_, T> {
    #[inline(always)]
    fn coupling(&self, i: usize) -> T {
        match self {
            Self::Symmetric(b) => b[i] * b[i],
            Self::General { upper, lower } => upper[i] * lower[i],
        }
    }

    /// `(dL/d upper_i, dL/d lower_i)` from `dL/d kap_i` (for symmetric H, all of it goes to upper).
    #[inline(always)]
    fn chain_rule(&self, i: usize, grad_kap: T) -> (T, T) {
        match self {
            Self::Symmetric(b) => ((b[i] + b[i]) * grad_kap, T::zero()),
            Self::General { upper, lower } => (lower[i] * grad_kap, upper[i] * grad_kap),
        }
    }

    fn check(&self, expected: usize) -> Result<(), BatchShapeError> {
        match self {
            Self::Symmetric(b) => check("upper", b.len(), expected),
            Self::General { upper, lower } => check("upper", upper.len(), expected).and(check("lower", lower.len(), expected)),
        }
    }
}

/// Lane-interleaved copies of one block's inputs (lanes past the last row repeat it).
#[derive(Default)]
struct Gathered<T> {
    a: Vec<T>,
    kap: Vec<T>,
}

/// Per-thread buffers, kept between calls: allocating them afresh for long rows costs more in
/// page faults than the kernels themselves. Every buffer is fully written before it is read.
pub struct Workspace<T> {
    gathered: Gathered<T>,
    x_re: Vec<T>,
    x_im: Vec<T>,
    y_a: Vec<T>,
    y_kap: Vec<T>,
    backward: BackwardScratch<T>,
}

impl<T: Real> Default for Workspace<T> {
    fn default() -> Self {
        Self {
            gathered: Gathered { a: Vec::new(), kap: Vec::new() },
            x_re: Vec::new(),
            x_im: Vec::new(),
            y_a: Vec::new(),
            y_kap: Vec::new(),
            backward: BackwardScratch::default(),
        }
    }
}

/// Row index of each lane of the block starting at `first` (lanes past the last row repeat it).
#[inline(always)]
fn lane_rows<const L: usize>(first: usize, count: usize) -> [usize; L] {
    std::array::from_fn(|l| first + l.min(count - 1))
}

impl<T: Real> Gathered<T> {
    /// Copies rows `first..first + count` into lane-interleaved form.
    #[inline(always)]
    fn load<const L: usize>(&mut self, rows: &Rows<'_, T>, first: usize, count: usize) -> Block<'_, T, L> {
        let (n, m) = (rows.n, rows.n - 1);
        let r = lane_rows::<L>(first, count);
        let a = lanes_of::<T, L>(&mut self.a, n);
        for (k, slot) in a.iter_mut().enumerate() {
            *slot = std::array::from_fn(|l| rows.a[r[l] * n + k]);
        }
        let kap = lanes_of::<T, L>(&mut self.kap, n + 1);
        kap[0] = [T::zero(); L];
        kap[n] = [T::zero(); L];
        for (k, slot) in kap[1..n].iter_mut().enumerate() {
            *slot = std::array::from_fn(|l| rows.off.coupling(r[l] * m + k));
        }
        Block {
            n,
            a: &self.a.as_chunks::<L>().0[..n],
            kap: &self.kap.as_chunks::<L>().0[..n + 1],
            z_re: std::array::from_fn(|l| rows.z[r[l]].re),
            z_im: std::array::from_fn(|l| rows.z[r[l]].im),
        }
    }
}

/// How a batch is cut up: `lanes` rows per block, `tasks` parallel tasks of whole blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    lanes: usize,
    tasks: usize,
}

impl Plan {
    /// As many tasks as threads, but none smaller than `MIN_ELEMENTS_PER_TASK`; then the
    /// widest blocks (up to `widest` lanes, to hide the division latency) that still give every
    /// task a block. Fewer, wider blocks lose to more threads only when there are idle threads.
    fn new(rows: usize, n: usize, threads: usize, widest: usize) -> Self {
        let tasks = threads.max(1).min((rows * n).div_ceil(MIN_ELEMENTS_PER_TASK)).max(1);
        let mut lanes = widest.min(rows.next_power_of_two());
        while lanes > 1 && rows.div_ceil(lanes) < tasks {
            lanes /= 2;
        }
        let tasks = tasks.min(rows.div_ceil(lanes));
        Self { lanes, tasks }
    }

    /// Runs `work(first_row, row_count)` for each task, in parallel on `threads` threads.
    /// Task `t` gets rows `t * rows_per_task..` (at most `rows_per_task` of them, none past
    /// `rows`): the ranges are disjoint and inside `0..rows`, which the writes through
    /// [`SharedOut`] rely on. It returns only when every task has finished.
    fn run(self, rows: usize, threads: usize, work: impl Fn(usize, usize) + Sync + Send) {
        let blocks_per_task = rows.div_ceil(self.lanes).div_ceil(self.tasks);
        let rows_per_task = blocks_per_task * self.lanes;
        let task = |t: usize| {
            let first = t * rows_per_task;
            if first < rows {
                work(first, rows_per_task.min(rows - first))
            }
        };
        thread_team::for_each_task(self.tasks, threads, task);
    }
}

/// Raw pointer to an output buffer that tasks write in disjoint row ranges.
///
/// It is made from the `as_mut_ptr()` of a `&mut [U]` that the batch function holds for the whole
/// of [`Plan::run`], so nothing outside the tasks can see the buffer while they write it.
#[derive(Clone, Copy)]
struct SharedOut<U>(*mut U);

// SAFETY: the only thing another thread can do with a `SharedOut` is call `slice`, whose
// contract gives it exclusive access to the elements it covers. Using a `&mut U` on another
// thread needs `U: Send` (it can move values in and out, and assigning drops the old value
// there), the same bound as `&mut [U]: Send`; `U: Sync` is not needed because no element is ever
// reachable from two threads at once.
unsafe impl<U: Send> Send for SharedOut<U> {}
// SAFETY: `SharedOut` is `Copy`, so a `&SharedOut<U>` on another thread is as good as a
// `SharedOut<U>` there: it needs exactly what `Send` needs (above), `U: Send`. Tasks share it by
// reference (the closure that `Plan::run` hands to the thread team must be `Sync`).
unsafe impl<U: Send> Sync for SharedOut<U> {}

impl<U> SharedOut<U> {
    /// # Safety
    /// `start..start + len` must lie inside the buffer the pointer came from (in particular the
    /// pointer must not be null, even for `len == 0`), that buffer's borrow must outlive `'a`,
    /// and while the slice lives no other reference to those elements may exist on any thread.
    /// The batch kernels meet this by giving every task its own rows (see [`Plan::run`]) and
    /// dropping each row's slice before making the next.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [U] {
        // SAFETY: the caller guarantees the range is in bounds of one live allocation (so `add`
        // stays inside it and the pointer is non-null and aligned, coming from a slice) and that
        // the returned slice is the only reference to those elements while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Defines `$avx2`, the same function as `$generic` compiled for AVX2 (the kernels are
/// `#[inline(always)]`, so they are vectorised 256 bits wide inside it), and `$best`, which
/// calls it when the CPU has AVX2. The arithmetic is identical (no FMA contraction), so results
/// are bit-identical on every CPU.
macro_rules! simd_variants {
    ($best:ident, $avx2:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
        /// # Safety
        /// The CPU must support AVX2.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2<T: Real, const L: usize>(w: &mut Workspace<T>, $($arg: $ty),*) {
            $generic::<T, L>(w, $($arg),*)
        }

        // The workspace is fetched out here: code inside the thread-local accessor's closure
        // would not be compiled with the AVX2 feature.
        fn $best<T: Real, const L: usize>($($arg: $ty),*) {
            T::with_workspace(|w| {
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: `$avx2`'s only precondition is that the CPU supports AVX2
                        // (its body is the safe `$generic`), and the run-time check above has
                        // just confirmed that it does.
                        return unsafe { $avx2::<T, L>(w, $($arg),*) };
                    }
                }
                $generic::<T, L>(w, $($arg),*)
            })
        }
    };
}

simd_variants!(forward_lanes_best, forward_lanes_avx2, forward_lanes,
    (rows: &Rows<'_, T>, mode: Mode, out: SharedOut<Complex<T>>, first: usize, count: usize));
simd_variants!(backward_lanes_best, backward_lanes_avx2, backward_lanes,
    (rows: &Rows<'_, T>, mode: Mode, grad_out: &[Complex<T>], out: GradOut<T>, first: usize, count: usize));

#[inline(always)]
fn forward_lanes<T: Real, const L: usize>(
    w: &mut Workspace<T>,
    rows: &Rows<'_, T>,
    mode: Mode,
    out: SharedOut<Complex<T>>,
    first: usize,
    count: usize,
) {
    let n = rows.n;
    let (re, im) = (lanes_of::<T, L>(&mut w.x_re, n), lanes_of::<T, L>(&mut w.x_im, n));
    let mut start = first;
    while start < first + count {
        let take = L.min(first + count - start);
        let block = w.gathered.load::<L>(rows, start, take);
        forward_block::<T, L>(&block, mode, re, im);
        for l in 0..take {
            let row = (start + l) * n;
            // SAFETY: `out` is the `&mut` output of `forward_batch_masked`, checked to hold
            // `rows * n` elements and borrowed until `Plan::run` returns; row `start + l` is below
            // `first + count <= rows`, so `row..row + n` is in bounds. `Plan::run` gives each task
            // a disjoint range of rows, so no other thread touches these elements, and `dst` is
            // dropped before the next row's slice is made.
            let dst = unsafe { out.slice(row, n) };
            for (k, d) in dst.iter_mut().enumerate() {
                *d = Complex::new(re[k][l], im[k][l]);
            }
            if let Some(mask) = rows.mask {
                // A select, not a branch: random masks would mispredict every other position.
                let zero = Complex::new(T::zero(), T::zero());
                for (d, &m) in dst.iter_mut().zip(&mask[row..row + n]) {
                    *d = if m { *d } else { zero };
                }
            }
        }
        start += take;
    }
}

/// Forward pass over `rows` independent rows of length `n`, on `threads` threads.
pub fn forward_batch<T: Real>(
    a: &[T],
    off: OffDiagonals<'_, T>,
    z: &[Complex<T>],
    mode: Mode,
    n: usize,
    out: &mut [Complex<T>],
    threads: usize,
) -> Result<(), BatchShapeError> {
    forward_batch_masked(a, off, z, None, mode, n, out, threads)
}

/// [`forward_batch`] with a read-out mask (`rows x n`): masked outputs are 0.
#[allow(clippy::too_many_arguments)]
pub fn forward_batch_masked<T: Real>(
    a: &[T],
    off: OffDiagonals<'_, T>,
    z: &[Complex<T>],
    mask: Option<&[bool]>,
    mode: Mode,
    n: usize,
    out: &mut [Complex<T>],
    threads: usize,
) -> Result<(), BatchShapeError> {
    let nrows = check_inputs(a, &off, z, n)?;
    check("out", out.len(), nrows * n)?;
    if let Some(m) = mask {
        check("mask", m.len(), nrows * n)?;
    }
    if nrows == 0 {
        return Ok(());
    }
    let rows = Rows { n, a, off, z, mask };
    let plan = Plan::new(nrows, n, threads, T::LANES);
    let out = SharedOut(out.as_mut_ptr());
    plan.run(nrows, threads, |first, count| {
        match plan.lanes {
            1 => forward_lanes_best::<T, 1>(&rows, mode, out, first, count),
            2 => forward_lanes_best::<T, 2>(&rows, mode, out, first, count),
            4 => forward_lanes_best::<T, 4>(&rows, mode, out, first, count),
            8 => forward_lanes_best::<T, 8>(&rows, mode, out, first, count),
            _ => forward_lanes_best::<T, 16>(&rows, mode, out, first, count),
        }
    });
    Ok(())
}

/// Writable views of the backward outputs, shared by tasks that own disjoint rows.
#[derive(Clone, Copy)]
struct GradOut<T> {
    a: SharedOut<T>,
    upper: SharedOut<T>,
    /// Null for symmetric H.
    lower: SharedOut<T>,
    z: SharedOut<Complex<T>>,
}

#[inline(always)]
fn backward_lanes<T: Real, const L: usize>(
    w: &mut Workspace<T>,
    rows: &Rows<'_, T>,
    mode: Mode,
    grad_out: &[Complex<T>],
    out: GradOut<T>,
    first: usize,
    count: usize,
) {
    let (n, m) = (rows.n, rows.n - 1);
    let (go_re, go_im) = (lanes_of::<T, L>(&mut w.x_re, n), lanes_of::<T, L>(&mut w.x_im, n));
    let (ga, gk) = (lanes_of::<T, L>(&mut w.y_a, n), lanes_of::<T, L>(&mut w.y_kap, n + 1));
    let mut start = first;
    while start < first + count {
        let take = L.min(first + count - start);
        let r = lane_rows::<L>(start, take);
        for k in 0..n {
            go_re[k] = std::array::from_fn(|l| grad_out[r[l] * n + k].re);
            go_im[k] = std::array::from_fn(|l| grad_out[r[l] * n + k].im);
        }
        if let Some(mask) = rows.mask {
            // A masked output is the constant 0: its upstream gradient is read as 0 (a select).
            for k in 0..n {
                for l in 0..L {
                    let keep = mask[r[l] * n + k];
                    go_re[k][l] = if keep { go_re[k][l] } else { T::zero() };
                    go_im[k][l] = if keep { go_im[k][l] } else { T::zero() };
                }
            }
        }
        let block = w.gathered.load::<L>(rows, start, take);
        let (gz_re, gz_im) = backward_block::<T, L>(&block, mode, go_re, go_im, ga, gk, &mut w.backward);
        for l in 0..take {
            let r = start + l;
            // SAFETY: `out.a` and `out.z` come from `backward_batch_masked`'s `grad_a` and
            // `grad_z`, distinct `&mut` slices checked to hold `rows * n` and `rows` elements and
            // borrowed until `Plan::run` returns; `r < first + count <= rows`, so both ranges are in
            // bounds. Row `r` belongs to this task alone (`Plan::run` gives tasks disjoint rows),
            // and these slices are dropped before the next row's are made.
            let (dst_a, dst_z) = unsafe { (out.a.slice(r * n, n), out.z.slice(r, 1)) };
            for (k, d) in dst_a.iter_mut().enumerate() {
                *d = ga[k][l];
            }
            // SAFETY: as above, for `grad_upper`, checked to hold `rows * m` elements (its pointer
            // is a slice's, so non-null even when `m == 0`).
            let dst_upper = unsafe { out.upper.slice(r * m, m) };
            if out.lower.0.is_null() {
                for (k, d) in dst_upper.iter_mut().enumerate() {
                    *d = rows.off.chain_rule(r * m + k, gk[k + 1][l]).0;
                }
            } else {
                // SAFETY: not null, so `off` is general and `out.lower` is `grad_lower`'s
                // pointer, checked to hold `rows * m` elements; as above for `grad_upper`.
                let dst_lower = unsafe { out.lower.slice(r * m, m) };
                for (k, (du, dl)) in dst_upper.iter_mut().zip(dst_lower.iter_mut()).enumerate() {
                    (*du, *dl) = rows.off.chain_rule(r * m + k, gk[k + 1][l]);
                }
            }
            dst_z[0] = Complex::new(gz_re[l], gz_im[l]);
        }
        start += take;
    }
}

/// Exact vector-Jacobian product over `rows` rows: fills `grad_a` (rows x n), `grad_upper`
/// and, for general H, `grad_lower` (rows x (n-1) each), and `grad_z` (one per row).
/// `grad_lower` must be given exactly when `off` is [`OffDiagonals::General`].
#[allow(clippy::too_many_arguments)]
pub fn backward_batch<T: Real>(
    a: &[T],
    off: OffDiagonals<'_, T>,
    z: &[Complex<T>],
    mode: Mode,
    n: usize,
    grad_out: &[Complex<T>],
    grad_a: &mut [T],
    grad_upper: &mut [T],
    grad_lower: Option<&mut [T]>,
    grad_z: &mut [Complex<T>],
    threads: usize,
) -> Result<(), BatchShapeError> {
    backward_batch_masked(a, off, z, None, mode, n, grad_out, grad_a, grad_upper, grad_lower, grad_z, threads)
}

/// [`backward_batch`] of the masked forward: upstream gradients at masked positions are ignored.
/// The gradients of every input stay exact (a masked position's `a` still shapes later outputs).
#[allow(clippy::too_many_arguments)]
pub fn backward_batch_masked<T: Real>(
    a: &[T],
    off: OffDiagonals<'_, T>,
    z: &[Complex<T>],
    mask: Option<&[bool]>,
    mode: Mode,
    n: usize,
    grad_out: &[Complex<T>],
    grad_a: &mut [T],
    grad_upper: &mut [T],
    grad_lower: Option<&mut [T]>,
    grad_z: &mut [Complex<T>],
    threads: usize,
) -> Result<(), BatchShapeError> {
    let nrows = check_inputs(a, &off, z, n)?;
    check("grad_out", grad_out.len(), nrows * n)?;
    if let Some(m) = mask {
        check("mask", m.len(), nrows * n)?;
    }
    check("grad_a", grad_a.len(), nrows * n)?;
    check("grad_upper", grad_upper.len(), nrows * (n - 1))?;
    check("grad_z", grad_z.len(), nrows)?;
    let lower_ptr = match (&off, grad_lower) {
        (OffDiagonals::Symmetric(_), None) => std::ptr::null_mut(),
        (OffDiagonals::General { .. }, Some(g)) => {
            check("grad_lower", g.len(), nrows * (n - 1))?;
            g.as_mut_ptr()
        }
        _ => return Err(BatchShapeError("grad_lower: give it exactly when lower is given".into())),
    };
    if nrows == 0 {
        return Ok(());
    }
    let rows = Rows { n, a, off, z, mask };
    let plan = Plan::new(nrows, n, threads, T::LANES);
    let out = GradOut {
        a: SharedOut(grad_a.as_mut_ptr()),
        upper: SharedOut(grad_upper.as_mut_ptr()),
        lower: SharedOut(lower_ptr),
        z: SharedOut(grad_z.as_mut_ptr()),
    };
    plan.run(nrows, threads, |first, count| match plan.lanes {
        1 => backward_lanes_best::<T, 1>(&rows, mode, grad_out, out, first, count),
        2 => backward_lanes_best::<T, 2>(&rows, mode, grad_out, out, first, count),
        4 => backward_lanes_best::<T, 4>(&rows, mode, grad_out, out, first, count),
        8 => backward_lanes_best::<T, 8>(&rows, mode, grad_out, out, first, count),
        _ => backward_lanes_best::<T, 16>(&rows, mode, grad_out, out, first, count),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Plan;

    #[test]
    fn plans_use_wide_blocks_and_only_threads_that_have_work() {
        // Small batches run as one task of the widest block.
        assert_eq!(Plan::new(32, 128, 16, 16), Plan { lanes: 16, tasks: 1 });
        // 65k elements make 4 tasks of at least 16k elements: 4 blocks of 8 rows.
        assert_eq!(Plan::new(32, 2048, 16, 16), Plan { lanes: 8, tasks: 4 });
        assert_eq!(Plan::new(32, 2048, 2, 16), Plan { lanes: 16, tasks: 2 });
        // Few long rows: one row per thread.
        assert_eq!(Plan::new(4, 65_536, 16, 16), Plan { lanes: 1, tasks: 4 });
        assert_eq!(Plan::new(1, 1_000_000, 8, 16), Plan { lanes: 1, tasks: 1 });
        assert_eq!(Plan::new(37, 50, 1, 8), Plan { lanes: 8, tasks: 1 });
    }
}
