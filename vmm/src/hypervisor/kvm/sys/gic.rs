//! The in-kernel GICv3 and its ITS.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVM_DEV_ARM_ITS_CTRL_RESET,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_ITS_ADDR_TYPE, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};
use log::info;

use crate::hypervisor::{GicSpec, HypervisorError, Result};

/// The GIC device fds; KVM keeps the devices alive while they are open.
#[derive(Debug)]
pub struct KvmGic {
    _gic: DeviceFd,
    its: Option<DeviceFd>,
    /// Interrupt lines (INTIDs) the distributor implements, including the 32 private ones.
    pub nr_irqs: u32,
}

fn create_device(vm: &VmFd, type_: u32, name: &'static str) -> Result<DeviceFd> {
    let mut device = kvm_create_device { type_, fd: 0, flags: 0 };
    vm.create_device(&mut device)
        .map_err(|e| HypervisorError::KvmNoGic { device: name, source: e.into() })
}

fn set_attr(device: &DeviceFd, group: u32, attr: u32, addr: u64, what: &str) -> Result<()> {
    let attr = kvm_device_attr { flags: 0, group, attr: u64::from(attr), addr };
    device.set_device_attr(&attr).map_err(|e| HypervisorError::call(what, e))
}

impl KvmGic {
    /// Creates and initializes the GICv3 (and ITS) after all vCPUs exist.
    pub fn new(vm: &VmFd, spec: &GicSpec) -> Result<Self> {
        let gic = create_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, "GICv3")?;
        let dist = spec.dist_base;
        let redist = spec.redist_base;
        let nr_irqs = spec.nr_irqs;
        // The attribute's `addr` points at the value; the values live until the calls return.
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_DIST,
            &dist as *const u64 as u64,
            "GICv3 distributor address",
        )?;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_REDIST,
            &redist as *const u64 as u64,
            "GICv3 redistributor address",
        )?;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
            "GICv3 interrupt count",
        )?;
        set_attr(&gic, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, 0, "GICv3 init")?;
        let its = match spec.its_base {
            Some(base) => {
                let its =
                    create_device(vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS, "GICv3 ITS")?;
                set_attr(
                    &its,
                    KVM_DEV_ARM_VGIC_GRP_ADDR,
                    KVM_VGIC_ITS_ADDR_TYPE,
                    &base as *const u64 as u64,
                    "ITS address",
                )?;
                set_attr(
                    &its,
                    KVM_DEV_ARM_VGIC_GRP_CTRL,
                    KVM_DEV_ARM_VGIC_CTRL_INIT,
                    0,
                    "ITS init",
                )?;
                Some(its)
            }
            None => None,
        };
        info!(
            "GICv3: distributor {dist:#x}, redistributors {redist:#x}+{:#x}, {nr_irqs} IRQs, ITS {}",
            spec.redist_size,
            spec.its_base.map_or("none".to_string(), |b| format!("{b:#x}"))
        );
        Ok(Self { _gic: gic, its, nr_irqs })
    }

    /// For a reboot in place: resets the ITS (its tables, command queue and translation
    /// caches go; KVM_DEV_ARM_ITS_CTRL_RESET). The distributor and redistributors are left
    /// to the next boot's kernel, which puts them in order itself as it starts (Linux
    /// disables the distributor, clears every enable and active bit and disables the
    /// redistributors' LPIs, which KVM allows since 5.x); the devices' lines are low after
    /// their reset, so no stale level is pending.
    pub fn reset(&self) -> Result<()> {
        match &self.its {
            Some(its) => {
                set_attr(its, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_ITS_CTRL_RESET, 0, "ITS reset")
            }
            None => Ok(()),
        }
    }
}
