//! The hypervisor abstraction: a [`Hypervisor`] makes a [`Vm`], a `Vm` makes [`Vcpu`]s.
//!
//! Backends differ in how much they do for us. KVM decodes MMIO data aborts and runs PSCI in
//! the kernel; Hypervisor.framework hands back raw exception syndromes and HVC/SMC calls that
//! the backend must decode (with `arch`'s portable code) and complete itself. So the contract
//! is: a backend's [`Vcpu::run`] completes MMIO accesses in place through the [`MmioHandler`]
//! it is given, and returns only the events the VMM itself must act on ([`VcpuExit`]).

// Each backend is a portable front (its rules and bookkeeping, unit-tested on any host) with
// its FFI behind it in a `sys` module compiled only on its host.
mod error;
#[cfg(test)]
pub mod fake;
pub mod hvf;
pub mod kvm;
pub mod slots;

pub use error::{GuestError, HypervisorError, InstructionWord};

use std::sync::Arc;

use arch::regs::BootRegs;
use devices::virtio::QueueEvent;
use slots::MemoryKind;

/// Result type of hypervisor operations.
pub type Result<T> = std::result::Result<T, HypervisorError>;

/// What a VM needs from the host before it is created.
#[derive(Debug, Clone, Copy)]
pub struct VmSpec {
    /// Guest physical address size, in bits.
    pub ipa_bits: u32,
    /// Run the vCPUs with x86-style total store ordering (`--tso`; Hypervisor.framework only).
    pub tso: bool,
}

/// A host hypervisor.
pub trait Hypervisor {
    /// A short name for logs ("KVM", "Hypervisor.framework").
    fn name(&self) -> &'static str;
    /// The largest guest physical address size the host supports, in bits.
    fn max_ipa_bits(&self) -> u32;
    /// Creates an empty VM.
    fn create_vm(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>>;
}

/// Where the interrupt controller's frames live in guest physical memory.
#[derive(Debug, Clone, Copy)]
pub struct GicSpec {
    /// Distributor base.
    pub dist_base: u64,
    /// First redistributor; one per vCPU follows.
    pub redist_base: u64,
    /// Size of all redistributors.
    pub redist_size: u64,
    /// ITS base, where the backend has one.
    pub its_base: Option<u64>,
    /// Interrupt lines (INTIDs) the distributor implements, including the 32 private ones.
    pub nr_irqs: u32,
}

/// Where PCI devices' MSIs go; the device tree must describe the same controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiController {
    /// A GICv3 ITS at `layout::GIC_ITS_BASE` (KVM): an MSI carries the requester id as its
    /// device id, and the guest maps it to an LPI.
    Its,
    /// A GICv2m-style MSI frame (Hypervisor.framework): a write of an INTID to the frame's
    /// `SETSPI_NSR` register (base + 0x40) raises that SPI; no device id.
    SpiFrame {
        /// Frame base address.
        base: u64,
        /// First INTID (not SPI number) the frame raises (`arm,msi-base-spi`).
        spi_base: u32,
        /// How many INTIDs it raises (`arm,msi-num-spis`).
        spi_count: u32,
    },
}

/// A VM: guest memory, vCPUs and the interrupt controller.
pub trait Vm: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` into the guest at `guest_addr` as
    /// `kind`: RAM (read, write, execute) or device memory (a passed-through BAR: read and
    /// write, never execute; Hypervisor.framework panics the host when the guest executes
    /// from device memory mapped executable).
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must stay mapped and valid until the slot is unmapped
    /// or the VM is gone.
    unsafe fn map_kind(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        kind: MemoryKind,
    ) -> Result<MemorySlot>;
    /// Maps guest RAM ([`Vm::map_kind`] with [`MemoryKind::Ram`]).
    ///
    /// # Safety
    /// As for [`Vm::map_kind`].
    unsafe fn map_memory(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
    ) -> Result<MemorySlot> {
        // SAFETY: the caller upholds map_kind's contract, which is this function's.
        unsafe { self.map_kind(guest_addr, size, host_addr, MemoryKind::Ram) }
    }
    /// Maps device memory, a passed-through BAR ([`Vm::map_kind`] with [`MemoryKind::Device`]).
    ///
    /// # Safety
    /// As for [`Vm::map_kind`].
    unsafe fn map_device_memory(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
    ) -> Result<MemorySlot> {
        // SAFETY: the caller upholds map_kind's contract, which is this function's.
        unsafe { self.map_kind(guest_addr, size, host_addr, MemoryKind::Device) }
    }
    /// Whether [`MemoryKind::ReadOnly`] mappings work: guest reads come from the memory and
    /// writes exit as MMIO.
    fn readonly_memory(&self) -> bool {
        false
    }
    /// Removes a mapping made by [`Vm::map_memory`] or [`Vm::map_device_memory`]; guest
    /// accesses there exit as MMIO again.
    fn unmap_memory(&self, slot: MemorySlot) -> Result<()>;
    /// Creates vCPU `index`, on the thread that will run it. vCPU 0 boots; the others wait for
    /// PSCI CPU_ON.
    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>>;
    /// Creates the in-kernel GICv3 once all vCPUs exist (KVM). A backend whose GIC must exist
    /// before any vCPU (Hypervisor.framework) creates it with the VM from the fixed layout and
    /// checks `spec` against it here.
    fn create_gic(&self, spec: &GicSpec) -> Result<()>;
    /// Puts the interrupt controller back to its boot state for a reboot in place, with the
    /// vCPUs stopped, before any [`Vcpu::reset`]; a backend that keeps VM-wide vCPU state
    /// itself (Hypervisor.framework: the PSCI power states) resets that here too. A backend
    /// that cannot says [`HypervisorError::NoRebootInPlace`] (the default), and the reboot
    /// ends the VM instead.
    fn reset_gic(&self) -> Result<()> {
        Err(HypervisorError::NoRebootInPlace { backend: "this hypervisor" })
    }
    /// Where PCI MSIs go: decides [`GicSpec::its_base`] and the device tree's MSI controller.
    fn msi_controller(&self) -> MsiController;
    /// Drives shared peripheral interrupt `spi` (0-based SPI number, INTID 32 + spi).
    fn set_spi_level(&self, spi: u32, asserted: bool) -> Result<()>;
    /// Injects an MSI: a write of `data` to doorbell `address` by PCI requester `devid`
    /// (the ITS device id, through the host bridge's `msi-map`; unused by an MSI frame, where
    /// `data` is the INTID).
    fn signal_msi(&self, address: u64, data: u32, devid: u32) -> Result<()>;
    /// Lets the hypervisor ring `event` itself when the guest writes, with any width and
    /// value, to guest physical `addr` (KVM ioeventfd: no exit to the VMM). For virtio queue
    /// notify addresses, each queue having its own. A backend without this (the default)
    /// returns [`HypervisorError::NoIoeventfd`]; the write then traps and the device rings
    /// the same event.
    fn register_ioevent(&self, event: &QueueEvent, addr: u64) -> Result<()> {
        let _ = (event, addr);
        Err(HypervisorError::NoIoeventfd)
    }
    /// Undoes [`Vm::register_ioevent`] of `event` at `addr`; writes there trap again.
    fn unregister_ioevent(&self, event: &QueueEvent, addr: u64) -> Result<()> {
        let _ = (event, addr);
        Err(HypervisorError::NoIoeventfd)
    }
    /// An MSI the host raises by signalling an eventfd, injected by the hypervisor without a
    /// trip through the VMM (KVM irqfd with an MSI route). For passed-through devices, and
    /// for the MSI-X vectors of Aperture's virtio devices.
    #[cfg(target_os = "linux")]
    fn create_irqfd_msi(&self) -> Result<Arc<dyn IrqfdMsi>> {
        Err(HypervisorError::NoIrqfd)
    }
    /// A level-triggered interrupt line the host drives through eventfds, wired to shared
    /// peripheral interrupt `spi` (0-based, INTID 32 + spi) by the hypervisor without a trip
    /// through the VMM (KVM irqfd with a resample eventfd). For passed-through devices' INTx.
    /// Created disconnected; the GIC must exist ([`Vm::create_gic`]), and an SPI has at most
    /// one such line at a time. The guest must see the SPI as level-triggered.
    #[cfg(target_os = "linux")]
    fn create_irqfd_spi(&self, spi: u32) -> Result<Arc<dyn IrqfdLevel>> {
        let _ = spi;
        Err(HypervisorError::NoIrqfd)
    }
}

/// A guest memory mapping made by [`Vm::map_memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySlot {
    /// Backend-specific slot number.
    pub id: u32,
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// A guest MSI route: doorbell address, payload and requester (ITS device) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRoute {
    /// Doorbell address.
    pub address: u64,
    /// Payload.
    pub data: u32,
    /// PCI requester id (ITS device id).
    pub devid: u32,
}

/// An eventfd wired to a guest MSI.
#[cfg(target_os = "linux")]
pub trait IrqfdMsi: Send + Sync + std::fmt::Debug {
    /// The eventfd a host device (VFIO) signals; valid while `self` lives.
    fn eventfd(&self) -> std::os::fd::RawFd;
    /// Points the eventfd at `route`, or disconnects it (`None`: masked or not programmed).
    /// Signals that arrive while disconnected stay counted in the eventfd and are delivered
    /// when it is connected again, which is MSI-X pending-bit behaviour.
    fn set_route(&self, route: Option<MsiRoute>) -> Result<()>;
    /// Signals the eventfd from the VMM itself (an emulated device raising its vector).
    fn signal(&self) -> Result<()>;
}

/// A level-triggered guest interrupt (a GIC SPI) driven by eventfds: the host device asserts
/// it by signalling [`IrqfdLevel::eventfd`]; the hypervisor deasserts it when the guest EOIs
/// it, then signals [`IrqfdLevel::resample_eventfd`] so the host re-arms the device's line.
/// This is VFIO's INTx protocol: VFIO masks the host interrupt when it fires and signals the
/// first eventfd (its trigger); give it the second as its unmask eventfd. Dropping it
/// disconnects the line (deasserting it) and frees its route.
#[cfg(target_os = "linux")]
pub trait IrqfdLevel: Send + Sync + std::fmt::Debug {
    /// The eventfd the host device (VFIO) signals to assert the line; valid while `self`
    /// lives.
    fn eventfd(&self) -> std::os::fd::RawFd;
    /// The eventfd the hypervisor signals after the guest EOIs the interrupt and the line
    /// is deasserted (VFIO unmasks the host interrupt then); valid while `self` lives.
    fn resample_eventfd(&self) -> std::os::fd::RawFd;
    /// Connects (`true`) or disconnects the line; doing what is already done does nothing.
    /// Signals that arrive while disconnected stay counted in the eventfd and assert the
    /// line when it is connected again. Disconnecting deasserts the line and signals the
    /// resample eventfd once, so a host interrupt masked while waiting for an EOI that will
    /// not come is re-armed (if the device still asserts, VFIO signals again and that is
    /// delivered on reconnection).
    fn set_enabled(&self, enabled: bool) -> Result<()>;
}

/// Completes guest MMIO accesses; implemented by the device bus.
pub trait MmioHandler: Sync {
    /// A guest load of `data.len()` bytes at guest physical `addr`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A guest store of `data` at guest physical `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuExit {
    /// Something was handled in place (MMIO, a benign exit): call `run` again.
    Handled,
    /// The run was interrupted by [`VcpuKick::kick`] or a signal.
    Interrupted,
    /// The guest asked to power off (PSCI SYSTEM_OFF).
    PowerOff,
    /// The guest asked to reset (PSCI SYSTEM_RESET), e.g. after a panic with `panic=-1`.
    Reset,
}

/// Interrupts a running vCPU from another thread.
pub trait VcpuKick: Send + Sync + std::fmt::Debug {
    /// Makes the vCPU's current or next `run` return [`VcpuExit::Interrupted`] soon.
    fn kick(&self);
}

/// A virtual CPU, owned by one thread.
pub trait Vcpu: Send {
    /// The vCPU's MPIDR_EL1 (its affinity, which the device tree must match).
    fn mpidr(&self) -> Result<u64>;
    /// The guest's ID_AA64MMFR2_EL1 (whether a KASLR seed costs it KPTI, `--kaslr auto`).
    fn id_aa64mmfr2(&self) -> Result<u64>;
    /// The program counter, for reports about a stuck or failed guest.
    fn pc(&self) -> Result<u64>;
    /// Sets the registers the boot CPU starts with.
    fn set_boot_regs(&mut self, regs: &BootRegs) -> Result<()>;
    /// Puts the vCPU back to its power-on state for a reboot in place (registers, system
    /// registers, timer; secondaries powered off), on its own thread.
    fn reset(&mut self) -> Result<()> {
        Err(HypervisorError::NoRebootInPlace { backend: "this hypervisor" })
    }
    /// Returns a handle that interrupts this vCPU; call it on the thread that will run it.
    fn kicker(&self) -> Result<Arc<dyn VcpuKick>>;
    /// Runs the guest until something needs the VMM.
    fn run(&mut self, mmio: &dyn MmioHandler) -> Result<VcpuExit>;
}

/// The hypervisor of this host, or why there is none.
pub fn host_hypervisor() -> Result<Box<dyn Hypervisor>> {
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    {
        Ok(Box::new(kvm::Kvm::open()?))
    }
    #[cfg(all(target_os = "macos", target_arch = "aarch64"))]
    {
        Ok(Box::new(hvf::Hvf::open()?))
    }
    #[cfg(not(any(
        all(target_os = "linux", target_arch = "aarch64"),
        all(target_os = "macos", target_arch = "aarch64")
    )))]
    {
        Err(HypervisorError::NoBackend { arch: std::env::consts::ARCH, os: std::env::consts::OS })
    }
}
