//! [`VfioBackend`]: VFIO as a [`HostBackend`]. Functions are checked in sysfs, opened in
//! containers (one shared by the `dma=identity` functions, so one mapping of guest RAM serves
//! them; one per IOMMU group of `dma=window` functions, so that no identity mapping lets them
//! reach all of RAM), and give the VMM their regions, eventfd interrupts and BAR mmaps.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::container::{can_lock_unlimited, memlock_limit, VfioContainer};
use super::device::{VfioDevice, VfioHostFunction};
use super::dma::{VfioHostPicksMapper, VfioIdentityMapper};
use super::error::{check_memlock, VfioError};
use super::interrupts::{InterruptRoute, IntxHandle, VfioInterrupts};
use super::reset::OwnedFunctions;
use crate::assigned::{HostFunction, InterruptHost};
use crate::dma::{HostMapper, MapperLimits};
use crate::host::{
    DmaRequest, FunctionRequest, FunctionResetter, HostBackend, HostError, HostMemory, LossWatch,
    OpenedFunction, RamRegion, ResetOutcome, WindowMapper,
};
use crate::pci_address::PciAddress;
use crate::sysfs::{HostDevice, HostSysfs};

/// Makes the VMM's route for one MSI / MSI-X vector (KVM: an irqfd with an MSI route).
pub type SharedRouteFactory =
    Arc<dyn Fn() -> std::io::Result<Box<dyn InterruptRoute>> + Send + Sync>;

/// The granule of identity DMA mappings: the smallest IOMMU page.
const IDENTITY_GRANULE: u64 = 4096;

/// VFIO's side of one VM's assigned functions.
pub struct VfioBackend {
    sysfs: HostSysfs,
    new_route: SharedRouteFactory,
    /// What sysfs said of each requested function (filled by `check`).
    checked: HashMap<PciAddress, HostDevice>,
    /// The container the `dma=identity` functions share, once one is open.
    identity: Option<Arc<VfioContainer>>,
    /// The containers of `dma=window` functions, one per IOMMU group (its functions share
    /// one DMA address space, so one window manager).
    windowed: HashMap<u32, Arc<VfioContainer>>,
    /// The functions opened so far, for hot resets.
    owned: Arc<OwnedFunctions>,
    page_size: u64,
}

impl std::fmt::Debug for VfioBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioBackend")
            .field("checked", &self.checked.keys().collect::<Vec<_>>())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl VfioBackend {
    /// A backend over the host's sysfs and `/dev/vfio`, whose functions' MSI and MSI-X
    /// vectors get routes from `new_route`.
    pub fn new(new_route: SharedRouteFactory) -> Self {
        Self {
            sysfs: HostSysfs::default(),
            new_route,
            checked: HashMap::new(),
            identity: None,
            windowed: HashMap::new(),
            owned: Arc::default(),
            page_size: host_page_size(),
        }
    }
}

fn host_page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

fn open_container() -> Result<Arc<VfioContainer>, VfioError> {
    VfioContainer::open(Path::new("/dev"))
}

/// Every function of an IOMMU group shares its container (one DMA address space), so they
/// must share a DMA mode (windowed ones then share one window manager).
fn check_groups(
    requests: &[FunctionRequest],
    devices: &[HostDevice],
) -> Result<(), (PciAddress, HostError)> {
    let windowed = |r: &FunctionRequest| matches!(r.dma, DmaRequest::Window(_));
    for (i, (request, device)) in requests.iter().zip(devices).enumerate() {
        for (other_request, other) in requests.iter().zip(devices).skip(i + 1) {
            if other.group == device.group && windowed(request) != windowed(other_request) {
                let error = HostError::SharedGroup { group: device.group, other: device.address };
                return Err((other.address, error));
            }
        }
    }
    Ok(())
}

/// Bytes VFIO will pin: all guest RAM for identity functions, and for each windowed function
/// twice its limit (a window shadowed by a straddling map stays mapped until its users leave).
fn pinned_bytes_needed(requests: &[FunctionRequest], ram: &[RamRegion]) -> u64 {
    let identity = requests.iter().any(|r| r.dma == DmaRequest::Identity);
    let ram_bytes: u64 = ram.iter().map(|r| r.len).sum();
    let windows: u64 = requests
        .iter()
        .filter_map(|r| match r.dma {
            DmaRequest::Window(limits) => {
                Some(limits.max_mapped_bytes.saturating_mul(2).min(ram_bytes))
            }
            DmaRequest::Identity => None,
        })
        .sum();
    if identity { ram_bytes } else { 0 }.saturating_add(windows)
}

impl HostBackend for VfioBackend {
    type Function = VfioFunction;

    fn check(
        &mut self,
        requests: &[FunctionRequest],
        ram: &[RamRegion],
    ) -> Result<(), (PciAddress, HostError)> {
        let mut devices = Vec::new();
        for request in requests {
            let device =
                self.sysfs.inspect(&request.address).map_err(|e| (request.address, e.into()))?;
            devices.push(device);
        }
        check_groups(requests, &devices)?;
        let needed = pinned_bytes_needed(requests, ram);
        if let Some(first) = requests.first() {
            check_memlock(needed, memlock_limit(), can_lock_unlimited())
                .map_err(|e| (first.address, e.into()))?;
        }
        self.checked = devices.into_iter().map(|d| (d.address, d)).collect();
        Ok(())
    }

    fn open(&mut self, request: &FunctionRequest) -> Result<VfioFunction, HostError> {
        let device = match self.checked.get(&request.address) {
            Some(device) => device.clone(),
            None => self.sysfs.inspect(&request.address)?,
        };
        let container = match request.dma {
            DmaRequest::Identity => match &self.identity {
                Some(container) => container.clone(),
                None => self.identity.insert(open_container()?).clone(),
            },
            DmaRequest::Window(_) => match self.windowed.get(&device.group) {
                Some(container) => container.clone(),
                None => {
                    let container = open_container()?;
                    self.windowed.insert(device.group, container.clone());
                    container
                }
            },
        };
        let vfio = Arc::new(container.open_device(&device)?);
        self.owned.add(vfio.address(), vfio.group().clone());
        Ok(VfioFunction {
            device: vfio,
            owned: self.owned.clone(),
            container,
            new_route: self.new_route.clone(),
            page_size: self.page_size,
        })
    }

    fn identity_mapper(
        &mut self,
        ram: &[RamRegion],
    ) -> Result<Option<Box<dyn HostMapper>>, HostError> {
        Ok(self.identity.as_ref().map(|container| {
            let mapper = VfioIdentityMapper::new(container.clone(), ram.to_vec(), IDENTITY_GRANULE);
            Box::new(mapper) as Box<dyn HostMapper>
        }))
    }
}

/// An open VFIO function and the container its DMA goes through.
pub struct VfioFunction {
    device: Arc<VfioDevice>,
    container: Arc<VfioContainer>,
    owned: Arc<OwnedFunctions>,
    new_route: SharedRouteFactory,
    page_size: u64,
}

impl std::fmt::Debug for VfioFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioFunction").field("device", &self.device.address()).finish()
    }
}

impl Drop for VfioFunction {
    fn drop(&mut self) {
        // The VM lets go of the function (its device left, or the VM ends): hot resets of
        // other functions no longer count it, and its group closes with its last function.
        self.owned.remove(self.device.address());
    }
}

impl VfioFunction {
    /// The VFIO device.
    pub fn device(&self) -> &Arc<VfioDevice> {
        &self.device
    }
}

impl OpenedFunction for VfioFunction {
    type Intx = IntxHandle;

    const INTERRUPT_KINDS: &'static str = "MSI-X, MSI or INTx";

    fn address(&self) -> PciAddress {
        self.device.address()
    }

    fn reset(&self, when: &str) -> ResetOutcome {
        self.owned.reset(&self.device, when)
    }

    fn resetter(&self) -> FunctionResetter {
        let (owned, device) = (self.owned.clone(), self.device.clone());
        Box::new(move |when| owned.reset(&device, when))
    }

    fn host_function(&self) -> Box<dyn HostFunction> {
        Box::new(VfioHostFunction(self.device.clone()))
    }

    fn interrupts(&self) -> (Box<dyn InterruptHost>, Option<IntxHandle>) {
        let new_route = self.new_route.clone();
        let interrupts = VfioInterrupts::new(self.device.clone(), Box::new(move || new_route()));
        let intx = interrupts.intx_handle();
        (Box::new(interrupts), intx)
    }

    fn bar_granule(&self) -> u64 {
        self.page_size
    }

    fn map_bar_piece(
        &self,
        bar: usize,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn HostMemory>, HostError> {
        Ok(Box::new(self.device.mmap_bar(bar, offset, len)?))
    }

    fn window_mapper(
        &self,
        ram: &[RamRegion],
        limits: MapperLimits,
    ) -> Result<WindowMapper, HostError> {
        let mapper = VfioHostPicksMapper::new(self.container.clone(), ram.to_vec(), limits)?;
        let (base, size) = mapper.iova_aperture();
        let placement = format!("at device addresses {base:#x}+{size:#x}");
        Ok(WindowMapper { mapper: Box::new(mapper), placement })
    }

    fn dma_space(&self) -> Option<u32> {
        Some(self.device.group().number())
    }

    fn loss_watch(&self) -> Option<Box<dyn LossWatch>> {
        let watch = super::loss::VfioLossWatch::new(&self.device)?;
        Some(Box::new(watch))
    }

    /// Turns MSI-X and MSI off, so the host stops signalling the eventfds.
    fn quiesce(&self) {
        let device = &self.device;
        for (kind, result) in [("MSI-X", device.disable_msix()), ("MSI", device.disable_msi())] {
            match result {
                // EINVAL: already off (the guest or the virtual reset turned it off).
                Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                    log::warn!("{}: disabling {kind} at exit: {e}", device.address())
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(address: &str, dma: DmaRequest) -> FunctionRequest {
        FunctionRequest { address: address.parse().unwrap(), dma }
    }

    fn device(address: &str, group: u32) -> HostDevice {
        HostDevice {
            address: address.parse().unwrap(),
            sysfs_path: Default::default(),
            group,
            ids: (0x10de, 0x2684),
            class: 0x030000,
        }
    }

    #[test]
    fn functions_of_one_group_share_a_dma_mode() {
        let window = DmaRequest::Window(MapperLimits::APPLE_DART);
        let a = request("0000:01:00.0", window);
        let b = request("0000:01:00.1", DmaRequest::Identity);
        let devices = [device("0000:01:00.0", 7), device("0000:01:00.1", 7)];
        let (address, error) = check_groups(&[a, b], &devices).unwrap_err();
        assert_eq!(address.to_string(), "0000:01:00.1");
        let text = error.to_string();
        assert!(text.contains("shares IOMMU group 7 with 0000:01:00.0"), "{text}");
        assert!(text.contains("give them the same dma= mode"), "{text}");
        let identity = request("0000:01:00.0", DmaRequest::Identity);
        assert!(check_groups(&[identity, b], &devices).is_ok(), "identity functions share");
        let audio = request("0000:01:00.1", window);
        assert!(check_groups(&[a, audio], &devices).is_ok(), "windowed functions share");
        let apart = [device("0000:01:00.0", 7), device("0000:01:00.1", 8)];
        assert!(check_groups(&[a, b], &apart).is_ok());
    }

    #[test]
    fn pins_ram_for_identity_and_twice_the_budget_per_window() {
        let ram = [RamRegion { gpa: 0x4000_0000, len: 4 << 30, host_addr: 0 }];
        let limits = MapperLimits { max_mapped_bytes: 1 << 30, ..MapperLimits::APPLE_DART };
        let identity = request("0000:01:00.0", DmaRequest::Identity);
        let window = request("0000:02:00.0", DmaRequest::Window(limits));
        assert_eq!(pinned_bytes_needed(&[identity], &ram), 4 << 30);
        assert_eq!(pinned_bytes_needed(&[window], &ram), 2 << 30);
        assert_eq!(pinned_bytes_needed(&[identity, window], &ram), 6 << 30);
        let small = [RamRegion { gpa: 0x4000_0000, len: 1 << 30, host_addr: 0 }];
        assert_eq!(pinned_bytes_needed(&[window], &small), 1 << 30, "at most all of RAM");
    }
}
