//! PCI Express: configuration space model, host bridge, root ports, ECAM and BAR routing.
//!
//! - [`config`]: a 4 KiB configuration space with per-byte read-only / read-write /
//!   write-1-to-clear masks, BARs, expansion ROM and capability lists.
//! - [`msix`]: MSI-X capability, table and pending-bit array.
//! - [`root_port`], [`host_bridge`]: the bridge functions Aperture emulates.
//! - [`root`]: [`PciRoot`], the topology (slots, root ports, bus numbers) and ECAM decode;
//!   [`PciEcam`] and [`PciMmioWindow`] are its views for the MMIO bus. Each function sits
//!   behind its own lock; [`routes`] holds the decoded BARs the windows route by.
//! - [`lock_order`]: the lock levels every path takes locks in, checked in debug builds.
//! - [`virtio_pci`]: the virtio 1.x modern PCI transport for the devices in `crate::virtio`.
//!
//! Interfaces shared by every PCI function Aperture emulates or passes through are below.

pub mod config;
mod function;
pub mod host_bridge;
pub mod lock_order;
pub mod msix;
pub mod root;
pub mod root_port;
pub mod routes;
#[cfg(test)]
mod testing;
mod unplugged;
pub mod virtio_pci;

pub use config::{BarKind, BarRegion, ConfigSpace, PciIds};
pub use host_bridge::HostBridge;
pub use msix::{MsixCapability, MsixState};
pub use root::{
    format_bdf, BarChange, BarChangeHook, FunctionId, FunctionInfo, PciEcam, PciMmioWindow,
    PciRoot, PciRootError, TraceEvent, TraceHook, TraceKind, ECAM_SIZE,
};
pub use root_port::RootPort;
pub use virtio_pci::{VirtioPci, VirtioPciError};

/// An MSI/MSI-X message as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Doorbell address (the GIC ITS translater, or the HVF MSI frame).
    pub address: u64,
    /// Payload (event id).
    pub data: u32,
}

/// Delivers MSIs into the guest's interrupt controller. `requester_id` is the function's
/// bus/device/function (`bus << 8 | devfn`), which the ITS uses as the device id through
/// the host bridge's `msi-map`.
///
/// Called from vCPU threads (while the sending function is locked) and from device worker
/// threads; an implementation must not touch the PCI topology or other functions.
pub trait MsiSink: Send + Sync {
    /// Sends one message.
    fn signal_msi(&self, message: MsiMessage, requester_id: u16);
    /// A vector of its own that the hypervisor delivers without the VMM (KVM: an irqfd with
    /// an MSI route), or `None` where the host has none (Hypervisor.framework): the function
    /// then sends every message through [`MsiSink::signal_msi`]. Emulated functions ask for
    /// one per MSI-X vector when they are built.
    fn vector(&self) -> Option<Box<dyn MsiVector>> {
        None
    }
}

/// One MSI-X vector raised through the hypervisor (see [`MsiSink::vector`]): a fixed trigger
/// whose route follows the vector's table entry.
pub trait MsiVector: Send + Sync {
    /// Points the vector at `message` sent by `requester_id`, or disconnects it (`None`).
    fn set_route(&self, route: Option<(MsiMessage, u16)>) -> std::io::Result<()>;
    /// Raises the vector: the hypervisor sends the message of the route set last.
    fn signal(&self) -> std::io::Result<()>;
    /// The eventfd whose signal raises the vector (KVM: the irqfd's), for a host kernel
    /// that raises it itself (vhost-net); `None` where the trigger is not an eventfd.
    fn eventfd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// One PCI function on the emulated bus, seen through its configuration space and BARs.
pub trait PciFunction: Send {
    /// A short name for logs and traces ("virtio-blk", "root-port1").
    fn name(&self) -> &str;
    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset` (< 4096).
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    /// Writes configuration space.
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// A read of memory BAR `bar` at `offset` from its start.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write of memory BAR `bar` at `offset` from its start.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The memory BARs the function decodes now: empty while memory space is disabled, and
    /// without BARs the guest has not placed yet. [`PciRoot`] asks after every configuration
    /// write to route BAR accesses; [`ConfigSpace::bar_regions`] computes it.
    fn bar_regions(&self) -> Vec<BarRegion>;
    /// The function's requester id (`bus << 8 | devfn`) changed because the guest numbered
    /// the buses; functions that send MSIs keep it for [`MsiSink::signal_msi`].
    fn set_requester_id(&mut self, _requester_id: u16) {}
    /// For a bridge (a root port), the buses behind it as the guest numbered them; `None`
    /// for endpoints and for bridges not numbered yet. [`PciRoot`] asks after every
    /// configuration write, to route configuration accesses to the buses behind.
    fn bridge_buses(&self) -> Option<std::ops::RangeInclusive<u8>> {
        None
    }
    /// For a bridge (a root port), whether the guest asked for a secondary bus reset (set
    /// Bridge Control bit 6) since the last call; [`PciRoot`] asks after every configuration
    /// write and then calls [`PciFunction::bus_reset`] on each function behind it.
    fn take_secondary_bus_reset(&mut self) -> bool {
        false
    }
    /// The bus the function sits on was reset (a secondary bus reset of its root port):
    /// the function returns to its power-on state. Emulated functions that keep no state
    /// worth resetting leave this empty.
    fn bus_reset(&mut self) {}
    /// The VM reboots: the function returns to its power-on state, configuration space
    /// included ([`PciRoot::system_reset`]). The default is [`Self::bus_reset`].
    fn system_reset(&mut self) {
        self.bus_reset();
    }
    /// For a root port with a hot-plug slot: a device was put behind it (`true`) or taken
    /// away (`false`). The port updates presence and link state and interrupts the guest.
    /// Others ignore it.
    fn set_slot_presence(&mut self, _present: bool) {}
    /// Fills `image` (4 KiB) with what a guest read of each register would return now, for
    /// a [`ConfigMirror`] the guest reads without exits. Only for a function whose reads have
    /// no side effects and whose registers change only through its own methods (which
    /// [`PciRoot`] calls with the function locked and then copies it again); the default,
    /// `false`, keeps every read going to [`PciFunction::config_read`] (passed-through
    /// functions read the device).
    fn config_copy(&self, _image: &mut [u8]) -> bool {
        false
    }
}

/// A copy of bus 0's configuration space the guest reads without an exit to the VMM (KVM:
/// a read-only memory slot over bus 0's ECAM pages; writes still exit). [`PciRoot`] keeps it
/// in step: it copies a function again after every configuration write, reset and hot-plug
/// change of it, all made with the function locked.
///
/// Called while a function is locked (any thread: vCPUs, the hot-plug control); must not
/// touch PCI itself.
pub trait ConfigMirror: Send + Sync {
    /// Function 0 of bus-0 device `device` now reads `image` (4 KiB).
    fn update(&self, device: u8, image: &[u8]);
    /// A bus-0 function can no longer be copied ([`PciFunction::config_copy`] said no):
    /// every read must reach the VMM again, from before the guest's next access on.
    fn disable(&self);
}
