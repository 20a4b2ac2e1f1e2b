//! The KVM backend (arm64 Linux hosts).
//!
//! KVM does most of the work in the kernel: PSCI (with `KVM_ARM_VCPU_PSCI_0_2`), WFI, the
//! timers and the GICv3 with its ITS. Userspace sees MMIO exits, already decoded, and system
//! events for power-off and reset.

mod gic;
mod irqfd;
mod regs;
mod vcpu;

use std::sync::Arc;

use kvm_bindings::{
    kvm_msi, kvm_userspace_memory_region, KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_TYPE_SPI,
    KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::VmFd;
use log::{debug, info};

use super::{
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
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| {
            let fix = match e.errno() {
                libc::ENOENT => {
                    "the host has no /dev/kvm: boot an arm64 Linux host with virtualization \
                     (EL2) available and the kvm module loaded"
                }
                libc::EACCES | libc::EPERM => {
                    "permission denied on /dev/kvm: add your user to the kvm group \
                     (sudo usermod -aG kvm $USER, then log in again) or run as root"
                }
                _ => "could not open /dev/kvm",
            };
            HypervisorError::Unavailable(format!("{fix} ({e})"))
        })?;
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
        let fd = self.kvm.create_vm_with_ipa_size(spec.ipa_bits).map_err(|e| {
            HypervisorError::call(
                format!("KVM_CREATE_VM with a {}-bit IPA space", spec.ipa_bits),
                e,
            )
        })?;
        info!("KVM VM created with a {}-bit guest physical address space", spec.ipa_bits);
        let irqfd = Arc::new(irqfd::IrqfdContext { vm: Arc::new(fd), routes: Default::default() });
        Ok(Arc::new(KvmVm {
            fd: irqfd.vm.clone(),
            irqfd,
            gic: std::sync::Mutex::new(None),
            slots: Default::default(),
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
    slots: std::sync::Mutex<SlotNumbers>,
}

/// KVM memory slot numbers: freed numbers are reused, since the number of slots is bounded.
#[derive(Debug, Default)]
struct SlotNumbers {
    next: u32,
    free: Vec<u32>,
}

impl SlotNumbers {
    fn allocate(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
    ) -> Result<MemorySlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.allocate();
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr as u64,
        };
        debug!("KVM memory slot {slot}: guest {guest_addr:#x}+{size:#x} at host {host_addr:p}");
        // SAFETY: the caller guarantees the host range stays valid while the VM exists; the
        // region does not overlap another slot because the VMM maps disjoint ranges.
        match unsafe { self.fd.set_user_memory_region(region) } {
            Ok(()) => Ok(MemorySlot { id: slot, guest_addr, size }),
            Err(e) => {
                slots.release(slot);
                Err(HypervisorError::call(
                    format!("KVM_SET_USER_MEMORY_REGION {guest_addr:#x}+{size:#x}"),
                    e,
                ))
            }
        }
    }

    fn unmap_memory(&self, slot: MemorySlot) -> Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
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
        slots.release(slot.id);
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

    fn create_irqfd_msi(&self) -> Result<Arc<dyn super::IrqfdMsi>> {
        Ok(Arc::new(irqfd::KvmIrqfdMsi::new(&self.irqfd)?))
    }

    fn create_irqfd_spi(&self, spi: u32) -> Result<Arc<dyn super::IrqfdLevel>> {
        let nr_irqs = match &*self.gic.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(gic) => gic.nr_irqs,
            None => {
                return Err(HypervisorError::Guest(format!(
                    "a level irqfd for SPI {spi} needs the GIC, which is not created yet"
                )))
            }
        };
        // KVM checks this only when the line is asserted, and then drops the interrupt.
        if spi >= nr_irqs.saturating_sub(32) {
            return Err(HypervisorError::Guest(format!(
                "SPI {spi} (INTID {}) is beyond the GIC's {nr_irqs} interrupt lines",
                spi + 32
            )));
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
