//! Hypervisor.framework's rules and the state the backend keeps, as portable code: compiled for
//! the macOS backend (`super::hvf`, thin FFI) and for unit tests on any host.

pub mod gic;
pub mod memory;
pub mod power;
pub mod status;
pub mod version;
