//! `KVM_IOEVENTFD`: KVM signals a virtio queue's doorbell eventfd itself when the guest writes
//! to the queue's notify address, so a notify costs no exit to the VMM.

use devices::virtio::QueueEvent;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use log::debug;

use crate::hypervisor::{HypervisorError, Result};

/// Registers `event` at MMIO address `addr`. No data match: each queue has its own notify
/// address, and a zero length makes KVM match a write of any width there.
pub(super) fn register(vm: &VmFd, event: &QueueEvent, addr: u64) -> Result<()> {
    vm.register_ioevent(event.eventfd(), &IoEventAddress::Mmio(addr), NoDatamatch)
        .map_err(|e| HypervisorError::call(format!("KVM_IOEVENTFD at {addr:#x}"), e))?;
    debug!("KVM ioeventfd registered at {addr:#x}");
    Ok(())
}

/// Removes the registration [`register`] made of `event` at `addr` (same address, length
/// and flags, as KVM matches them).
pub(super) fn unregister(vm: &VmFd, event: &QueueEvent, addr: u64) -> Result<()> {
    vm.unregister_ioevent(event.eventfd(), &IoEventAddress::Mmio(addr), NoDatamatch)
        .map_err(|e| HypervisorError::call(format!("KVM_IOEVENTFD deassign at {addr:#x}"), e))?;
    debug!("KVM ioeventfd removed at {addr:#x}");
    Ok(())
}
