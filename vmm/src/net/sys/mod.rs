//! The per-OS half of the network backends: taps are Linux's.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{open_tap, open_vhost, TUNSETOFFLOAD};

/// Taps are a Linux device.
#[cfg(not(target_os = "linux"))]
pub fn open_tap(name: &str) -> Result<Box<dyn devices::virtio::net::NetBackend>, super::NetError> {
    Err(super::NetError::TapUnsupported(name.to_string()))
}

/// No vhost-net without taps.
#[cfg(not(target_os = "linux"))]
pub fn open_vhost(
    _name: &str,
    _wanted: Option<bool>,
) -> Result<Option<Box<dyn devices::virtio::net::VhostNetKernel>>, super::NetError> {
    Ok(None)
}
