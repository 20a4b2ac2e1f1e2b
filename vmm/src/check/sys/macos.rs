//! The macOS probes behind `aperture check`: thin calls whose results [`super::super::macos`]
//! judges.

use applevisor_sys::{hv_vm_config_get_max_ipa_size, hv_vm_create, hv_vm_destroy};
use passthrough::driverkit::IoKitConnection;

use crate::check::macos::{self, DextProbe, MacProbe};
use crate::check::{CheckOptions, Finding};
use crate::host::sys::{dext_survey, os_version};
use crate::hypervisor::hvf::status;

/// Creates a VM with the default configuration and destroys it: the entitlement shows as
/// HV_DENIED.
fn try_vm_create() -> i32 {
    // SAFETY: a null configuration asks for the defaults; this process has no VM yet.
    let ret = unsafe { hv_vm_create(std::ptr::null_mut()) };
    if ret == status::HV_SUCCESS {
        // SAFETY: destroys the VM just created; nothing else uses it.
        unsafe { hv_vm_destroy() };
    }
    ret
}

/// The largest IPA size, rounded down to one the guest's PARange can state.
fn max_ipa_bits() -> Result<u32, i32> {
    let mut bits = 0u32;
    // SAFETY: `bits` is a valid out-pointer.
    let ret = unsafe { hv_vm_config_get_max_ipa_size(&mut bits) };
    if ret != status::HV_SUCCESS {
        return Err(ret);
    }
    Ok(arch::idregs::round_down_to_parange_bits(bits).unwrap_or(bits))
}

/// Every check on this Mac.
pub fn check_host(options: &CheckOptions) -> Vec<Finding> {
    let dext = if options.devices.is_empty() {
        DextProbe::Survey(dext_survey())
    } else {
        DextProbe::Devices(
            options
                .devices
                .iter()
                .map(|address| (*address, IoKitConnection::open(*address).map(drop)))
                .collect(),
        )
    };
    let probe = MacProbe {
        version: os_version(),
        vm_create: try_vm_create(),
        max_ipa_bits: max_ipa_bits(),
        dext,
    };
    macos::findings(&probe, options.memory_bytes)
}
