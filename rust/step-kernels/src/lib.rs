//! Kernels of a training step that torch runs slowly on a CPU.
//!
//! - [`xent`]: the LM head's softmax cross-entropy and its logits gradient for one block of
//!   rows, in two passes over the block (torch's ops take seven), with one exponential per logit.
//! - [`attention`]: causal multi-head self-attention with dropout on its probabilities,
//!   forward and backward, one (batch, head) pair's tile of scores at a time in the L2 cache.
//! - [`selective_scan`]: Mamba's selective scan, forward and backward, the state in registers
//!   instead of `(batch, L, channels, states)` tensors.
//! - [`dropout`]: dropout with masks from a counter-based hash, ~10x faster than torch's CPU
//!   Bernoulli sampler, recomputed in the backward instead of stored.
//!
//! All run on a caller-chosen number of threads (the `thread-team` crate) and are compiled three times (AVX-512,
//! AVX2, baseline x86-64), the best chosen at run time (`RESNETBK_KERNEL_ISA=avx2|baseline` caps
//! it, to test and time another CPU's build): the loops are written so that the compiler
//! vectorises them; nothing here is hand-written SIMD.

pub mod attention;
pub mod dropout;
mod exp;
mod isa;
mod parallel;
pub mod selective_scan;
pub mod xent;

pub use dropout::dropout;
pub use xent::{softmax_xent_grad, XentError};
