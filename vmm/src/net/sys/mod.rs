//! The per-OS half of the network backends: taps are Linux's.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{open_tap, TUNSETOFFLOAD};

/// Taps are a Linux device.
#[cfg(not(target_os = "linux"))]
pub fn open_tap(name: &str) -> Result<Box<dyn devices::virtio::net::NetBackend>, super::NetError> {
    Err(super::NetError::TapUnsupported(name.to_string()))
}
