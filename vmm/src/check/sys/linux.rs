//! Asks the host's KVM (arm64) what Aperture uses: the IPA size, the in-kernel GICv3 and ITS,
//! irqfd and MSI injection. The devices are only test-created (`KVM_CREATE_DEVICE_TEST`) on a
//! throwaway VM, which goes when this returns.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, KVMIO, KVM_CREATE_DEVICE_TEST,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_iowr_nr;

use crate::check::linux::{KvmCaps, KvmProbe};

// kvm-ioctls' `create_device` wraps the returned fd in a file, but a test creation returns
// none (the field stays 0, which would close stdin): the ioctl is issued directly.
ioctl_iowr_nr!(KVM_CREATE_DEVICE, KVMIO, 0xe0, kvm_create_device);

/// Whether KVM could create a device of `type_` in `vm`, without creating it.
fn can_create(vm: &VmFd, type_: u32) -> bool {
    let mut device = kvm_create_device { type_, fd: 0, flags: KVM_CREATE_DEVICE_TEST };
    // SAFETY: KVM_CREATE_DEVICE reads and writes one kvm_create_device that lives across the
    // call; with KVM_CREATE_DEVICE_TEST it creates nothing.
    let ret = unsafe { ioctl_with_mut_ref(vm, KVM_CREATE_DEVICE(), &mut device) };
    ret == 0
}

/// Probes the KVM at `path` (normally /dev/kvm).
pub fn probe(path: &Path) -> KvmProbe {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return KvmProbe::Failed(format!("{} is not a usable path", path.display()));
    };
    let kvm = match Kvm::new_with_path(&c_path) {
        Ok(kvm) => kvm,
        Err(e) => return KvmProbe::Failed(format!("cannot open {}: {e}", path.display())),
    };
    let ipa_cap = kvm.check_extension(Cap::ArmVmIPASize);
    // 0 means the host predates KVM_CAP_ARM_VM_IPA_SIZE and gives every VM 40 bits.
    let ipa_bits = match kvm.get_host_ipa_limit() {
        bits if bits > 0 => bits.unsigned_abs(),
        _ => 40,
    };
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => return KvmProbe::Failed(format!("KVM_CREATE_VM failed: {e}")),
    };
    KvmProbe::Caps(KvmCaps {
        ipa_bits,
        ipa_cap,
        gic_v3: can_create(&vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3),
        its: can_create(&vm, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS),
        irqfd: vm.check_extension(Cap::Irqfd),
        signal_msi: vm.check_extension(Cap::SignalMsi),
    })
}
