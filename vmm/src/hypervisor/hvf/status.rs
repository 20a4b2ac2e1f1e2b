//! `hv_return_t` codes and the errors Aperture reports for them.

use crate::hypervisor::HypervisorError;

/// `HV_SUCCESS`.
pub const HV_SUCCESS: i32 = 0;
/// `HV_ERROR`: unspecified failure.
pub const HV_ERROR: i32 = 0xfae9_4001_u32 as i32;
/// `HV_BUSY`.
pub const HV_BUSY: i32 = 0xfae9_4002_u32 as i32;
/// `HV_BAD_ARGUMENT`.
pub const HV_BAD_ARGUMENT: i32 = 0xfae9_4003_u32 as i32;
/// `HV_ILLEGAL_GUEST_STATE`.
pub const HV_ILLEGAL_GUEST_STATE: i32 = 0xfae9_4004_u32 as i32;
/// `HV_NO_RESOURCES`.
pub const HV_NO_RESOURCES: i32 = 0xfae9_4005_u32 as i32;
/// `HV_NO_DEVICE`: no VM or vCPU.
pub const HV_NO_DEVICE: i32 = 0xfae9_4006_u32 as i32;
/// `HV_DENIED`: the process lacks the hypervisor entitlement.
pub const HV_DENIED: i32 = 0xfae9_4007_u32 as i32;
/// `HV_FAULT`.
pub const HV_FAULT: i32 = 0xfae9_4008_u32 as i32;
/// `HV_UNSUPPORTED`: the operation (or Hypervisor.framework itself) is not supported here.
pub const HV_UNSUPPORTED: i32 = 0xfae9_400f_u32 as i32;

/// How to fix `HV_DENIED`, the error a binary without the entitlement gets.
pub const ENTITLEMENT_FIX: &str = "Hypervisor.framework refused to create a VM (HV_DENIED): \
     sign aperture with the com.apple.security.hypervisor entitlement: codesign \
     --entitlements vmm/aperture.entitlements -s - target/release/aperture";

/// The code's name, e.g. "HV_BAD_ARGUMENT".
pub fn name(ret: i32) -> &'static str {
    match ret {
        HV_SUCCESS => "HV_SUCCESS",
        HV_ERROR => "HV_ERROR",
        HV_BUSY => "HV_BUSY",
        HV_BAD_ARGUMENT => "HV_BAD_ARGUMENT",
        HV_ILLEGAL_GUEST_STATE => "HV_ILLEGAL_GUEST_STATE",
        HV_NO_RESOURCES => "HV_NO_RESOURCES",
        HV_NO_DEVICE => "HV_NO_DEVICE",
        HV_DENIED => "HV_DENIED",
        HV_FAULT => "HV_FAULT",
        HV_UNSUPPORTED => "HV_UNSUPPORTED",
        _ => "unknown hv_return_t",
    }
}

/// `Ok` for `HV_SUCCESS`, otherwise a [`HypervisorError::HvfCall`] saying what failed and how.
pub fn check(ret: i32, what: impl FnOnce() -> String) -> Result<(), HypervisorError> {
    if ret == HV_SUCCESS {
        Ok(())
    } else {
        Err(HypervisorError::HvfCall { what: what(), status: ret })
    }
}

/// "HV_BAD_ARGUMENT (0xfae94003)".
pub fn describe(ret: i32) -> String {
    format!("{} ({:#x})", name(ret), ret as u32)
}

/// Why `hv_vm_create` failed, with the fix for the causes a user can act on
/// ([`HypervisorError::HvfVmCreate`]).
pub fn vm_create_message(ret: i32) -> String {
    match ret {
        HV_DENIED => ENTITLEMENT_FIX.into(),
        HV_UNSUPPORTED => "Hypervisor.framework is not supported here (HV_UNSUPPORTED): run \
                           Aperture on an Apple Silicon Mac itself, not inside a VM without \
                           nested virtualization"
            .into(),
        HV_BUSY | HV_NO_RESOURCES => format!(
            "Hypervisor.framework could not create a VM ({}): Aperture runs one VM per \
             process, and the host may be out of VM resources; close other VMs and retry",
            describe(ret)
        ),
        _ => format!("hv_vm_create: {}", describe(ret)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names() {
        assert_eq!(HV_DENIED as u32, 0xfae9_4007);
        assert_eq!(name(HV_BAD_ARGUMENT), "HV_BAD_ARGUMENT");
        assert_eq!(describe(HV_UNSUPPORTED), "HV_UNSUPPORTED (0xfae9400f)");
        assert_eq!(describe(7), "unknown hv_return_t (0x7)");
        assert!(check(HV_SUCCESS, || unreachable!()).is_ok());
        let err = check(HV_BAD_ARGUMENT, || "hv_vm_map 0x4000+0x4000".into()).unwrap_err();
        assert_eq!(err.to_string(), "hv_vm_map 0x4000+0x4000: HV_BAD_ARGUMENT (0xfae94003)");
    }

    fn vm_create_error(status: i32) -> HypervisorError {
        HypervisorError::HvfVmCreate { status }
    }

    #[test]
    fn vm_create_errors_say_what_to_do() {
        let denied = vm_create_error(HV_DENIED).to_string();
        assert!(denied.contains("com.apple.security.hypervisor"), "{denied}");
        assert!(
            denied.contains(
                "codesign --entitlements vmm/aperture.entitlements -s - target/release/aperture"
            ),
            "{denied}"
        );
        assert!(vm_create_error(HV_UNSUPPORTED).to_string().contains("nested virtualization"));
        assert!(vm_create_error(HV_BUSY).to_string().contains("one VM per process"));
        assert_eq!(vm_create_error(HV_ERROR).to_string(), "hv_vm_create: HV_ERROR (0xfae94001)");
    }
}
