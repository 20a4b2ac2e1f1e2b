//! The KVM backend's ioctls (arm64 Linux hosts only).
//!
//! KVM does most of the work in the kernel: PSCI (with `KVM_ARM_VCPU_PSCI_0_2`), WFI, the
//! timers and the GICv3 with its ITS. Userspace sees MMIO exits, already decoded, and system
//! events for power-off and reset.

mod gic;
mod ioevent;
mod irqfd;
mod regs;
mod vcpu;

use std::sync::Arc;

use kvm_bindings::{
    kvm_msi, kvm_userspace_memory_region, KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI,
    KVM_MEM_READONLY, KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::{Cap, VmFd};
use log::{debug, info};

use crate::hypervisor::slots::{Mapping, MemoryKind, SlotTable};

use crate::hypervisor::{
    GicSpec, Hypervisor, HypervisorError, MemorySlot, MsiController, Result, Vcpu, Vm, VmSpec,
};

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens `/dev/kvm`, explaining what to do when that fails.
    pub fn open() -> Result<Self> {
        let kvm =
            kvm_ioctls::Kvm::new().map_err(|e| HypervisorError::KvmOpen { source: e.into() })?;
        Ok(Self { kvm })
    }
}

impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "KVM"
    }

    fn max_ipa_bits(&self) -> u32 {
        // 0 means the host predates KVM_CAP_ARM_VM_IPA_SIZE and gives every VM 40 bits.
        match self.kvm.get_host_ipa_limit() {
            bits if bits > 0 => bits.unsigned_abs(),
            _ => 40,
        }
    }

    fn create_vm(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>> {
        if spec.tso {
            return Err(HypervisorError::TsoUnsupported { hypervisor: "KVM" });
        }
        let fd = self.kvm.create_vm_with_ipa_size(spec.ipa_bits).map_err(|e| {
            HypervisorError::KvmCreateVm { ipa_bits: spec.ipa_bits, source: e.into() }
        })?;
        info!("KVM VM created with a {}-bit guest physical address space", spec.ipa_bits);
        let memslots = u32::try_from(self.kvm.get_nr_memslots()).unwrap_or(u32::MAX);
        let irqfd = Arc::new(irqfd::IrqfdContext { vm: Arc::new(fd), routes: Default::default() });
        Ok(Arc::new(KvmVm {
            fd: irqfd.vm.clone(),
            irqfd,
            gic: std::sync::Mutex::new(None),
            slots: std::sync::Mutex::new(SlotTable::new("KVM", host_page_size(), memslots)),
        }))
    }
}

/// A KVM VM.
#[derive(Debug)]
pub struct KvmVm {
    fd: Arc<VmFd>,
    irqfd: Arc<irqfd::IrqfdContext>,
    /// Keeps the GIC device fds open for the VM's life.
    gic: std::sync::Mutex<Option<gic::KvmGic>>,
    slots: std::sync::Mutex<SlotTable>,
}

/// The host's page size, which KVM memory slots are aligned to.
fn host_page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

impl Vm for KvmVm {
    unsafe fn map_kind(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        kind: MemoryKind,
    ) -> Result<MemorySlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mapping = Mapping { guest: guest_addr, size, host: host_addr as usize, kind };
        let slot = slots.insert(mapping).map_err(|source| HypervisorError::Mapping {
            guest_addr,
            size,
            source,
        })?;
        let flags = match kind {
            MemoryKind::ReadOnly => KVM_MEM_READONLY,
            MemoryKind::Ram | MemoryKind::Device => 0,
        };
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
        };
        debug!("KVM memory slot {slot}: guest {guest_addr:#x}+{size:#x} at host {host_addr:p}");
        // SAFETY: the caller guarantees the host range stays valid while the VM exists; the
        // slot table refused a region that overlaps another slot.
        match unsafe { self.fd.set_user_memory_region(region) } {
            Ok(()) => Ok(MemorySlot { id: slot, guest_addr, size }),
            Err(e) => {
                let _ = slots.remove(&MemorySlot { id: slot, guest_addr, size });
                Err(HypervisorError::call(
                    format!("KVM_SET_USER_MEMORY_REGION {guest_addr:#x}+{size:#x}"),
                    e,
                ))
            }
        }
    }

    fn readonly_memory(&self) -> bool {
        self.fd.check_extension(Cap::ReadonlyMem)
    }

    fn unmap_memory(&self, slot: MemorySlot) -> Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.find(&slot).map_err(|e| HypervisorError::unmapping(&slot, e))?;
        // A zero-sized region deletes the slot.
        let region = kvm_userspace_memory_region {
            slot: slot.id,
            flags: 0,
            guest_phys_addr: slot.guest_addr,
            memory_size: 0,
            userspace_addr: 0,
        };
        debug!("KVM memory slot {} removed ({:#x}+{:#x})", slot.id, slot.guest_addr, slot.size);
        // SAFETY: deleting a slot this VM created; the guest loses access to the range.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|e| {
            HypervisorError::call(format!("KVM_SET_USER_MEMORY_REGION delete slot {}", slot.id), e)
        })?;
        slots.remove(&slot).map_err(|e| HypervisorError::unmapping(&slot, e))?;
        Ok(())
    }

    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>> {
        Ok(Box::new(vcpu::KvmVcpu::new(&self.fd, index)?))
    }

    fn create_gic(&self, spec: &GicSpec) -> Result<()> {
        let gic = gic::KvmGic::new(&self.fd, spec)?;
        *self.gic.lock().unwrap_or_else(|e| e.into_inner()) = Some(gic);
        // Initializing the GIC installed KVM's default routing table (GSI n to SPI n) over
        // any routes set before.
        let routes = self.irqfd.routes();
        if !routes.is_empty() {
            irqfd::commit(&self.fd, &routes)?;
        }
        Ok(())
    }

    fn reset_gic(&self) -> Result<()> {
        match self.gic.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(gic) => gic.reset(),
            None => Ok(()),
        }
    }

    fn msi_controller(&self) -> MsiController {
        MsiController::Its
    }

    fn set_spi_level(&self, spi: u32, asserted: bool) -> Result<()> {
        // KVM_IRQ_LINE on arm64: type in bits 24..31, vCPU (unused for SPIs), INTID in 0..15.
        // It names the INTID directly, without the GSI routing table that irqfds replace.
        let irq = (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | (32 + spi);
        self.fd
            .set_irq_line(irq, asserted)
            .map_err(|e| HypervisorError::call(format!("KVM_IRQ_LINE for SPI {spi}"), e))
    }

    fn register_ioevent(&self, event: &devices::virtio::QueueEvent, addr: u64) -> Result<()> {
        ioevent::register(&self.fd, event, addr)
    }

    fn unregister_ioevent(&self, event: &devices::virtio::QueueEvent, addr: u64) -> Result<()> {
        ioevent::unregister(&self.fd, event, addr)
    }

    fn create_irqfd_msi(&self) -> Result<Arc<dyn crate::hypervisor::IrqfdMsi>> {
        Ok(Arc::new(irqfd::KvmIrqfdMsi::new(&self.irqfd)?))
    }

    fn create_irqfd_spi(&self, spi: u32) -> Result<Arc<dyn crate::hypervisor::IrqfdLevel>> {
        let nr_irqs = match &*self.gic.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(gic) => gic.nr_irqs,
            None => return Err(HypervisorError::NoGicYet { spi }),
        };
        // KVM checks this only when the line is asserted, and then drops the interrupt.
        if spi >= nr_irqs.saturating_sub(32) {
            return Err(HypervisorError::SpiOutOfRange { spi, nr_irqs });
        }
        Ok(Arc::new(irqfd::KvmIrqfdLevel::new(&self.irqfd, spi)?))
    }

    fn signal_msi(&self, address: u64, data: u32, devid: u32) -> Result<()> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            flags: KVM_MSI_VALID_DEVID,
            devid,
            ..Default::default()
        };
        // 0 means the guest has the vector masked or not mapped in the ITS yet: not an error.
        self.fd
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| HypervisorError::call(format!("KVM_SIGNAL_MSI devid {devid:#x}"), e))
    }
}
