//! The Hypervisor.framework backend's FFI (Apple Silicon, macOS 15 or later).
//!
//! Hypervisor.framework runs vCPUs and, since macOS 15, a GICv3 with a GICv2m-style MSI frame
//! in the kernel (which also takes the virtual timer and WFI). Everything else comes back as raw
//! exception syndromes that this backend decodes with `arch` and completes itself: MMIO data
//! aborts, PSCI calls, trapped system registers. The decisions live in portable code
//! (`arch`, [`super`]); this module is the thin FFI shell around them.
//!
//! The process needs the `com.apple.security.hypervisor` entitlement
//! (`codesign --entitlements vmm/aperture.entitlements -s - target/release/aperture`).

mod exits;
mod gic_api;
mod os;
mod regs;
mod vcpu;
mod vm;

use std::sync::Arc;

use applevisor_sys::{hv_error_t, hv_vm_config_get_max_ipa_size};
use log::{debug, warn};

use crate::hypervisor::hvf::status;
use crate::hypervisor::{Hypervisor, HypervisorError, Result, Vm, VmSpec};
use gic_api::GicApi;

// The portable status codes are the framework's.
const _: () = {
    use hv_error_t::*;
    assert!(status::HV_SUCCESS == HV_SUCCESS as i32);
    assert!(status::HV_ERROR == HV_ERROR as i32);
    assert!(status::HV_BUSY == HV_BUSY as i32);
    assert!(status::HV_BAD_ARGUMENT == HV_BAD_ARGUMENT as i32);
    assert!(status::HV_ILLEGAL_GUEST_STATE == HV_ILLEGAL_GUEST_STATE as i32);
    assert!(status::HV_NO_RESOURCES == HV_NO_RESOURCES as i32);
    assert!(status::HV_NO_DEVICE == HV_NO_DEVICE as i32);
    assert!(status::HV_DENIED == HV_DENIED as i32);
    assert!(status::HV_FAULT == HV_FAULT as i32);
    assert!(status::HV_UNSUPPORTED == HV_UNSUPPORTED as i32);
};

/// Hypervisor.framework, checked to have what Aperture needs.
#[derive(Debug)]
pub struct Hvf {
    gic: GicApi,
}

impl Hvf {
    /// Checks that this macOS has the in-kernel GIC (macOS 15 or later). Whether the process
    /// may use the hypervisor (the entitlement) shows when the VM is created.
    pub fn open() -> Result<Self> {
        let version = crate::host::sys::os_version();
        debug!("macOS {}", version.as_deref().unwrap_or("(unknown version)"));
        let gic = GicApi::resolve().ok_or(HypervisorError::HvfNoGic { macos_version: version })?;
        Ok(Self { gic })
    }
}

impl Hypervisor for Hvf {
    fn name(&self) -> &'static str {
        "Hypervisor.framework"
    }

    fn max_ipa_bits(&self) -> u32 {
        let mut bits = 0u32;
        // SAFETY: `bits` is a valid out-pointer.
        let ret = unsafe { hv_vm_config_get_max_ipa_size(&mut bits) };
        let reported = match status::check(ret, || "hv_vm_config_get_max_ipa_size".into()) {
            Ok(()) => bits,
            Err(e) => {
                warn!("{e}; assuming Hypervisor.framework's default of 36 bits");
                arch::layout::MIN_IPA_BITS
            }
        };
        // A size the guest's ID_AA64MMFR0_EL1.PARange can state exactly.
        arch::idregs::round_down_to_parange_bits(reported).unwrap_or(arch::layout::MIN_IPA_BITS)
    }

    fn create_vm(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>> {
        Ok(Arc::new(vm::HvfVm::create(self.gic, spec.ipa_bits, spec.tso)?))
    }
}
