//! Aperture's emulated devices: portable MMIO models with no OS calls.
//!
//! The VMM maps each device at a guest physical address, forwards trapped accesses through
//! [`MmioDevice`] and gives each device its interrupt line ([`IrqLine`]), output sink and
//! clock.
//!
//! - [`Pl011`]: ARM PL011 UART, the guest console.
//! - [`Pl031`]: ARM PL031 real-time clock.
//! - [`Pl061`]: ARM PL061 GPIO controller, the guest's power key.
//! - [`TestExit`]: Aperture's test-exit device, which lets a guest end the VM with an exit
//!   status (see [`test_exit`] for the guest-side usage).

pub mod bus;
pub mod pci;
pub mod pl011;
pub mod pl031;
pub mod pl061;
mod primecell;
pub mod test_exit;
#[cfg(test)]
mod testing;
pub mod thread;
pub mod trace;
pub mod virtio;

pub use bus::{IrqLine, MmioDevice, MmioTarget};
pub use pl011::Pl011;
pub use pl031::Pl031;
pub use pl061::Pl061;
pub use test_exit::{ExitRequest, TestExit};
