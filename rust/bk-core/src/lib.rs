//! BK-Core: the diagonal of the resolvent `(H - zI)^-1` of a real tridiagonal operator, in O(N).
//!
//! `H` has diagonal `a` (N values) and off-diagonals `b` (above) and `c` (below), N-1 values each.
//! The resolvent diagonal depends on the off-diagonals only through the couplings
//! `kap_k = b_k * c_k`: the kernels in [`sweep`] work on `kap`, and [`batch`] forms it from
//! `b`, `c` and applies the chain rule back to them.
//!
//! Two modes (DESIGN.md section 1):
//! * [`Mode::Bidirectional`]: `G_kk = [(H - zI)^-1]_kk`, which depends on the whole window.
//! * [`Mode::Causal`]: `g_k = [(H_{0..k} - zI)^-1]_kk`, the resolvent of the leading block,
//!   which depends on positions `0..=k` only.
//!
//! Everything is carried as ratios (the continued-fraction / recursive Green's function form),
//! never as determinants, so nothing overflows at any N (DESIGN.md section 2).
//! The backward pass is the exact vector-Jacobian product, derived by reverse-mode
//! differentiation of the same sweeps (DESIGN.md section 3); see [`sweep`] for the derivation.

pub mod batch;
pub mod sweep;

pub use batch::{backward_batch, backward_batch_masked, forward_batch, forward_batch_masked, BatchShapeError, OffDiagonals};
pub use num_complex::Complex;

/// Which resolvent diagonal to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `g_k` depends on positions `0..=k` only: usable as a language-model mixer.
    Causal,
    /// `G_kk` of the full window: reads future positions.
    Bidirectional,
}

/// The real scalar types the kernels run in (f32 -> complex64, f64 -> complex128).
pub trait Real: num_traits::Float + Send + Sync + std::fmt::Debug + 'static {
    /// Rows run in lock-step per block: two 256-bit registers' worth, so two independent
    /// dependency chains overlap (see [`sweep`]).
    const LANES: usize;

    /// Runs `f` with this thread's reusable buffers for this scalar type.
    #[doc(hidden)]
    fn with_workspace<R>(f: impl FnOnce(&mut batch::Workspace<Self>) -> R) -> R;
}

macro_rules! impl_real {
    ($t:ty, $lanes:expr) => {
        impl Real for $t {
            const LANES: usize = $lanes;

            fn with_workspace<R>(f: impl FnOnce(&mut batch::Workspace<Self>) -> R) -> R {
                thread_local! {
                    static WORKSPACE: std::cell::RefCell<batch::Workspace<$t>> = Default::default();
                }
                WORKSPACE.with(|w| f(&mut w.borrow_mut()))
            }
        }
    };
}
impl_real!(f32, 16);
impl_real!(f64, 8);
