//! Running a kernel's tasks on several threads (the BK-Core's and the step kernels').
//!
//! torch runs its own CPU ops on an OpenMP team whose idle threads spin for a while after every
//! op. A second pool (rayon's) competes with those spinning threads for the same cores: measured
//! here, a two-thread rayon kernel called between torch ops ran 1.8x slower than with OpenMP's
//! threads asleep. So on Linux the tasks run on torch's own team when the process has loaded an
//! OpenMP runtime that exports libgomp's entry points (GNU libgomp, LLVM's libomp and Intel's
//! libiomp5 all do), found at run time without linking to it; elsewhere, or with none loaded, on
//! a rayon pool (`RESNETBK_KERNEL_THREADS=rayon` chooses rayon anyway). A task that panics
//! aborts the process on the OpenMP path (a panic must not unwind into C); on rayon it reaches
//! the caller. The kernels' tasks do not panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

/// Runs `work(task)` for every task in `0..tasks`: on the calling thread when there is one task
/// or one thread, else on OpenMP's team (see the module's documentation) or a rayon pool of
/// `threads` threads.
pub fn for_each_task(tasks: usize, threads: usize, work: impl Fn(usize) + Sync + Send) {
    if tasks <= 1 || threads <= 1 {
        (0..tasks).for_each(work);
    } else if let Some(omp) = openmp::runtime() {
        omp.run(tasks, threads.min(tasks), &work);
    } else {
        pool(threads).install(|| (0..tasks).into_par_iter().for_each(work));
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
                    .thread_name(|i| format!("resnetbk-{i}"))
                    .build()
                    .expect("building a rayon thread pool"),
            )
        })
        .clone()
}

mod openmp {
    use std::ffi::{c_int, c_uint, c_void};
    use std::sync::OnceLock;

    type Body = unsafe extern "C" fn(*mut c_void);

    /// The libgomp ABI's entry points (what `#pragma omp parallel` compiles to).
    pub(crate) struct Runtime {
        parallel: unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint),
        thread_num: unsafe extern "C" fn() -> c_int,
        num_threads: unsafe extern "C" fn() -> c_int,
    }

    /// The OpenMP runtime this process has already loaded, if any (never loads one).
    pub(crate) fn runtime() -> Option<&'static Runtime> {
        static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
        RUNTIME.get_or_init(find).as_ref()
    }

    /// (glibc's `dlopen` flags and libgomp's ABI are what this relies on: Linux only.)
    #[cfg(not(target_os = "linux"))]
    fn find() -> Option<Runtime> {
        None
    }

    /// `RESNETBK_KERNEL_THREADS=rayon` declines the team (to compare the two).
    #[cfg(target_os = "linux")]
    fn find() -> Option<Runtime> {
        use std::ffi::c_char;
        extern "C" {
            fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
            fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        }
        const RTLD_LAZY: c_int = 0x1; // glibc's values
        const RTLD_NOLOAD: c_int = 0x4;
        if std::env::var_os("RESNETBK_KERNEL_THREADS").is_some_and(|v| v == "rayon") {
            return None;
        }
        for name in [c"libgomp.so.1", c"libomp.so", c"libiomp5.so"] {
            // SAFETY: dlopen with RTLD_NOLOAD only returns a handle to a library that is already
            // loaded (or null); dlsym reads that library's symbol table. The three symbols have
            // the libgomp ABI's signatures in every runtime that exports them.
            unsafe {
                let handle = dlopen(name.as_ptr(), RTLD_LAZY | RTLD_NOLOAD);
                if handle.is_null() {
                    continue;
                }
                let parallel = dlsym(handle, c"GOMP_parallel".as_ptr());
                let thread_num = dlsym(handle, c"omp_get_thread_num".as_ptr());
                let num_threads = dlsym(handle, c"omp_get_num_threads".as_ptr());
                if parallel.is_null() || thread_num.is_null() || num_threads.is_null() {
                    continue;
                }
                return Some(Runtime {
                    parallel: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint)>(parallel),
                    thread_num: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(thread_num),
                    num_threads: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(num_threads),
                });
            }
        }
        None
    }

    struct Job<'a> {
        runtime: &'a Runtime,
        tasks: usize,
        work: &'a (dyn Fn(usize) + Sync),
    }

    /// Each team member runs the tasks `thread, thread + team, ...` (the team may be smaller than
    /// asked for, e.g. when already inside a parallel region).
    unsafe extern "C" fn body(data: *mut c_void) {
        // SAFETY: `data` is the `Job` that `run` passes, alive until GOMP_parallel returns.
        let job = unsafe { &*(data as *const Job<'_>) };
        // SAFETY: plain queries of the runtime, valid inside its parallel region.
        let (thread, team) = unsafe { ((job.runtime.thread_num)() as usize, ((job.runtime.num_threads)() as usize).max(1)) };
        // A panic must not unwind into C: abort instead (the kernels do not panic).
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (thread..job.tasks).step_by(team).for_each(job.work);
        }));
        if ok.is_err() {
            std::process::abort();
        }
    }

    impl Runtime {
        pub(crate) fn run(&self, tasks: usize, threads: usize, work: &(dyn Fn(usize) + Sync)) {
            let job = Job { runtime: self, tasks, work };
            // SAFETY: `body` only reads `job`, which outlives the call; GOMP_parallel returns
            // once every team member has finished.
            unsafe { (self.parallel)(body, &job as *const Job<'_> as *mut c_void, threads as c_uint, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::for_each_task;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_task_runs_once_whatever_the_threads() {
        for (tasks, threads) in [(0, 2), (1, 4), (5, 1), (7, 3), (64, 2)] {
            let runs: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each_task(tasks, threads, |t| {
                runs[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 1), "{tasks} tasks, {threads} threads");
        }
    }
}
