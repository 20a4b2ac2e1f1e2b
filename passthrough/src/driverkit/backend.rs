//! [`DextBackend`]: the DriverKit extension as a [`HostBackend`]. Each function gets its own
//! connection to the dext; its BARs are mapped from the dext, its MSI / MSI-X injected through
//! the VMM's [`MsiSink`], and its DMA always goes through windows over the DART: the DART maps
//! about 1.5 GB at addresses it picks, so guest RAM cannot be mapped up front at guest
//! physical addresses. Portable: the connection comes from the VMM ([`IoKitConnection`] on
//! macOS, a fake dext in tests).
//!
//! [`IoKitConnection`]: super::IoKitConnection

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::connection::{DextConnection, DextError, DextMapping};
use super::dart::DartMapper;
use super::device::DextDevice;
use super::host::DextHostFunction;
use super::interrupts::{DextInterrupts, MsiSink};
use super::lock::{default_lock_dir, DeviceLock};
use crate::assigned::{HostFunction, InterruptHost};
use crate::dma::{HostMapper, MapperLimits};
use crate::host::{
    DmaRequest, FunctionRequest, FunctionResetter, HostBackend, HostError, HostMemory, LossReason,
    LossWatch, NoIntx, OpenedFunction, RamRegion, ResetOutcome, WindowMapper,
};
use crate::pci_address::PciAddress;

/// hv_vm_map's granule: BAR pieces mapped into the guest are multiples of it.
const BAR_GRANULE: u64 = 16 << 10;

/// Connects to the dext instance serving a function.
pub type ConnectionOpener =
    Box<dyn Fn(PciAddress) -> Result<Arc<dyn DextConnection>, DextError> + Send>;

/// Makes the sink that injects a function's interrupts (by its name) into the guest.
pub type MsiSinkFactory = Box<dyn Fn(&str) -> MsiSink + Send>;

/// The DriverKit extension's side of one VM's assigned functions.
pub struct DextBackend {
    connect: ConnectionOpener,
    msi_sink: MsiSinkFactory,
    lock_dir: PathBuf,
}

impl std::fmt::Debug for DextBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DextBackend").finish_non_exhaustive()
    }
}

impl DextBackend {
    /// A backend whose functions are reached through `connect` and interrupt through the
    /// sinks `msi_sink` makes.
    pub fn new(connect: ConnectionOpener, msi_sink: MsiSinkFactory) -> Self {
        Self { connect, msi_sink, lock_dir: default_lock_dir() }
    }

    /// Keeps the devices' lock files in `dir` instead of `$TMPDIR`.
    pub fn with_lock_dir(mut self, dir: PathBuf) -> Self {
        self.lock_dir = dir;
        self
    }
}

impl HostBackend for DextBackend {
    type Function = DextFunction;

    fn check(
        &mut self,
        requests: &[FunctionRequest],
        _ram: &[RamRegion],
    ) -> Result<(), (PciAddress, HostError)> {
        match requests.iter().find(|r| r.dma == DmaRequest::Identity) {
            Some(request) => Err((request.address, HostError::NoIdentityDma)),
            None => Ok(()),
        }
    }

    fn open(&mut self, request: &FunctionRequest) -> Result<DextFunction, HostError> {
        let address = request.address;
        // Before the claim: a second client's claim would succeed and share the device.
        let lock = DeviceLock::acquire(&self.lock_dir, address)?;
        let connection = (self.connect)(address)?;
        let device = Arc::new(DextDevice::open(address, connection)?);
        let sink = (self.msi_sink)(&address.to_string());
        Ok(DextFunction { device, sink, bars: Mutex::new(Default::default()), _lock: lock })
    }

    fn identity_mapper(
        &mut self,
        _ram: &[RamRegion],
    ) -> Result<Option<Box<dyn HostMapper>>, HostError> {
        Ok(None)
    }
}

/// Reports once that the dext lost a device (its interrupt wait failed with it gone).
#[derive(Debug)]
pub struct DextLossWatch {
    gone: Arc<AtomicBool>,
    reported: AtomicBool,
}

impl LossWatch for DextLossWatch {
    fn poll(&self) -> Option<LossReason> {
        let gone = self.gone.load(Ordering::Acquire);
        (gone && !self.reported.swap(true, Ordering::AcqRel)).then_some(LossReason::Gone)
    }
}

/// A function claimed through the dext.
pub struct DextFunction {
    device: Arc<DextDevice>,
    sink: MsiSink,
    /// BARs mapped from the dext so far (each whole, once).
    bars: Mutex<[Option<Arc<dyn DextMapping>>; 6]>,
    /// Held while the function is assigned.
    _lock: DeviceLock,
}

impl std::fmt::Debug for DextFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DextFunction").field("device", &self.device.address()).finish()
    }
}

impl DextFunction {
    /// The claimed device.
    pub fn device(&self) -> &Arc<DextDevice> {
        &self.device
    }

    /// All of BAR `bar` mapped from the dext (once), if it is granule-aligned.
    fn bar_mapping(&self, bar: usize) -> Result<Arc<dyn DextMapping>, HostError> {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let slot = bars.get_mut(bar).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no BAR {bar}"))
        })?;
        let mapping = match slot {
            Some(mapping) => mapping.clone(),
            None => slot.insert(self.device.map_bar(bar)?).clone(),
        };
        if mapping.addr() as u64 % BAR_GRANULE != 0 {
            return Err(std::io::Error::other(format!(
                "the dext mapped it at {:p}, not 16 KiB-aligned",
                mapping.addr()
            ))
            .into());
        }
        Ok(mapping)
    }
}

/// A page-aligned piece of a BAR mapping that the guest accesses directly.
struct BarPiece {
    mapping: Arc<dyn DextMapping>,
    offset: u64,
    len: u64,
}

impl HostMemory for BarPiece {
    fn host_addr(&self) -> *mut u8 {
        // offset + len <= the mapping's length (checked when the piece was made).
        self.mapping.addr().wrapping_add(self.offset as usize)
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl OpenedFunction for DextFunction {
    type Intx = NoIntx;

    const INTERRUPT_KINDS: &'static str = "MSI-X or MSI";

    fn address(&self) -> PciAddress {
        self.device.address()
    }

    fn reset(&self, when: &str) -> ResetOutcome {
        self.device.reset(when)
    }

    fn resetter(&self) -> FunctionResetter {
        let device = self.device.clone();
        Box::new(move |when| device.reset(when))
    }

    fn host_function(&self) -> Box<dyn HostFunction> {
        Box::new(DextHostFunction::new(self.device.clone()))
    }

    /// MSI and MSI-X through the dext; it offers no INTx.
    fn interrupts(&self) -> (Box<dyn InterruptHost>, Option<NoIntx>) {
        (Box::new(DextInterrupts::new(&self.device, self.sink.clone())), None)
    }

    fn bar_granule(&self) -> u64 {
        BAR_GRANULE
    }

    fn map_bar_piece(
        &self,
        bar: usize,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn HostMemory>, HostError> {
        let mapping = self.bar_mapping(bar)?;
        if offset.checked_add(len).is_none_or(|end| end > mapping.len()) {
            return Err(std::io::Error::other(format!(
                "past the dext's {:#x}-byte mapping",
                mapping.len()
            ))
            .into());
        }
        Ok(Box::new(BarPiece { mapping, offset, len }))
    }

    /// The interrupt thread's report that the dext lost the device.
    fn loss_watch(&self) -> Option<Box<dyn LossWatch>> {
        Some(Box::new(DextLossWatch {
            gone: self.device.gone_flag().clone(),
            reported: AtomicBool::new(false),
        }))
    }

    fn window_mapper(
        &self,
        ram: &[RamRegion],
        limits: MapperLimits,
    ) -> Result<WindowMapper, HostError> {
        let connection = self.device.connection().clone();
        let mapper = DartMapper::new(connection, ram.to_vec(), limits)?;
        Ok(WindowMapper { mapper: Box::new(mapper), placement: "over the DART".to_string() })
    }
}
