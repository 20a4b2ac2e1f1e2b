//! The OS half of the DriverKit client: IOKit calls on macOS (`macos.rs`); elsewhere
//! nothing, and the portable client runs against a fake dext in tests.

#[cfg(target_os = "macos")]
mod macos;

#[cfg(target_os = "macos")]
pub use macos::IoKitConnection;
