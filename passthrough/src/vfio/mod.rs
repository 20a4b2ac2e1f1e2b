//! VFIO (Linux): the host half of PCI passthrough.
//!
//! One [`VfioContainer`] per VM holds the IOMMU groups of its devices and the DMA mappings of
//! guest RAM ([`VfioIdentityMapper`] at IOVA = guest-physical address, or
//! [`VfioHostPicksMapper`] imitating the macOS DART's limits for DMA windows). Each [`VfioDevice`] gives the portable
//! [`crate::assigned::AssignedFunction`] its configuration space and BARs
//! ([`VfioHostFunction`]) and MSI / MSI-X / INTx eventfds ([`VfioInterrupts`], INTx wired
//! late through an [`IntxHandle`]), and lets the VMM
//! mmap its BARs into the guest and reset it around the VM's life.
//!
//! Written against linux/vfio.h with `vfio-bindings` for the structures rather than
//! `vfio-ioctls`: Aperture needs the raw errno of each step (EBUSY on the group or device,
//! ENOMEM when pinning) to tell the user what to do, and only a dozen ioctls.

mod container;
mod device;
mod dma;
mod error;
mod interrupts;
mod ioctls;

pub use container::{can_lock_unlimited, memlock_limit, VfioContainer, VfioGroup};
pub use device::{MappedBar, ResetOutcome, VfioDevice, VfioHostFunction};
pub use dma::{RamMapping, VfioHostPicksMapper, VfioIdentityMapper};
pub use error::{check_memlock, VfioError};
pub use interrupts::{
    InterruptRoute, InterruptRouteFactory, IntxHandle, IntxRoute, VfioInterrupts, VfioMsix,
};
