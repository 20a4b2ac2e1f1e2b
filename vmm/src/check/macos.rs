//! The macOS probes behind `aperture check` and `aperture devices`: thin calls whose results
//! [`super::macos_logic`] judges.

use applevisor_sys::{hv_vm_config_get_max_ipa_size, hv_vm_create, hv_vm_destroy};
use passthrough::driverkit::{DextError, IoKitConnection};
use passthrough::PciAddress;

use super::macos_logic::{self, DextProbe, MacProbe};
use super::{CheckOptions, Finding};
use crate::hypervisor::hvf::status;

/// `kern.osproductversion` ("15.3.1").
fn os_version() -> Option<String> {
    let mut buf = [0u8; 64];
    let mut len = buf.len();
    // SAFETY: the name is NUL-terminated; `buf` has `len` writable bytes, and sysctlbyname
    // writes at most `len` bytes and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.osproductversion".as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let text = buf.get(..len)?.split(|&b| b == 0).next()?;
    std::str::from_utf8(text).ok().map(str::to_owned)
}

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

/// What the dext's instances serve (`bus:device.function`). IoKitConnection lists them in
/// its error when asked for a device none serves, so it is asked for one that cannot be
/// attached to a Mac (bus ff, device 1f, function 7).
pub fn dext_survey() -> Result<Vec<String>, DextError> {
    let nowhere = PciAddress { domain: 0, bus: 0xff, device: 0x1f, function: 7 };
    match IoKitConnection::open(nowhere) {
        Ok(_) => Ok(vec!["ff:1f.7".into()]),
        Err(DextError::NoService { serving, .. }) => Ok(serving),
        Err(e) => Err(e),
    }
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
    macos_logic::findings(&probe, options.memory_bytes)
}

/// `aperture devices` on macOS.
pub fn dext_listing(as_json: bool) -> String {
    macos_logic::dext_listing(&dext_survey(), as_json)
}
