//! A vectorisable float32 exponential.
//!
//! `std`'s `f32::exp` is a call into libm that the compiler cannot vectorise. This is the Cephes
//! `expf` algorithm (Moshier): `e^x = 2^n e^r` with `n = round(x / ln 2)`, `r = x - n ln 2`
//! (ln 2 split in two so that `r` is exact), `e^r` from a degree-6 polynomial; about 1 ulp on
//! the range it is used on. Written with plain lane-wise arithmetic and selects so that it
//! vectorises inside the callers' loops.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding and subtracting it rounds a float of magnitude < 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;
/// Below this `2^n` leaves the normal range: the result is flushed to zero (e^-87.3 ~ 1e-38).
const LOWEST: f32 = -87.3;
const HIGHEST: f32 = 88.7;

/// `e^x`, for the kernels' arguments `x <= 0` (above about 88.37 it overflows to +inf; below -87.3
/// it is 0); NaN propagates.
/// Branch-free (selects only) and without a float-to-int conversion, both of which keep the
/// compiler from vectorising. `FMA`: contract each multiply-add into one fused instruction (only
/// where the CPU has FMA: elsewhere `mul_add` is a slow library call); the two differ in the
/// last bit.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    let low = x < LOWEST;
    let clamped = select(low, LOWEST, select(x > HIGHEST, HIGHEST, x));
    // `shifted`'s low mantissa bits hold n = round(x / ln 2) as an integer.
    let shifted = mul_add::<FMA>(clamped, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add::<FMA>(n, -LN2_LO, mul_add::<FMA>(n, -LN2_HI, clamped));
    let mut p = 1.987_569_2e-4;
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = mul_add::<FMA>(p, r, c);
    }
    p = mul_add::<FMA>(p, r * r, r) + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits()); // n, two's complement
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    select(low, 0.0, p * scale)
}

#[inline(always)]
pub(crate) fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
pub(crate) fn select(condition: bool, yes: f32, no: f32) -> f32 {
    if condition {
        yes
    } else {
        no
    }
}

#[cfg(test)]
mod tests {
    use super::exp;

    /// Distance in units in the last place.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn within_two_ulps<const FMA: bool>() {
        let mut worst = 0;
        let mut x = -87.0_f32;
        while x < 88.0 {
            let exact = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp::<FMA>(x), exact));
            x += 0.001_37;
        }
        assert!(worst <= 2, "worst error {worst} ulps");
        for x in [0.0_f32, -0.0, 1e-8, -1e-8, 0.5, -0.5, 1.0] {
            assert!(ulps(exp::<FMA>(x), (x as f64).exp() as f32) <= 1, "{x}");
        }
    }

    #[test]
    fn within_two_ulps_of_the_exact_exponential() {
        within_two_ulps::<false>();
        within_two_ulps::<true>(); // fused multiply-adds in software here: slow but exact
    }

    #[test]
    fn limits() {
        for e in [exp::<false>, exp::<true>] {
            assert_eq!(e(-100.0), 0.0);
            assert_eq!(e(f32::NEG_INFINITY), 0.0);
            assert!(e(100.0) > 3e38);
            assert!(e(f32::NAN).is_nan());
        }
    }
}
