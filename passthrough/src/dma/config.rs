//! How the window manager coalesces and caches.

use super::guest_ram::GuestRamError;
use super::mapper::{MapperError, MapperLimits};
use super::units::Bytes;

/// The default coalescing window. In the "90% of maps are 4 KiB" workload model
/// (`dma::tests::workload`, clustered pages) it keeps 2.7x fewer mappings live than no
/// coalescing for 39% more pinned bytes (128 KiB: 2.4x for 15%; 512 KiB: 2.9x for 97%), and
/// qemu-vfio-apple measured ~4x with it on a real GPU. For scattered pages windows cost bytes
/// for little gain; the manager stops widening above 3/4 of the byte budget.
pub const DEFAULT_WINDOW_SIZE: u64 = 256 << 10;

/// Window manager settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Size of the aligned guest windows that small maps are widened to (a power of two, at
    /// least the mapper's alignment). Equal to the alignment turns coalescing off.
    pub window_size: u64,
    /// Keep windows mapped on the host after their last user unmaps, for reuse, until the
    /// budget needs the room. Off unmaps them at once.
    pub cache_released: bool,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self { window_size: DEFAULT_WINDOW_SIZE, cache_released: true }
    }
}

impl WindowConfig {
    /// Settings that map exactly the aligned pages asked for (no coalescing), for comparison.
    pub fn without_coalescing(limits: &MapperLimits) -> Self {
        Self { window_size: limits.alignment, ..Self::default() }
    }
}

/// An unusable window manager setup.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The mapper's limits are unusable.
    #[error(transparent)]
    Limits(#[from] MapperError),
    /// The window size does not fit the mapper.
    #[error(
        "DMA window size {} must be a power of two, at least the mapper's {} alignment, and at \
         most its {} budget; use e.g. 256K",
        Bytes(*window_size), Bytes(*alignment), Bytes(*budget)
    )]
    WindowSize {
        /// The size asked for.
        window_size: u64,
        /// The mapper's alignment.
        alignment: u64,
        /// The mapper's byte budget.
        budget: u64,
    },
    /// The guest RAM layout is unusable.
    #[error(transparent)]
    GuestRam(#[from] GuestRamError),
}

impl WindowConfig {
    /// Checks the settings against the mapper's limits.
    pub fn validate(&self, limits: &MapperLimits) -> Result<(), ConfigError> {
        limits.validate()?;
        let w = self.window_size;
        if !w.is_power_of_two() || w < limits.alignment || w > limits.max_mapped_bytes {
            return Err(ConfigError::WindowSize {
                window_size: w,
                alignment: limits.alignment,
                budget: limits.max_mapped_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fits_the_dart() {
        assert_eq!(WindowConfig::default().validate(&MapperLimits::APPLE_DART), Ok(()));
        let off = WindowConfig::without_coalescing(&MapperLimits::APPLE_DART);
        assert_eq!(off.window_size, 16 << 10);
        assert_eq!(off.validate(&MapperLimits::APPLE_DART), Ok(()));
    }

    #[test]
    fn bad_window_sizes_are_refused() {
        let limits = MapperLimits::APPLE_DART;
        for w in [0, 4 << 10, 48 << 10, 2 << 30] {
            let config = WindowConfig { window_size: w, cache_released: true };
            let err = config.validate(&limits).unwrap_err();
            assert!(matches!(err, ConfigError::WindowSize { .. }), "{w:#x}: {err}");
        }
    }
}
