//! Shared pieces of Aperture's fuzz targets (`fuzz_targets/*.rs`): turning fuzzer bytes into
//! guest-like values and a scratch disk image. The fake physical PCI function for passthrough
//! is `passthrough::testing::function` (feature `testing`), which the unit tests use too.
//!
//! Nothing here catches panics: a panic anywhere (device code or an invariant checked by a
//! target) aborts the run and libFuzzer saves the input.

pub mod image;

use libfuzzer_sys::arbitrary::{Result, Unstructured};

/// Access widths a CPU can make, and some it cannot (the devices must refuse those).
pub const ACCESS_SIZES: [usize; 8] = [1, 2, 4, 8, 4, 4, 3, 0];

/// Most operations one input runs, so that no input makes a slow unit.
pub const MAX_OPS: usize = 512;

/// An access width, mostly 1, 2, 4 or 8.
pub fn access_len(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(*u.choose(&ACCESS_SIZES)?)
}

/// `len` bytes from the input (zeros once it runs out).
pub fn bytes(u: &mut Unstructured<'_>, len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    for b in &mut out {
        *b = u.arbitrary()?;
    }
    Ok(out)
}

/// A value that is usually one of `interesting` and otherwise anything.
pub fn biased_u64(u: &mut Unstructured<'_>, interesting: &[u64]) -> Result<u64> {
    if !interesting.is_empty() && u.ratio(3u8, 4u8)? {
        Ok(*u.choose(interesting)?)
    } else {
        u.arbitrary()
    }
}

/// An offset near `base` (within `span`), or anything.
pub fn near(u: &mut Unstructured<'_>, base: u64, span: u64) -> Result<u64> {
    if u.ratio(7u8, 8u8)? {
        Ok(base.wrapping_add(u.int_in_range(0..=span.saturating_sub(1))?))
    } else {
        u.arbitrary()
    }
}

/// Whether `APERTURE_FUZZ_DEBUG` is set: targets then describe what they do on stderr, to
/// turn a saved input into a regression test.
pub fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("APERTURE_FUZZ_DEBUG").is_some())
}

/// Prints to stderr when [`debug`] is on.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::debug() {
            eprintln!($($arg)*);
        }
    };
}

/// Little-endian value of up to 8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}
