//! Batches of independent rows, run in parallel with rayon on a pool of a caller-chosen size.
//!
//! Arrays are row-major and contiguous: `a` is `rows x n`, `kap` is `rows x (n-1)`,
//! `z` has one shift per row.

use crate::sweep::{backward_row, forward_row, Scratch};
use crate::{Mode, Real};
use num_complex::Complex;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Below this many elements per thread a parallel split costs more than it saves.
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

/// One rayon pool per requested thread count, built on first use and kept.
fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    pools
        .entry(threads)
        .or_insert_with(|| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("bk-core-{i}"))
                    .build()
                    .expect("building the bk-core thread pool"),
            )
        })
        .clone()
}

/// Rows per parallel task so that each task has enough work to pay for itself.
fn rows_per_task(rows: usize, n: usize, threads: usize) -> usize {
    let by_size = MIN_ELEMENTS_PER_TASK.div_ceil(n.max(1));
    let by_threads = rows.div_ceil(threads.max(1));
    by_size.max(1).min(by_threads.max(1))
}

/// Forward pass over `rows` independent rows of length `n`, on `threads` threads.
pub fn forward_batch<T: Real>(
    a: &[T],
    kap: &[T],
    z: &[Complex<T>],
    mode: Mode,
    n: usize,
    out: &mut [Complex<T>],
    threads: usize,
) -> Result<(), BatchShapeError> {
    if n == 0 {
        return Err(BatchShapeError("n: the sequence length must be at least 1".into()));
    }
    let rows = z.len();
    check("a", a.len(), rows * n)?;
    check("kap", kap.len(), rows * (n - 1))?;
    check("out", out.len(), rows * n)?;
    let run_row = |r: usize, out_row: &mut [Complex<T>]| {
        forward_row(&a[r * n..(r + 1) * n], &kap[r * (n - 1)..(r + 1) * (n - 1)], z[r], mode, out_row)
    };
    if threads <= 1 || rows <= 1 {
        out.chunks_mut(n).enumerate().for_each(|(r, o)| run_row(r, o));
    } else {
        let chunk_rows = rows_per_task(rows, n, threads);
        pool(threads).install(|| {
            out.par_chunks_mut(n * chunk_rows).enumerate().for_each(|(c, block)| {
                for (i, o) in block.chunks_mut(n).enumerate() {
                    run_row(c * chunk_rows + i, o);
                }
            })
        });
    }
    Ok(())
}

/// Exact vector-Jacobian product over `rows` rows: fills `grad_a` (rows x n),
/// `grad_kap` (rows x (n-1)) and `grad_z` (one per row).
#[allow(clippy::too_many_arguments)]
pub fn backward_batch<T: Real>(
    a: &[T],
    kap: &[T],
    z: &[Complex<T>],
    mode: Mode,
    n: usize,
    grad_out: &[Complex<T>],
    grad_a: &mut [T],
    grad_kap: &mut [T],
    grad_z: &mut [Complex<T>],
    threads: usize,
) -> Result<(), BatchShapeError> {
    if n == 0 {
        return Err(BatchShapeError("n: the sequence length must be at least 1".into()));
    }
    let rows = z.len();
    let m = n - 1;
    check("a", a.len(), rows * n)?;
    check("kap", kap.len(), rows * m)?;
    check("grad_out", grad_out.len(), rows * n)?;
    check("grad_a", grad_a.len(), rows * n)?;
    check("grad_kap", grad_kap.len(), rows * m)?;
    check("grad_z", grad_z.len(), rows)?;
    let run_row = |r: usize, ga: &mut [T], gk: &mut [T], scratch: &mut Scratch<T>| -> Complex<T> {
        backward_row(
            &a[r * n..(r + 1) * n],
            &kap[r * m..(r + 1) * m],
            z[r],
            mode,
            &grad_out[r * n..(r + 1) * n],
            ga,
            gk,
            scratch,
        )
    };
    let chunk_rows = if threads <= 1 { rows.max(1) } else { rows_per_task(rows, n, threads) };
    // chunks_mut(0) panics, so kap blocks of an n = 1 batch get a dummy width of 1 element.
    let kap_block = (m * chunk_rows).max(1);
    let work = |(c, ((ga_block, gk_block), gz_block)): (usize, ((&mut [T], &mut [T]), &mut [Complex<T>]))| {
        let mut scratch = Scratch::new();
        for i in 0..gz_block.len() {
            let ga = &mut ga_block[i * n..(i + 1) * n];
            let gk = if m == 0 { &mut [][..] } else { &mut gk_block[i * m..(i + 1) * m] };
            gz_block[i] = run_row(c * chunk_rows + i, ga, gk, &mut scratch);
        }
    };
    if rows == 0 {
        return Ok(());
    }
    // With m == 0 grad_kap is empty; give zip something with one block per row block.
    let mut empty_kap: Vec<T> = Vec::new();
    let gk_all: &mut [T] = if m == 0 {
        empty_kap.resize(rows.div_ceil(chunk_rows), T::zero());
        &mut empty_kap[..]
    } else {
        grad_kap
    };
    if threads <= 1 || rows <= 1 {
        grad_a
            .chunks_mut(n * chunk_rows)
            .zip(gk_all.chunks_mut(kap_block))
            .zip(grad_z.chunks_mut(chunk_rows))
            .enumerate()
            .for_each(work);
    } else {
        pool(threads).install(|| {
            grad_a
                .par_chunks_mut(n * chunk_rows)
                .zip(gk_all.par_chunks_mut(kap_block))
                .zip(grad_z.par_chunks_mut(chunk_rows))
                .enumerate()
                .for_each(work)
        });
    }
    Ok(())
}
