//! The probes behind `aperture check`: thin OS and hypervisor calls whose results the portable
//! checks ([`super::linux`], [`super::macos`]) judge.

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
pub mod linux;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub mod macos;
