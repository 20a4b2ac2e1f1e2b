//! What macOS says about itself and the passthrough dext: thin calls, for `aperture check`,
//! `aperture devices` and the hypervisor backend's messages.

use passthrough::driverkit::{DextError, IoKitConnection};
use passthrough::PciAddress;

/// `kern.osproductversion` ("15.3.1").
pub fn os_version() -> Option<String> {
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
