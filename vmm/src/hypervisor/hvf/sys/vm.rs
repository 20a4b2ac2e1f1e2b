//! A Hypervisor.framework VM: guest memory, its GIC, and the state its vCPUs share.

use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};

use applevisor_sys::{
    hv_vm_config_create, hv_vm_config_set_ipa_size, hv_vm_create, hv_vm_destroy, hv_vm_map,
    hv_vm_unmap, os_release, HV_MEMORY_EXEC, HV_MEMORY_READ, HV_MEMORY_WRITE,
};
use log::{debug, info, warn};

use super::gic_api::GicApi;
use super::vcpu::HvfVcpu;
use crate::hypervisor::hvf::gic::{self, GicLimits, GicPlan};
use crate::hypervisor::hvf::power::VcpuPower;
use crate::hypervisor::hvf::status;
use crate::hypervisor::slots::{Mapping, MemoryKind, SlotTable};
use crate::hypervisor::{GicSpec, HypervisorError, MemorySlot, MsiController, Result, Vcpu, Vm};

/// What the VM and its vCPUs share. Dropped last (vCPUs and kickers hold it), which destroys
/// the VM.
#[derive(Debug)]
pub struct Shared {
    /// Guest physical address size, for the vCPUs' PARange.
    pub ipa_bits: u32,
    /// Whether the vCPUs run with total store ordering (`--tso`).
    pub tso: bool,
    /// The GIC functions.
    pub gic: GicApi,
    /// Where the GIC was created.
    pub plan: GicPlan,
    /// PSCI power states and where vCPU threads wait.
    pub power: VcpuPower,
    /// Guest memory mappings.
    pub slots: Mutex<SlotTable>,
}

impl Shared {
    /// The mappings, locked.
    pub fn slots(&self) -> MutexGuard<'_, SlotTable> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: every vCPU is destroyed (each holds this struct), and nothing maps or
        // injects into the VM any more.
        let ret = unsafe { hv_vm_destroy() };
        if let Err(e) = status::check(ret, || "hv_vm_destroy".into()) {
            warn!("{e}");
        }
    }
}

/// A Hypervisor.framework VM (one per process).
#[derive(Debug)]
pub struct HvfVm {
    shared: Arc<Shared>,
}

/// Destroys a VM whose setup failed halfway.
struct VmGuard;

impl Drop for VmGuard {
    fn drop(&mut self) {
        // SAFETY: the VM was created by this process and has no vCPUs yet.
        unsafe { hv_vm_destroy() };
    }
}

/// Runs a `hv_gic_get_*` size query.
fn size(query: unsafe extern "C" fn(*mut usize) -> i32, what: &str) -> Result<u64> {
    let mut value = 0usize;
    // SAFETY: `value` is a valid out-pointer for the query, a resolved hv_gic_get_* function.
    let ret = unsafe { query(&mut value) };
    status::check(ret, || format!("hv_gic_get_{what}"))?;
    Ok(value as u64)
}

fn gic_limits(api: &GicApi) -> Result<GicLimits> {
    let (mut spi_base, mut spi_count) = (0u32, 0u32);
    // SAFETY: valid out-pointers.
    let ret = unsafe { (api.spi_interrupt_range)(&mut spi_base, &mut spi_count) };
    status::check(ret, || "hv_gic_get_spi_interrupt_range".into())?;
    Ok(GicLimits {
        dist_size: size(api.distributor_size, "distributor_size")?,
        dist_align: size(api.distributor_base_alignment, "distributor_base_alignment")?,
        redist_region_size: size(api.redistributor_region_size, "redistributor_region_size")?,
        redist_align: size(api.redistributor_base_alignment, "redistributor_base_alignment")?,
        msi_size: size(api.msi_region_size, "msi_region_size")?,
        msi_align: size(api.msi_region_base_alignment, "msi_region_base_alignment")?,
        spi_base,
        spi_count,
    })
}

/// Creates the GIC: after the VM, before any vCPU, which is why it is made here from the
/// fixed layout rather than in [`Vm::create_gic`].
fn create_gic(api: &GicApi) -> Result<GicPlan> {
    let limits = gic_limits(api)?;
    debug!("Hypervisor.framework GIC: {limits:x?}");
    let plan = gic::plan(&limits)?;
    // SAFETY: creates a configuration object; released below.
    let config = unsafe { (api.config_create)() };
    if config.is_null() {
        return Err(HypervisorError::call(
            "hv_gic_config_create",
            std::io::Error::other("returned no configuration"),
        ));
    }
    // SAFETY: `config` is a live configuration object for all of these calls.
    let result = unsafe {
        status::check((api.config_set_distributor_base)(config, plan.dist_base), || {
            "hv_gic_config_set_distributor_base".into()
        })
        .and_then(|()| {
            status::check((api.config_set_redistributor_base)(config, plan.redist_base), || {
                "hv_gic_config_set_redistributor_base".into()
            })
        })
        .and_then(|()| {
            status::check((api.config_set_msi_region_base)(config, plan.msi_base), || {
                "hv_gic_config_set_msi_region_base".into()
            })
        })
        .and_then(|()| {
            let ret =
                (api.config_set_msi_interrupt_range)(config, plan.msi_first_intid, plan.msi_count);
            status::check(ret, || "hv_gic_config_set_msi_interrupt_range".into())
        })
        .and_then(|()| status::check((api.create)(config), || "hv_gic_create".into()))
    };
    // SAFETY: the object came from hv_gic_config_create and is not used again.
    unsafe { os_release(config) };
    result?;
    info!(
        "GICv3 (Hypervisor.framework): distributor {:#x}, redistributors {:#x}+{:#x}, MSI frame \
         {:#x} for INTIDs {}..{}",
        plan.dist_base,
        plan.redist_base,
        plan.redist_region_size,
        plan.msi_base,
        plan.msi_first_intid,
        plan.msi_first_intid + plan.msi_count
    );
    Ok(plan)
}

impl HvfVm {
    /// Creates the process's VM with an `ipa_bits` guest physical address space, and its GIC;
    /// its vCPUs will run with total store ordering if `tso`.
    pub fn create(gic: GicApi, ipa_bits: u32, tso: bool) -> Result<Self> {
        // SAFETY: creates a configuration object; released below.
        let config = unsafe { hv_vm_config_create() };
        if config.is_null() {
            return Err(HypervisorError::call(
                "hv_vm_config_create",
                std::io::Error::other("returned no configuration"),
            ));
        }
        // SAFETY: `config` is live for both calls.
        let ret = unsafe {
            let ret = hv_vm_config_set_ipa_size(config, ipa_bits);
            if ret == status::HV_SUCCESS {
                hv_vm_create(config)
            } else {
                ret
            }
        };
        // SAFETY: the object came from hv_vm_config_create and is not used again.
        unsafe { os_release(config) };
        if ret != status::HV_SUCCESS {
            return Err(HypervisorError::HvfVmCreate { status: ret });
        }
        let guard = VmGuard;
        let plan = create_gic(&gic)?;
        std::mem::forget(guard);
        info!("Hypervisor.framework VM created with a {ipa_bits}-bit guest physical address space");
        let slots = SlotTable::new("Hypervisor.framework", super::super::GRANULE, u32::MAX);
        let shared = Shared {
            ipa_bits,
            tso,
            gic,
            plan,
            power: VcpuPower::default(),
            slots: Mutex::new(slots),
        };
        Ok(Self { shared: Arc::new(shared) })
    }
}

impl Vm for HvfVm {
    unsafe fn map_kind(
        &self,
        guest_addr: u64,
        size: u64,
        host_addr: *mut u8,
        kind: MemoryKind,
    ) -> Result<MemorySlot> {
        let what = || format!("mapping guest {guest_addr:#x}+{size:#x} ({kind:?})");
        let host = host_addr as usize;
        let len = usize::try_from(size).map_err(|_| {
            HypervisorError::call(what(), std::io::Error::other("larger than the address space"))
        })?;
        let mut slots = self.shared.slots();
        let id = slots
            .insert(Mapping { guest: guest_addr, size, host, kind })
            .map_err(|source| HypervisorError::Mapping { guest_addr, size, source })?;
        // EXEC on device memory panics the host: BARs are never executable.
        let flags = match kind {
            MemoryKind::Ram => HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC,
            MemoryKind::Device => HV_MEMORY_READ | HV_MEMORY_WRITE,
            // Not offered (readonly_memory is false): a write would fault as a data abort
            // the vCPU loop has not been checked against.
            MemoryKind::ReadOnly => HV_MEMORY_READ,
        };
        // SAFETY: the caller keeps the host range mapped while the slot exists; the range is
        // granule-aligned and overlaps no other mapping.
        let ret = unsafe { hv_vm_map(host_addr.cast::<c_void>(), guest_addr, len, flags) };
        if let Err(e) = status::check(ret, || format!("hv_vm_map {}", what())) {
            let _ = slots.remove(&MemorySlot { id, guest_addr, size });
            return Err(e);
        }
        debug!("slot {id}: guest {guest_addr:#x}+{size:#x} at host {host_addr:p} ({kind:?})");
        Ok(MemorySlot { id, guest_addr, size })
    }

    fn unmap_memory(&self, slot: MemorySlot) -> Result<()> {
        let mut slots = self.shared.slots();
        slots.find(&slot).map_err(|e| HypervisorError::unmapping(&slot, e))?;
        let len = usize::try_from(slot.size).unwrap_or(usize::MAX);
        // SAFETY: removes a mapping this VM made; the guest loses access to the range.
        let ret = unsafe { hv_vm_unmap(slot.guest_addr, len) };
        status::check(ret, || format!("hv_vm_unmap {:#x}+{:#x}", slot.guest_addr, slot.size))?;
        let _ = slots.remove(&slot);
        debug!("slot {} removed ({:#x}+{:#x})", slot.id, slot.guest_addr, slot.size);
        Ok(())
    }

    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>> {
        Ok(Box::new(HvfVcpu::new(self.shared.clone(), index)?))
    }

    fn create_gic(&self, spec: &GicSpec) -> Result<()> {
        // The GIC exists since create_vm; check that it is the one the VMM describes.
        Ok(gic::check_spec(&self.shared.plan, spec)?)
    }

    fn reset_gic(&self) -> Result<()> {
        // The VM-wide half of a reboot, with every vCPU out of the guest: PSCI power states
        // back to power-on (before any vCPU thread re-creates its vCPU, so no CPU_ON of the
        // new boot can be undone), then the in-kernel GIC. Nothing of the GIC is kept in
        // userspace (`GicPlan` is the fixed layout; the MSI frame is the framework's), so
        // hv_gic_reset is all of it. The devices' lines are low after their reset.
        self.shared.power.power_on_reset();
        // SAFETY: no arguments; the GIC exists and no vCPU is in the guest.
        let ret = unsafe { (self.shared.gic.reset)() };
        status::check(ret, || "hv_gic_reset".into())
    }

    fn msi_controller(&self) -> MsiController {
        let plan = &self.shared.plan;
        MsiController::SpiFrame {
            base: plan.msi_base,
            spi_base: plan.msi_first_intid,
            spi_count: plan.msi_count,
        }
    }

    fn set_spi_level(&self, spi: u32, asserted: bool) -> Result<()> {
        let intid = 32 + spi;
        // SAFETY: plain values; the GIC exists.
        let ret = unsafe { (self.shared.gic.set_spi)(intid, asserted) };
        status::check(ret, || format!("hv_gic_set_spi for SPI {spi} (INTID {intid})"))?;
        if asserted {
            self.shared.power.interrupt_raised();
        }
        Ok(())
    }

    fn signal_msi(&self, address: u64, data: u32, _devid: u32) -> Result<()> {
        // The MSI frame needs no device id: `data` is the INTID.
        // SAFETY: plain values; the GIC exists.
        let ret = unsafe { (self.shared.gic.send_msi)(address, data) };
        status::check(ret, || format!("hv_gic_send_msi to {address:#x} for INTID {data}"))?;
        self.shared.power.interrupt_raised();
        Ok(())
    }
}
