//! VFIO (Linux): the host half of PCI passthrough.
//!
//! [`VfioBackend`] is VFIO's [`crate::host::HostBackend`]: it checks the functions in sysfs
//! and opens each in a [`VfioContainer`] (the `dma=identity` functions share one, whose
//! [`VfioIdentityMapper`] maps guest RAM at IOVA = guest-physical address; the `dma=window`
//! functions of each IOMMU group get their own, with a [`VfioHostPicksMapper`] imitating the macOS DART's limits).
//! Each [`VfioDevice`] gives the portable [`crate::assigned::AssignedFunction`] its
//! configuration space and BARs ([`VfioHostFunction`]) and MSI / MSI-X / INTx eventfds
//! ([`VfioInterrupts`], INTx wired late through an [`IntxHandle`]), and lets the VMM mmap its
//! BARs into the guest and reset it around the VM's life.
//!
//! Written against linux/vfio.h with `vfio-bindings` for the structures rather than
//! `vfio-ioctls`: Aperture needs the raw errno of each step (EBUSY on the group or device,
//! ENOMEM when pinning) to tell the user what to do, and only a dozen ioctls.

mod backend;
mod container;
mod device;
mod dma;
mod error;
mod hot_reset;
mod interrupts;
mod ioctls;
mod loss;
mod reset;

pub use backend::{SharedRouteFactory, VfioBackend, VfioFunction};
pub use container::{can_lock_unlimited, memlock_limit, VfioContainer, VfioGroup};
pub use device::{MappedBar, VfioDevice, VfioHostFunction};
pub use dma::{VfioHostPicksMapper, VfioIdentityMapper};
pub use error::{check_memlock, VfioError};
pub use hot_reset::{plan_hot_reset, AffectedFunction, HotResetPlan, ResetMethod};
pub use interrupts::{
    InterruptRoute, InterruptRouteFactory, IntxHandle, IntxRoute, VfioInterrupts,
};
pub use loss::VfioLossWatch;
pub use reset::OwnedFunctions;
