//! Which of a kernel's builds runs: the widest the CPU has, or a narrower one on request.
//!
//! `RESNETBK_KERNEL_ISA=avx2` (or `baseline`) caps the choice, read once per process: so that one
//! machine can run, test and time the builds another CPU would get (an AVX2-only Zen 3 runs the
//! `avx2` build). Unset, or any other value, takes the widest.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    Baseline,
    Avx2,
    Avx512,
}

/// The build to run: what the CPU supports, capped by `RESNETBK_KERNEL_ISA`.
pub(crate) fn chosen() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = match std::env::var("RESNETBK_KERNEL_ISA").as_deref() {
            Ok("baseline") => Isa::Baseline,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        detected().min(cap)
    })
}

fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        let avx512 =
            std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq");
        if avx2 && avx512 {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}
