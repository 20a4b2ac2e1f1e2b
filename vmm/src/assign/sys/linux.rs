//! VFIO: devices checked in sysfs, opened in one container per VM, reset at start and exit,
//! with all guest RAM mapped for their DMA at device address = guest physical address.

use std::sync::Arc;

use devices::pci::MsiMessage;
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{info, warn};
use passthrough::assigned::AssignedFunction;
use passthrough::dma::HostMapper;
use passthrough::vfio::{
    can_lock_unlimited, check_memlock, memlock_limit, InterruptRoute, MappedBar, RamMapping,
    VfioContainer, VfioDevice, VfioHostFunction, VfioIdentityMapper, VfioMsix,
};
use passthrough::HostSysfs;

use super::{AssignError, DirectBar, HostMemory, PendingFunction};
use crate::config::DeviceConfig;
use crate::hypervisor::{IrqfdMsi, MsiRoute, Vm};
use crate::memory::GuestRam;

impl HostMemory for MappedBar {
    fn host_addr(&self) -> *mut u8 {
        MappedBar::host_addr(self)
    }

    fn len(&self) -> u64 {
        MappedBar::len(self)
    }
}

/// An MSI or MSI-X vector's eventfd as a KVM irqfd.
struct IrqfdRoute(Arc<dyn IrqfdMsi>);

impl InterruptRoute for IrqfdRoute {
    fn eventfd(&self) -> std::os::fd::RawFd {
        self.0.eventfd()
    }

    fn set(&self, message: Option<MsiMessage>, requester_id: u16) -> std::io::Result<()> {
        let route = message.map(|m| MsiRoute {
            address: m.address,
            data: m.data,
            devid: u32::from(requester_id),
        });
        self.0.set_route(route).map_err(std::io::Error::other)
    }
}

fn host_page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

/// The VM's VFIO devices and DMA mappings.
#[derive(Debug)]
pub struct HostDevices {
    devices: Vec<Arc<VfioDevice>>,
    mapper: Option<VfioIdentityMapper>,
    dma_mapped: Vec<(u64, u64)>,
    trace: Option<Arc<dyn TraceSink>>,
}

impl HostDevices {
    pub fn open(
        vm: &Arc<dyn Vm>,
        ram: &GuestRam,
        configs: &[DeviceConfig],
        trace: Option<&Arc<dyn TraceSink>>,
    ) -> Result<(Self, Vec<PendingFunction>), AssignError> {
        let host_error = |address: &dyn std::fmt::Display, message: String| AssignError::Host {
            address: address.to_string(),
            message,
        };
        let sysfs = HostSysfs::default();
        let mut checked = Vec::new();
        for config in configs {
            let device = sysfs.inspect(&config.address).map_err(|e| AssignError::Host {
                address: config.address.to_string(),
                message: e.to_string(),
            })?;
            checked.push(device);
        }
        let first = &configs[0].address;
        let container = VfioContainer::open(std::path::Path::new("/dev"))
            .map_err(|e| host_error(first, e.to_string()))?;
        let mut this = Self {
            devices: Vec::new(),
            mapper: None,
            dma_mapped: Vec::new(),
            trace: trace.cloned(),
        };
        let mut opened = Vec::new();
        for device in &checked {
            let vfio = container
                .open_device(device)
                .map_err(|e| host_error(&device.address, e.to_string()))?;
            let vfio = Arc::new(vfio);
            this.devices.push(vfio.clone());
            this.reset(&vfio, "start");
            opened.push(vfio);
        }
        this.map_guest_ram(&container, ram).map_err(|message| host_error(first, message))?;
        let page_size = host_page_size();
        let mut functions = Vec::new();
        for vfio in opened {
            let name = vfio.address().to_string();
            let irqfd_vm = vm.clone();
            let new_route = Box::new(move || -> std::io::Result<Box<dyn InterruptRoute>> {
                let irqfd = irqfd_vm.create_irqfd_msi().map_err(std::io::Error::other)?;
                Ok(Box::new(IrqfdRoute(irqfd)))
            });
            let function = AssignedFunction::new(
                &name,
                Box::new(VfioHostFunction(vfio.clone())),
                Box::new(VfioMsix::new(vfio.clone(), new_route)),
            )
            .map_err(|e| host_error(&name, e.to_string()))?;
            let mut function = function;
            function.set_trace(trace.cloned());
            if !function.has_interrupts() {
                warn!(
                    "{name}: the device has neither usable MSI-X nor MSI; Aperture offers no \
                     INTx yet, so the guest driver gets no interrupts from it"
                );
            }
            let mut direct_bars = Vec::new();
            for bar in 0..6 {
                for (offset, len) in function.mappable_bar_ranges(bar, page_size) {
                    match vfio.mmap_bar(bar, offset, len) {
                        Ok(mapped) => {
                            direct_bars.push(DirectBar { bar, offset, memory: Box::new(mapped) })
                        }
                        Err(e) => warn!(
                            "{name}: BAR {bar} {offset:#x}+{len:#x} cannot be mmapped ({e}); \
                             guest accesses there are trapped (slow)"
                        ),
                    }
                }
            }
            functions.push(PendingFunction {
                name,
                address: vfio.address(),
                function: Box::new(function),
                direct_bars,
            });
        }
        Ok((this, functions))
    }

    /// Pins all guest RAM and maps it for the devices' DMA at IOVA = guest physical address.
    fn map_guest_ram(
        &mut self,
        container: &Arc<VfioContainer>,
        ram: &GuestRam,
    ) -> Result<(), String> {
        let total: u64 = ram.regions().iter().map(|r| r.size).sum();
        check_memlock(total, memlock_limit(), can_lock_unlimited()).map_err(|e| e.to_string())?;
        let regions: Vec<RamMapping> = ram
            .regions()
            .iter()
            .map(|r| RamMapping { gpa: r.guest_addr, len: r.size, host_addr: r.host_addr })
            .collect();
        let mut mapper = VfioIdentityMapper::new(container.clone(), regions.clone(), 4096);
        for region in &regions {
            let iova = mapper.map(region.gpa, region.len).map_err(|e| e.to_string())?;
            self.dma_mapped.push((iova, region.len));
            self.record(
                "dma-map",
                &[
                    ("gpa", TraceValue::Hex(region.gpa)),
                    ("iova", TraceValue::Hex(iova)),
                    ("len", TraceValue::Hex(region.len)),
                ],
            );
            info!("DMA map: guest RAM {:#x}+{:#x} at IOVA {iova:#x}", region.gpa, region.len);
        }
        self.mapper = Some(mapper);
        Ok(())
    }

    fn record(&self, event: &str, fields: &[(&str, TraceValue<'_>)]) {
        if let Some(trace) = &self.trace {
            trace.record(&TraceRecord { source: "dma", event, fields });
        }
    }

    /// Resets `device` and traces the outcome.
    fn reset(&self, device: &VfioDevice, when: &str) {
        let outcome = device.reset(when);
        if let Some(trace) = &self.trace {
            let outcome = format!("{outcome:?}").to_lowercase();
            let fields = [("when", TraceValue::Str(when)), ("outcome", TraceValue::Str(&outcome))];
            let source = device.address().to_string();
            trace.record(&TraceRecord { source: &source, event: "reset", fields: &fields });
        }
    }

    /// Stops the devices' interrupts and DMA, resets them, then unmaps guest RAM.
    pub fn shutdown(&mut self) {
        for device in &self.devices {
            for (kind, result) in [("MSI-X", device.disable_msix()), ("MSI", device.disable_msi())]
            {
                match result {
                    // EINVAL: already off (the guest or the virtual reset turned it off).
                    Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                        warn!("{}: disabling {kind} at exit: {e}", device.address())
                    }
                    _ => {}
                }
            }
            self.reset(device, "exit");
        }
        if let Some(mapper) = self.mapper.as_mut() {
            for (iova, len) in self.dma_mapped.drain(..) {
                match mapper.unmap(iova, len) {
                    Ok(()) => {
                        info!("DMA unmap: IOVA {iova:#x}+{len:#x}");
                        if let Some(trace) = &self.trace {
                            let fields =
                                [("iova", TraceValue::Hex(iova)), ("len", TraceValue::Hex(len))];
                            trace.record(&TraceRecord {
                                source: "dma",
                                event: "dma-unmap",
                                fields: &fields,
                            });
                        }
                    }
                    Err(e) => warn!("DMA unmap at exit: {e}"),
                }
            }
        }
    }
}
