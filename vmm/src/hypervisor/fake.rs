//! A scripted in-process hypervisor for unit tests of the VM lifecycle on any host.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch::regs::BootRegs;

use super::{
    GicSpec, GuestError, Hypervisor, MemoryKind, MemorySlot, MmioHandler, MsiController, Result,
    Vcpu, VcpuExit, VcpuKick, Vm, VmSpec,
};

/// One thing a fake vCPU does per `run`.
#[derive(Debug, Clone)]
pub enum Step {
    /// A guest store.
    Write(u64, Vec<u8>),
    /// A guest load of this many bytes; the result is recorded.
    Read(u64, usize),
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// A hypervisor failure.
    Fail,
    /// A panic on the vCPU thread (a bug in the VMM).
    Panic,
}

/// What the fake saw, for assertions.
#[derive(Debug, Default)]
pub struct Observed {
    /// Loads and their results.
    pub reads: Vec<(u64, Vec<u8>)>,
    /// Boot registers given to vCPU 0.
    pub boot_regs: Option<BootRegs>,
    /// Guest memory at the boot PC (kernel header) and at x0 (device tree), first 64 bytes.
    pub kernel_header: Vec<u8>,
    /// First bytes of the device tree.
    pub fdt_header: Vec<u8>,
    /// The whole device tree (its header's `totalsize` bytes).
    pub fdt: Vec<u8>,
    /// SPI levels set, in order.
    pub spi_levels: Vec<(u32, bool)>,
    /// Whether the GIC was created.
    pub gic: Option<GicSpec>,
    /// vCPU and GIC resets (reboots in place).
    pub vcpu_resets: usize,
    /// GIC resets.
    pub gic_resets: usize,
    /// Resets in the order they came: "gic", "vcpu N".
    pub reset_order: Vec<String>,
}

/// A hypervisor whose vCPUs follow scripts.
#[derive(Debug, Default)]
pub struct FakeHypervisor {
    /// Per vCPU index, its steps; after the last step a vCPU idles until kicked.
    pub scripts: Mutex<HashMap<u32, Vec<Step>>>,
    /// Shared observations.
    pub observed: Arc<Mutex<Observed>>,
    /// The MSI controller the VM reports; `None` is an ITS, like KVM.
    pub msi: Option<MsiController>,
    /// What the vCPUs report as ID_AA64MMFR2_EL1 (0: no E0PD, like the rig's Neoverse N1).
    pub id_aa64mmfr2: u64,
}

impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn max_ipa_bits(&self) -> u32 {
        40
    }
    fn create_vm(&self, _spec: &VmSpec) -> Result<Arc<dyn Vm>> {
        let scripts = std::mem::take(&mut *self.scripts.lock().unwrap());
        Ok(Arc::new(FakeVm {
            scripts: Mutex::new(scripts),
            observed: self.observed.clone(),
            ram: Mutex::new(None),
            msi: self.msi.unwrap_or(MsiController::Its),
            id_aa64mmfr2: self.id_aa64mmfr2,
        }))
    }
}

#[derive(Debug)]
struct FakeVm {
    scripts: Mutex<HashMap<u32, Vec<Step>>>,
    observed: Arc<Mutex<Observed>>,
    /// Guest base, size and host address of RAM.
    ram: Mutex<Option<(u64, u64, usize)>>,
    msi: MsiController,
    id_aa64mmfr2: u64,
}

impl Vm for FakeVm {
    unsafe fn map_kind(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        _kind: MemoryKind,
    ) -> Result<MemorySlot> {
        *self.ram.lock().unwrap() = Some((guest_addr, size, host_addr as usize));
        Ok(MemorySlot { id: 0, guest_addr, size })
    }
    fn unmap_memory(&self, _slot: MemorySlot) -> Result<()> {
        Ok(())
    }
    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>> {
        let mut steps = self.scripts.lock().unwrap().remove(&index).unwrap_or_default();
        steps.reverse();
        Ok(Box::new(FakeVcpu {
            index,
            steps,
            kicked: Arc::new(AtomicBool::new(false)),
            observed: self.observed.clone(),
            ram: self.ram.lock().unwrap().unwrap(),
            boot: None,
            id_aa64mmfr2: self.id_aa64mmfr2,
        }))
    }
    fn create_gic(&self, spec: &GicSpec) -> Result<()> {
        self.observed.lock().unwrap().gic = Some(*spec);
        Ok(())
    }
    fn msi_controller(&self) -> MsiController {
        self.msi
    }
    fn reset_gic(&self) -> Result<()> {
        let mut observed = self.observed.lock().unwrap();
        observed.gic_resets += 1;
        observed.reset_order.push("gic".into());
        Ok(())
    }
    fn set_spi_level(&self, spi: u32, asserted: bool) -> Result<()> {
        self.observed.lock().unwrap().spi_levels.push((spi, asserted));
        Ok(())
    }
    fn signal_msi(&self, _address: u64, _data: u32, _devid: u32) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct FakeKick(Arc<AtomicBool>);

impl VcpuKick for FakeKick {
    fn kick(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct FakeVcpu {
    index: u32,
    steps: Vec<Step>,
    kicked: Arc<AtomicBool>,
    observed: Arc<Mutex<Observed>>,
    ram: (u64, u64, usize),
    boot: Option<BootRegs>,
    id_aa64mmfr2: u64,
}

impl FakeVcpu {
    fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let (base, size, host) = self.ram;
        assert!(addr >= base && addr + len as u64 <= base + size, "{addr:#x} outside RAM");
        // SAFETY: the range is inside the RAM mapping, which outlives the vCPUs.
        unsafe { std::slice::from_raw_parts((host + (addr - base) as usize) as *const u8, len) }
            .to_vec()
    }
}

impl Vcpu for FakeVcpu {
    fn mpidr(&self) -> Result<u64> {
        Ok(0x8000_0000 | u64::from(self.index))
    }
    fn id_aa64mmfr2(&self) -> Result<u64> {
        Ok(self.id_aa64mmfr2)
    }
    fn pc(&self) -> Result<u64> {
        Ok(self.boot.map_or(0, |b| b.pc))
    }
    fn set_boot_regs(&mut self, regs: &BootRegs) -> Result<()> {
        self.boot = Some(*regs);
        let mut observed = self.observed.lock().unwrap();
        observed.boot_regs = Some(*regs);
        observed.kernel_header = self.guest_bytes(regs.pc, 64);
        observed.fdt_header = self.guest_bytes(regs.x0, 8);
        let total = u32::from_be_bytes(observed.fdt_header[4..8].try_into().unwrap());
        observed.fdt = self.guest_bytes(regs.x0, total as usize);
        Ok(())
    }
    fn kicker(&self) -> Result<Arc<dyn VcpuKick>> {
        Ok(Arc::new(FakeKick(self.kicked.clone())))
    }
    fn reset(&mut self) -> Result<()> {
        let mut observed = self.observed.lock().unwrap();
        observed.vcpu_resets += 1;
        observed.reset_order.push(format!("vcpu {}", self.index));
        Ok(())
    }
    fn run(&mut self, mmio: &dyn MmioHandler) -> Result<VcpuExit> {
        match self.steps.pop() {
            Some(Step::Write(addr, data)) => {
                mmio.mmio_write(addr, &data);
                Ok(VcpuExit::Handled)
            }
            Some(Step::Read(addr, len)) => {
                let mut data = vec![0; len];
                mmio.mmio_read(addr, &mut data);
                self.observed.lock().unwrap().reads.push((addr, data));
                Ok(VcpuExit::Handled)
            }
            Some(Step::PowerOff) => Ok(VcpuExit::PowerOff),
            Some(Step::Reset) => Ok(VcpuExit::Reset),
            Some(Step::Fail) => {
                Err(GuestError::UnhandledExit { exit: "scripted failure".into() }.into())
            }
            Some(Step::Panic) => panic!("scripted panic on vCPU {}", self.index),
            None => {
                while !self.kicked.swap(false, Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(VcpuExit::Interrupted)
            }
        }
    }
}
