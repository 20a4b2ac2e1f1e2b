//! aarch64 architecture support for Aperture.
//!
//! Everything here is portable (no OS or hypervisor calls) so it is unit-tested on any host.

pub mod image;
pub mod layout;
pub mod loader;
pub mod regs;
