//! The host backend of PCI passthrough, whatever the OS: what the VMM's one device pipeline
//! (`vmm/src/assign/`) asks of VFIO on Linux (`vfio::VfioBackend`) and of the DriverKit
//! extension on macOS ([`crate::driverkit::DextBackend`]).
//!
//! A [`HostBackend`] checks the requested functions as a set and opens each one as an
//! [`OpenedFunction`]: its configuration space and BARs ([`HostFunction`]), its MSI / MSI-X
//! ([`InterruptHost`], plus an INTx handle where the host has one), the pieces of its BARs
//! the guest may access directly, its reset, and the DMA mapper of a `dma=window` device.
//! All guest RAM at device address = guest-physical address (`dma=identity`) comes from
//! [`HostBackend::identity_mapper`], where the host can do it.

use crate::assigned::{AssignedFunction, HostFunction, InterruptHost};
use crate::dma::{GuestRamRange, HostMapper, MapperError, MapperLimits};
use crate::pci_address::PciAddress;
use crate::sysfs::HostDeviceError;

/// One region of guest RAM as the VMM has it mapped: what DMA mappers need to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the VMM has it mapped, valid while the VM's RAM lives.
    pub host_addr: u64,
}

impl RamRegion {
    /// Its guest-physical range, as the DMA window manager takes it.
    pub fn range(&self) -> GuestRamRange {
        GuestRamRange { start: self.gpa, len: self.len }
    }

    /// The host address of guest `[gpa, gpa+len)`, if one region of `ram` holds all of it.
    pub fn host_addr_of(ram: &[RamRegion], gpa: u64, len: u64) -> Option<u64> {
        let region = ram.iter().find(|r| {
            gpa >= r.gpa && gpa.checked_add(len).is_some_and(|end| end <= r.gpa + r.len)
        })?;
        region.host_addr.checked_add(gpa - region.gpa)
    }
}

/// Resets one opened function from any thread (`when`: "guest"; logged), for the resets the
/// guest starts from a vCPU thread.
pub type FunctionResetter = Box<dyn Fn(&str) -> ResetOutcome + Send>;

/// What a device reset did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The host reset the function alone (VFIO: FLR, PM or bus reset, whichever the kernel
    /// found; DriverKit: FLR or a hot reset of its port).
    Done,
    /// The host reset the function's whole slot (VFIO hot reset: every function on it).
    HotReset,
    /// The device has no reset method the host can use.
    Unsupported,
    /// Only a hot reset would do, and it would also reset functions this VM does not own.
    NotOwned,
    /// The per-function reset failed (some GPUs behind Thunderbolt never come back from FLR).
    Failed,
    /// The hot reset of the slot failed.
    HotResetFailed,
}

impl ResetOutcome {
    /// Its outcome in traces: "done", "unsupported", "not-owned", "failed".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done | Self::HotReset => "done",
            Self::Unsupported => "unsupported",
            Self::NotOwned => "not-owned",
            Self::Failed | Self::HotResetFailed => "failed",
        }
    }

    /// The method that ran, in traces: "flr" (the per-function reset), "hot-reset" (the
    /// slot) or "none".
    pub fn method(self) -> &'static str {
        match self {
            Self::Done | Self::Failed => "flr",
            Self::HotReset | Self::HotResetFailed => "hot-reset",
            Self::Unsupported | Self::NotOwned => "none",
        }
    }
}

/// Why the host takes a function away while the VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// The host asks for the function back: it is being removed or unbound (VFIO's device
    /// request interrupt; the host's removal waits until the VMM lets go).
    Request,
    /// The host reports an unrecoverable error on the function (VFIO's error interrupt).
    Error,
    /// The device terminated or stopped answering (DriverKit: Terminate, or the interrupt
    /// wait failed with the device gone).
    Gone,
}

impl LossReason {
    /// Its name in logs and traces: "request", "error", "gone".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Error => "error",
            Self::Gone => "gone",
        }
    }
}

/// Tells, without blocking, whether the host took a function away. Holds nothing of the
/// function itself, so it never keeps the host device open.
pub trait LossWatch: Send + std::fmt::Debug {
    /// The reason, once the host reported one (each report is taken once).
    fn poll(&self) -> Option<LossReason>;
}

/// How a function's DMA reaches guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaRequest {
    /// All guest RAM, mapped up front at device address = guest-physical address.
    Identity,
    /// Through DMA windows, within these host limits.
    Window(MapperLimits),
}

/// One function the VMM asks the host for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionRequest {
    /// Its host address.
    pub address: PciAddress,
    /// How its DMA reaches guest RAM.
    pub dma: DmaRequest,
}

/// Host memory behind part of a BAR, mappable into the guest.
pub trait HostMemory: Send {
    /// Where it is mapped in this process.
    fn host_addr(&self) -> *mut u8;
    /// Its length in bytes (a multiple of the host page size).
    fn len(&self) -> u64;
    /// Whether it is empty (mappings never are).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A page-aligned piece of a BAR that the guest accesses directly (no exits).
pub struct DirectBar {
    /// BAR index.
    pub bar: usize,
    /// Offset of the piece in the BAR.
    pub offset: u64,
    /// The host mapping.
    pub memory: Box<dyn HostMemory>,
}

impl std::fmt::Debug for DirectBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBar")
            .field("bar", &self.bar)
            .field("offset", &format_args!("{:#x}", self.offset))
            .field("len", &format_args!("{:#x}", self.memory.len()))
            .finish()
    }
}

/// The DMA mapper of a `dma=window` function, and where it puts device addresses (logs).
pub struct WindowMapper {
    /// The mapper the window manager drives.
    pub mapper: Box<dyn HostMapper>,
    /// Where device addresses come from, e.g. "over the DART".
    pub placement: String,
}

impl std::fmt::Debug for WindowMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowMapper").field("placement", &self.placement).finish()
    }
}

/// Why the host could not serve a function; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The function's sysfs state rules it out (Linux).
    #[error(transparent)]
    Sysfs(#[from] HostDeviceError),
    /// A VFIO call failed (Linux).
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Vfio(#[from] crate::vfio::VfioError),
    /// The DriverKit extension failed or refused (macOS).
    #[error(transparent)]
    Dext(#[from] crate::driverkit::DextError),
    /// The DMA mapper could not be made or could not map guest RAM.
    #[error(transparent)]
    Mapper(#[from] MapperError),
    /// A BAR piece could not be mapped into this process.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Functions of one IOMMU group share one DMA address space, so one DMA mode.
    #[error(
        "it shares IOMMU group {group} with {other}, and functions of one IOMMU group share \
         one DMA address space: give them the same dma= mode"
    )]
    SharedGroup {
        /// The group.
        group: u32,
        /// The other function in it.
        other: PciAddress,
    },
    /// The host cannot map all guest RAM at guest-physical addresses.
    #[error(
        "dma=identity is not possible on macOS: the DART maps at most about 1.5 GB, at device \
         addresses it picks, so guest RAM cannot be mapped at guest physical addresses; use \
         dma=window (the default on macOS) and load the aperture_dma module in the guest"
    )]
    NoIdentityDma,
}

/// One function the host opened (claimed and ready), until the VM ends.
pub trait OpenedFunction: Send + std::fmt::Debug {
    /// The handle that wires the function's INTx once the VMM has the guest line (VFIO), or
    /// an uninhabited type where the host offers no INTx.
    type Intx: Clone + Send + std::fmt::Debug;

    /// What interrupts the host can deliver, for the warning when the function has none.
    const INTERRUPT_KINDS: &'static str;

    /// Its host address.
    fn address(&self) -> PciAddress;
    /// Resets the function and reports the outcome (`when`: "start", "exit"; logged).
    fn reset(&self, when: &str) -> ResetOutcome;
    /// The same reset as [`Self::reset`], as a handle the assigned function keeps for the
    /// guest's FLRs and secondary bus resets.
    fn resetter(&self) -> FunctionResetter;
    /// Access to its configuration space and BARs.
    fn host_function(&self) -> Box<dyn HostFunction>;
    /// Its MSI / MSI-X plumbing, and its INTx handle if the host can deliver INTx.
    fn interrupts(&self) -> (Box<dyn InterruptHost>, Option<Self::Intx>);
    /// The granule BAR pieces are mapped into the guest in (the host page size).
    fn bar_granule(&self) -> u64;
    /// Maps `len` bytes of BAR `bar` from `offset` (both multiples of the granule).
    fn map_bar_piece(
        &self,
        bar: usize,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn HostMemory>, HostError>;
    /// The DMA mapper of a `dma=window` function over `ram`.
    fn window_mapper(
        &self,
        ram: &[RamRegion],
        limits: MapperLimits,
    ) -> Result<WindowMapper, HostError>;
    /// Stops the function's interrupts before its reset at exit.
    fn quiesce(&self) {}

    /// What reports that the host took the function away (removal, unbind, fatal error),
    /// where the host tells; set up once, after the function is open.
    fn loss_watch(&self) -> Option<Box<dyn LossWatch>> {
        None
    }

    /// The host DMA address space the function is in, where functions can share one (VFIO:
    /// its IOMMU group): `dma=window` functions of one space share one window manager.
    fn dma_space(&self) -> Option<u32> {
        None
    }

    /// The page-aligned pieces of each BAR of `function` that the guest can access directly;
    /// the rest is trapped.
    fn direct_bars(&self, function: &AssignedFunction) -> Vec<DirectBar> {
        let name = self.address();
        let mut direct = Vec::new();
        for bar in 0..6 {
            for (offset, len) in function.mappable_bar_ranges(bar, self.bar_granule()) {
                match self.map_bar_piece(bar, offset, len) {
                    Ok(memory) => direct.push(DirectBar { bar, offset, memory }),
                    Err(e) => log::warn!(
                        "{name}: BAR {bar} {offset:#x}+{len:#x} cannot be mapped ({e}); guest \
                         accesses there are trapped (slow)"
                    ),
                }
            }
        }
        direct
    }
}

/// A host's passthrough backend: checks and opens the functions of one VM.
pub trait HostBackend: Send + std::fmt::Debug {
    /// An opened function.
    type Function: OpenedFunction;

    /// Checks `requests` as a set before any is opened, with `ram` the guest RAM their DMA
    /// may pin; on failure, the function the error is about.
    fn check(
        &mut self,
        requests: &[FunctionRequest],
        ram: &[RamRegion],
    ) -> Result<(), (PciAddress, HostError)>;
    /// Opens (claims) one function; the caller resets it.
    fn open(&mut self, request: &FunctionRequest) -> Result<Self::Function, HostError>;
    /// Once every function is open: the mapper that maps guest RAM at device address =
    /// guest-physical address for the `dma=identity` functions, if there are any.
    fn identity_mapper(
        &mut self,
        ram: &[RamRegion],
    ) -> Result<Option<Box<dyn HostMapper>>, HostError>;
}

/// The INTx handle of a host without INTx: there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoIntx {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_host_address_of_a_guest_range() {
        let ram = [
            RamRegion { gpa: 0x4000_0000, len: 0x1000_0000, host_addr: 0x7f00_0000_0000 },
            RamRegion { gpa: 0x8000_0000, len: 0x1000, host_addr: 0x1000 },
        ];
        assert_eq!(RamRegion::host_addr_of(&ram, 0x4000_1000, 0x1000), Some(0x7f00_0000_1000));
        assert_eq!(RamRegion::host_addr_of(&ram, 0x8000_0000, 0x1000), Some(0x1000));
        assert_eq!(RamRegion::host_addr_of(&ram, 0x8000_0000, 0x1001), None, "past the end");
        assert_eq!(RamRegion::host_addr_of(&ram, 0x3fff_f000, 0x2000), None, "below");
        assert_eq!(RamRegion::host_addr_of(&ram, u64::MAX, 2), None, "wraps");
        assert_eq!(ram[0].range(), GuestRamRange { start: 0x4000_0000, len: 0x1000_0000 });
    }

    #[test]
    fn reset_outcomes_have_trace_names() {
        use ResetOutcome::*;
        let all = [Done, HotReset, Unsupported, NotOwned, Failed, HotResetFailed];
        let names: Vec<_> = all.iter().map(|o| (o.as_str(), o.method())).collect();
        assert_eq!(
            names,
            [
                ("done", "flr"),
                ("done", "hot-reset"),
                ("unsupported", "none"),
                ("not-owned", "none"),
                ("failed", "flr"),
                ("failed", "hot-reset"),
            ]
        );
    }
}
