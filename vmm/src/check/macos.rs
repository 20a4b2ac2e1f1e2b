//! macOS's checks as portable code over what the probes found (`sys/macos.rs` gathers it):
//! the macOS version, the hypervisor entitlement, the IPA size, and the passthrough dext.

use passthrough::driverkit::DextError;
use passthrough::PciAddress;

use super::{ipa_finding, Finding};
use crate::host::DEXT_FIX;
use crate::hypervisor::hvf::{status, version};

/// What the macOS probes found.
#[derive(Debug)]
pub struct MacProbe {
    /// `kern.osproductversion`.
    pub version: Option<String>,
    /// What `hv_vm_create` returned (the VM was destroyed at once).
    pub vm_create: i32,
    /// `hv_vm_config_get_max_ipa_size`, rounded to a PARange size, or its error code.
    pub max_ipa_bits: Result<u32, i32>,
    /// The dext's services.
    pub dext: DextProbe,
}

/// What the dext's services answered.
#[derive(Debug)]
pub enum DextProbe {
    /// Without `--device`: what its instances serve (`bus:device.function`), or why none
    /// could be asked.
    Survey(Result<Vec<String>, DextError>),
    /// Each `--device` and whether a user client serving it opened.
    Devices(Vec<(PciAddress, Result<(), DextError>)>),
}

/// Every finding for `probe`; `memory_bytes` of guest RAM.
pub fn findings(probe: &MacProbe, memory_bytes: u64) -> Vec<Finding> {
    let mut findings = vec![macos_version(probe.version.as_deref()), entitlement(probe.vm_create)];
    findings.push(match probe.max_ipa_bits {
        Ok(bits) => ipa_finding("IPA size", bits, memory_bytes),
        Err(code) => Finding::warn(
            "IPA size",
            format!(
                "hv_vm_config_get_max_ipa_size failed ({}); VMs get 36 bits",
                status::describe(code)
            ),
            "nothing to do unless a device's BARs do not fit; update macOS",
        ),
    });
    findings.push(passthrough_macos(probe.version.as_deref(), &probe.dext));
    findings.extend(dext(&probe.dext));
    findings
}

/// macOS 26 or later for `--device`: the dext's own requirement. A failure only when devices
/// were asked for; VMs without them run on macOS 15.
fn passthrough_macos(running: Option<&str>, probe: &DextProbe) -> Finding {
    const WHAT: &str = "macOS for --device";
    let need = version::DEXT_MACOS_MAJOR;
    let fix = format!(
        "update to macOS {need} or later to assign devices; VMs without --device run as they are"
    );
    match running.and_then(version::macos_major) {
        Some(major) if major >= need => {
            Finding::ok(WHAT, format!("macOS {major} (the passthrough dext needs {need})"))
        }
        Some(major) => {
            let detail = format!(
                "the passthrough dext (VFIOUserPCIDriver) needs macOS {need}; this Mac runs \
                 macOS {major}"
            );
            match probe {
                DextProbe::Devices(_) => Finding::fail(WHAT, detail, fix),
                DextProbe::Survey(_) => Finding::warn(WHAT, detail, fix),
            }
        }
        None => Finding::warn(WHAT, "cannot read the macOS version", fix),
    }
}

/// macOS 15 or later: the in-kernel GIC.
fn macos_version(running: Option<&str>) -> Finding {
    const WHAT: &str = "macOS";
    match running.and_then(version::macos_major) {
        Some(major) if major >= version::GIC_MACOS_MAJOR => Finding::ok(
            WHAT,
            format!(
                "{} (the in-kernel GIC needs {})",
                running.unwrap_or_default().trim(),
                version::GIC_MACOS_MAJOR
            ),
        ),
        Some(_) => Finding::fail(WHAT, version::gic_missing_message(running), "update macOS"),
        None => Finding::warn(
            WHAT,
            "cannot read the version (kern.osproductversion)",
            format!("check that `sw_vers` says {} or later", version::GIC_MACOS_MAJOR),
        ),
    }
}

/// The hypervisor entitlement on this binary: can it create a VM?
fn entitlement(vm_create: i32) -> Finding {
    const WHAT: &str = "hypervisor entitlement";
    match vm_create {
        status::HV_SUCCESS => {
            Finding::ok(WHAT, "this binary may create VMs (com.apple.security.hypervisor)")
        }
        status::HV_DENIED => Finding::fail(
            WHAT,
            "Hypervisor.framework refused to create a VM (HV_DENIED)",
            "codesign --entitlements vmm/aperture.entitlements -s - target/release/aperture",
        ),
        code => Finding::fail(
            WHAT,
            status::vm_create_message(code),
            "close other VMs and retry; on a Mac inside a VM, run Aperture on the host",
        ),
    }
}

/// The passthrough dext: installed, reachable, serving the devices asked for.
fn dext(probe: &DextProbe) -> Vec<Finding> {
    const WHAT: &str = "passthrough dext";
    match probe {
        DextProbe::Survey(Ok(serving)) if serving.is_empty() => vec![Finding::warn(
            WHAT,
            "no VFIOUserPCIDriver instance: the extension is not installed or active, or no \
             device it matches is attached",
            DEXT_FIX,
        )],
        DextProbe::Survey(Ok(serving)) => {
            vec![Finding::ok(WHAT, format!("VFIOUserPCIDriver serves {}", serving.join(", ")))]
        }
        DextProbe::Survey(Err(e)) => vec![Finding::warn(WHAT, e.to_string(), DEXT_FIX)],
        DextProbe::Devices(devices) => devices
            .iter()
            .map(|(address, result)| match result {
                Ok(()) => Finding::ok(
                    format!("{address} dext"),
                    "VFIOUserPCIDriver serves it and its user client opens",
                ),
                Err(e) => Finding::fail(format!("{address} dext"), e.to_string(), DEXT_FIX),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    fn probe(dext: DextProbe) -> MacProbe {
        MacProbe {
            version: Some("26.1".into()),
            vm_create: status::HV_SUCCESS,
            max_ipa_bits: Ok(40),
            dext,
        }
    }

    #[test]
    fn a_ready_mac() {
        let f = findings(&probe(DextProbe::Survey(Ok(vec!["0a:00.0".into()]))), 512 << 20);
        assert!(f.iter().all(|f| f.status == Status::Ok), "{f:?}");
        assert_eq!(f.len(), 5);
        assert_eq!(f[4].detail, "VFIOUserPCIDriver serves 0a:00.0");
    }

    #[test]
    fn devices_need_macos_26_vms_need_15() {
        let survey = DextProbe::Survey(Ok(vec![]));
        let devices = DextProbe::Devices(vec![]);
        assert_eq!(passthrough_macos(Some("26.0"), &devices).status, Status::Ok);
        let f = passthrough_macos(Some("15.4"), &devices);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("needs macOS 26") && f.detail.contains("runs macOS 15"), "{f}");
        assert_eq!(passthrough_macos(Some("15.4"), &survey).status, Status::Warn);
        assert_eq!(macos_version(Some("15.4")).status, Status::Ok, "VMs run on 15");
    }

    #[test]
    fn old_macos_or_unknown_version() {
        assert_eq!(macos_version(Some("15.0")).status, Status::Ok);
        let f = macos_version(Some("14.6.1"));
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("this Mac runs macOS 14.6.1"), "{f}");
        assert_eq!(macos_version(None).status, Status::Warn);
    }

    #[test]
    fn entitlement_denied_or_other_failures() {
        let f = entitlement(status::HV_DENIED);
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.as_deref().unwrap().starts_with("codesign --entitlements"));
        let f = entitlement(status::HV_UNSUPPORTED);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("HV_UNSUPPORTED"), "{f}");
    }

    #[test]
    fn ipa_size_or_its_error() {
        let mut p = probe(DextProbe::Survey(Ok(vec![])));
        p.max_ipa_bits = Ok(36);
        assert_eq!(findings(&p, 512 << 20)[2].status, Status::Warn);
        p.max_ipa_bits = Err(status::HV_ERROR);
        let f = &findings(&p, 512 << 20)[2];
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("HV_ERROR"), "{f}");
    }

    #[test]
    fn dext_missing_unreachable_or_per_device() {
        let f = dext(&DextProbe::Survey(Ok(vec![])));
        assert_eq!(f[0].status, Status::Warn);
        assert!(f[0].fix.as_deref().unwrap().contains("Driver Extensions"));
        let address: PciAddress = "0000:0a:00.0".parse().unwrap();
        let missing = DextError::NoService { address, serving: vec!["0b:00.0".into()] };
        let f = dext(&DextProbe::Devices(vec![(address, Ok(())), (address, Err(missing))]));
        assert_eq!((f[0].status, f[1].status), (Status::Ok, Status::Fail));
        assert!(f[1].detail.contains("it serves 0b:00.0"), "{}", f[1]);
        let f = dext(&DextProbe::Survey(Err(DextError::IoKit { what: "x".into(), code: 1 })));
        assert_eq!(f[0].status, Status::Warn);
    }
}
