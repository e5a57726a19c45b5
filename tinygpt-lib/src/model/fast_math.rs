//! `exp` and `erf` for f32 from multiplications and additions only, so that loops over them
//! compile to vector instructions (the C library's `expf`/`erff` are one call per number).
//!
//! - `exp`: Cephes' `expf`: `eˣ = 2ⁿ · e^r` with `n = round(x / ln 2)`, `r = x − n·ln 2` (ln 2 in
//!   two parts, so `r` is exact), `e^r` by a degree-7 polynomial, `2ⁿ` built from its exponent
//!   bits. Within 2 ulp; `−∞` gives exactly 0 (the masked entries of a softmax).
//! - `erf`: the rational approximation Eigen and XLA use for f32, `x·P(x²)/Q(x²)` on
//!   `[−4, 4]` (outside, erf is ±1 in f32). Within 5e-7 of the true value.
//!
//! The f64 kernels (the gradient checks) keep the C library's functions.

/// `eˣ` for f32 (see the module notes).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAX: f32 = 88.376_26;
    let x = x.clamp(-MAX, MAX); // NaN stays NaN
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r2 + r + 1.0;
    // 2ⁿ from its bits: the biased exponent n + 127 is a whole number in 0..=255 here, and adding
    // 1.5·2²³ puts it in the low bits of the sum's mantissa. (No `as i32`: Rust's float-to-int
    // conversion saturates, which compiled to scalar compares and kept the loops from
    // vectorizing.) n = −127 (x = −MAX) gives the bits of 0.0.
    let biased = (n + (127.0 + 12_582_912.0))
        .to_bits()
        .wrapping_sub(0x4B40_0000);
    let two_n = f32::from_bits(biased << 23);
    e_r * two_n
}

/// `erf(x)` for f32 (see the module notes).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_6e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_and_masks_to_zero() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, exact) = (super::exp(x) as f64, (x as f64).exp());
            let ulp = exact * f32::EPSILON as f64;
            assert!(
                (ours - exact).abs() <= 2.0 * ulp,
                "exp({x}) = {ours}, not {exact}"
            );
            x += 0.001_7;
        }
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_5e_7() {
        let mut x = -6.0f32;
        while x < 6.0 {
            let (ours, exact) = (super::erf(x) as f64, libm::erf(x as f64));
            assert!(
                (ours - exact).abs() < 5e-7,
                "erf({x}) = {ours}, not {exact}"
            );
            x += 0.000_9;
        }
        assert_eq!(super::erf(0.0), 0.0);
    }
}
