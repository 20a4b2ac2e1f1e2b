//! The host's OS calls, one file per OS.

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
mod macos;

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub use macos::{dext_survey, os_version};
