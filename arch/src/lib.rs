//! aarch64 architecture support for Aperture.
//!
//! Everything here is portable (no OS or hypervisor calls) so it is unit-tested on any host.

pub mod esr;
pub mod idregs;
pub mod image;
pub mod layout;
pub mod loader;
pub mod mmio;
pub mod psci;
pub mod regs;
pub mod sysreg;
pub mod timer;
pub mod vcpu_regs;
