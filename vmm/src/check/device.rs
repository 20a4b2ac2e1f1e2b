//! The checks for one `--device`: it exists, is bound to vfio-pci, its IOMMU group is viable
//! (what `aperture run` checks, through [`HostSysfs::inspect`]), it can be reset, and no other
//! process holds its group.

use std::path::Path;

use passthrough::sysfs::bind_commands;
use passthrough::{HostDeviceError, HostSysfs, PciAddress};

use super::linux::{entries, HostEnv};
use super::Finding;
use crate::host::pci::{class_name, read_hex};

/// Every check of `address`; after a missing device, nothing more.
pub fn check_device(env: &dyn HostEnv, address: &PciAddress) -> Vec<Finding> {
    let root = env.root();
    let sysfs = HostSysfs::with_root(root);
    let dir = root.join(format!("sys/bus/pci/devices/{address}"));
    if !dir.is_dir() {
        return vec![Finding::fail(
            address.to_string(),
            "does not exist on this host",
            "pick an address `aperture devices` (or `lspci -D`) lists",
        )];
    }
    let driver = sysfs.driver(address);
    let bound = driver.as_deref() == Some("vfio-pci");
    let group = std::fs::read_link(dir.join("iommu_group"))
        .ok()
        .and_then(|target| target.file_name()?.to_str()?.parse::<u32>().ok());
    let mut findings = vec![identity(address, &dir), driver_finding(address, driver.as_deref())];
    findings.push(match group {
        None => Finding::fail(
            format!("{address} IOMMU group"),
            "none: the host has no IOMMU enabled for it",
            "enable the IOMMU (see the IOMMU line); `dmesg | grep -i -e iommu -e smmu` shows \
             what the kernel found",
        ),
        Some(group) => group_finding(&sysfs, root, address, group, bound),
    });
    findings.push(reset(address, &dir));
    if let (true, Some(group)) = (bound, group) {
        findings.push(group_file(env, address, group));
    }
    findings
}

/// What the device is.
fn identity(address: &PciAddress, dir: &Path) -> Finding {
    let hex = |name: &str| read_hex(&dir.join(name));
    let ids = match (hex("vendor"), hex("device")) {
        (Some(vendor), Some(device)) => format!("{vendor:04x}:{device:04x}"),
        _ => "unknown ids".into(),
    };
    let class = hex("class").map_or("unknown class".into(), |class| {
        format!("class {class:06x} ({})", class_name(class))
    });
    Finding::ok(address.to_string(), format!("present: {ids}, {class}"))
}

/// Bound to vfio-pci, or the commands that bind it.
fn driver_finding(address: &PciAddress, driver: Option<&str>) -> Finding {
    let what = format!("{address} driver");
    match driver {
        Some("vfio-pci") => Finding::ok(what, "vfio-pci"),
        Some(other) => Finding::fail(
            what,
            format!("bound to {other}, not to vfio-pci"),
            bind_commands(address, true),
        ),
        None => Finding::fail(
            what,
            "not bound to a driver; Aperture needs vfio-pci",
            bind_commands(address, false),
        ),
    }
}

/// The group's members with their drivers: "0000:01:00.0 (vfio-pci), 0000:00:01.0 (none)".
fn members(sysfs: &HostSysfs, root: &Path, group: u32) -> String {
    entries(&root.join(format!("sys/kernel/iommu_groups/{group}/devices")))
        .iter()
        .map(|name| {
            let driver = name.parse().ok().and_then(|a: PciAddress| sysfs.driver(&a));
            format!("{name} ({})", driver.as_deref().unwrap_or("no driver"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the group is viable: what `aperture run` checks once the device is bound.
fn group_finding(
    sysfs: &HostSysfs,
    root: &Path,
    address: &PciAddress,
    group: u32,
    bound: bool,
) -> Finding {
    let what = format!("{address} IOMMU group");
    let members = members(sysfs, root, group);
    if !bound {
        return Finding::warn(
            what,
            format!(
                "group {group}: {members}; whether it is viable shows once {address} is bound \
                 to vfio-pci"
            ),
            "bind it to vfio-pci (the driver line's fix), then run `aperture check` again",
        );
    }
    match sysfs.inspect(address) {
        Ok(_) => Finding::ok(what, format!("group {group} is viable: {members}")),
        Err(HostDeviceError::GroupNotViable { offenders, .. }) => {
            let held: Vec<String> = offenders.iter().map(|(a, d)| format!("{a} ({d})")).collect();
            let mut fix: Vec<String> = offenders
                .iter()
                .flat_map(|(a, _)| {
                    bind_commands(a, true).lines().skip(1).map(str::to_owned).collect::<Vec<_>>()
                })
                .collect();
            fix.insert(0, "modprobe vfio-pci".into());
            fix.push("(and pass them with --device too if the guest should have them)".into());
            Finding::fail(
                what,
                format!(
                    "group {group} is not viable: host drivers hold {}; every device in it must \
                     be bound to vfio-pci (bridges may keep pcieport) or have no driver",
                    held.join(", ")
                ),
                fix.join("\n"),
            )
        }
        Err(HostDeviceError::NoVfio(_)) => Finding::fail(
            what,
            format!("group {group}: VFIO is not loaded, so it cannot be used"),
            "modprobe vfio-pci",
        ),
        Err(e) => Finding::fail(what, e.to_string(), "check the device's sysfs directory"),
    }
}

/// A reset the kernel can do between VMs.
fn reset(address: &PciAddress, dir: &Path) -> Finding {
    let what = format!("{address} reset");
    let methods = std::fs::read_to_string(dir.join("reset_method")).unwrap_or_default();
    let methods = methods.trim();
    if !methods.is_empty() {
        return Finding::ok(what, format!("the kernel can reset it ({methods})"));
    }
    if dir.join("reset").exists() {
        return Finding::ok(what, "the kernel can reset it (sysfs reset)");
    }
    Finding::warn(
        what,
        "device offers no reset: state may carry over between VMs",
        "nothing to set up; if the guest's driver needs a fresh device, power-cycle it (replug \
         an eGPU) between VMs",
    )
}

/// The group's VFIO file can be opened: it exists, this user may open it, and no other
/// process (another VM) holds it.
fn group_file(env: &dyn HostEnv, address: &PciAddress, group: u32) -> Finding {
    let node = format!("/dev/vfio/{group}");
    let what = format!("{address} {node}");
    let Err(e) = env.try_open(&env.root().join(format!("dev/vfio/{group}"))) else {
        return Finding::ok(what, "free: no other process holds it");
    };
    match e.raw_os_error() {
        Some(libc::EBUSY) => Finding::fail(
            what,
            format!("in use by another process (fuser -v {node})"),
            format!("stop the VM or process that holds it; `fuser -v {node}` names it"),
        ),
        Some(libc::EACCES | libc::EPERM) => Finding::fail(
            what,
            "permission denied",
            format!("run Aperture as root, or give your user the group file: chown $USER {node}"),
        ),
        Some(libc::ENOENT) => Finding::fail(
            what,
            "missing although the device is bound to vfio-pci",
            "check `ls -l /dev/vfio` and `dmesg | grep -i vfio`",
        ),
        _ => Finding::fail(what, format!("cannot open it: {e}"), "check `dmesg | grep -i vfio`"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeHost;
    use super::super::Status;
    use super::*;

    const A: &str = "0000:01:00.0";

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    /// A VFIO host with A (an NVMe controller) in group 5, bound to `driver`.
    fn host_with(driver: Option<&str>) -> FakeHost {
        let host = FakeHost::new();
        host.tree.vfio_host().device(A, 0x1b36, 0x0010, 0x010802).group(A, 5);
        host.tree.file("dev/vfio/5", "");
        if let Some(driver) = driver {
            host.tree.bind(A, driver);
        }
        host
    }

    fn line<'a>(findings: &'a [Finding], what: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.what == what)
            .unwrap_or_else(|| panic!("no {what} in {findings:?}"))
    }

    #[test]
    fn ready_device_passes_everything() {
        let host = host_with(Some("vfio-pci"));
        host.tree.file(&format!("sys/bus/pci/devices/{A}/reset_method"), "flr bus\n");
        let findings = check_device(&host, &addr(A));
        assert!(findings.iter().all(|f| f.status == Status::Ok), "{findings:?}");
        assert_eq!(line(&findings, A).detail, "present: 1b36:0010, class 010802 (NVMe)");
        assert_eq!(line(&findings, &format!("{A} driver")).detail, "vfio-pci");
        assert_eq!(
            line(&findings, &format!("{A} IOMMU group")).detail,
            format!("group 5 is viable: {A} (vfio-pci)")
        );
        assert_eq!(
            line(&findings, &format!("{A} reset")).detail,
            "the kernel can reset it (flr bus)"
        );
        assert_eq!(
            line(&findings, &format!("{A} /dev/vfio/5")).detail,
            "free: no other process holds it"
        );
    }

    #[test]
    fn missing_device_stops_there() {
        let host = host_with(None);
        let findings = check_device(&host, &addr("0000:7f:1f.7"));
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].status, Status::Fail);
        assert_eq!(findings[0].detail, "does not exist on this host");
        assert!(findings[0].fix.as_deref().unwrap().contains("aperture devices"));
    }

    #[test]
    fn host_driver_or_no_driver_gets_the_bind_commands() {
        let host = host_with(Some("nvme"));
        let findings = check_device(&host, &addr(A));
        let driver = line(&findings, &format!("{A} driver"));
        assert_eq!(driver.status, Status::Fail);
        assert_eq!(driver.detail, "bound to nvme, not to vfio-pci");
        let fix = driver.fix.as_deref().unwrap();
        assert!(
            fix.contains(&format!("echo {A} > /sys/bus/pci/devices/{A}/driver/unbind")),
            "{fix}"
        );
        assert!(fix.contains(&format!("echo vfio-pci > /sys/bus/pci/devices/{A}/driver_override")));
        // Not bound: the group is shown, viability waits, and /dev/vfio/N is not tried.
        let group = line(&findings, &format!("{A} IOMMU group"));
        assert_eq!(group.status, Status::Warn);
        assert!(group.detail.starts_with(&format!("group 5: {A} (nvme)")), "{group}");
        assert!(!findings.iter().any(|f| f.what.contains("/dev/vfio")));
        let host = host_with(None);
        let findings = check_device(&host, &addr(A));
        let driver = line(&findings, &format!("{A} driver"));
        assert_eq!(driver.status, Status::Fail);
        assert!(driver.detail.starts_with("not bound to a driver"));
        assert!(!driver.fix.as_deref().unwrap().contains("unbind"));
    }

    #[test]
    fn no_iommu_group() {
        let host = FakeHost::new();
        host.tree.vfio_host().device(A, 0x1b36, 0x0010, 0x010802).bind(A, "vfio-pci");
        let findings = check_device(&host, &addr(A));
        let group = line(&findings, &format!("{A} IOMMU group"));
        assert_eq!(group.status, Status::Fail);
        assert!(group.detail.contains("no IOMMU"), "{group}");
        assert!(!findings.iter().any(|f| f.what.contains("/dev/vfio")));
    }

    #[test]
    fn group_mates_held_by_the_host_make_it_not_viable() {
        let host = host_with(Some("vfio-pci"));
        let mate = "0000:01:00.1";
        host.tree.device(mate, 0x10de, 0x10f0, 0x040300).group(mate, 5).bind(mate, "snd_hda_intel");
        let bridge = "0000:00:01.0";
        host.tree
            .device(bridge, 0x1b36, 0x000c, 0x060400)
            .group(bridge, 5)
            .bind(bridge, "pcieport");
        let findings = check_device(&host, &addr(A));
        let group = line(&findings, &format!("{A} IOMMU group"));
        assert_eq!(group.status, Status::Fail);
        assert!(
            group.detail.contains(&format!("host drivers hold {mate} (snd_hda_intel)")),
            "{group}"
        );
        let fix = group.fix.as_deref().unwrap();
        assert!(
            fix.contains(&format!("echo {mate} > /sys/bus/pci/devices/{mate}/driver/unbind")),
            "{fix}"
        );
        assert!(!fix.contains(bridge), "{fix}");
    }

    #[test]
    fn vfio_not_loaded_for_a_bound_device() {
        let host = FakeHost::new();
        host.tree.device(A, 0x1b36, 0x0010, 0x010802).group(A, 5).bind(A, "vfio-pci");
        let findings = check_device(&host, &addr(A));
        let group = line(&findings, &format!("{A} IOMMU group"));
        assert_eq!(group.status, Status::Fail);
        assert_eq!(group.fix.as_deref(), Some("modprobe vfio-pci"));
    }

    #[test]
    fn reset_file_or_no_reset() {
        let host = host_with(Some("vfio-pci"));
        let findings = check_device(&host, &addr(A));
        let reset = line(&findings, &format!("{A} reset"));
        assert_eq!(reset.status, Status::Warn);
        assert_eq!(reset.detail, "device offers no reset: state may carry over between VMs");
        host.tree.file(&format!("sys/bus/pci/devices/{A}/reset"), "");
        let findings = check_device(&host, &addr(A));
        assert_eq!(line(&findings, &format!("{A} reset")).status, Status::Ok);
    }

    #[test]
    fn group_file_busy_forbidden_or_missing() {
        let mut host = host_with(Some("vfio-pci"));
        let what = format!("{A} /dev/vfio/5");
        for (errno, detail, fix) in [
            (
                libc::EBUSY,
                "in use by another process (fuser -v /dev/vfio/5)",
                "fuser -v /dev/vfio/5",
            ),
            (libc::EACCES, "permission denied", "chown $USER /dev/vfio/5"),
            (libc::ENOENT, "missing although the device is bound to vfio-pci", "ls -l /dev/vfio"),
            (libc::EIO, "cannot open it", "dmesg"),
        ] {
            host.open_errors = vec![("dev/vfio/5".into(), errno)];
            let findings = check_device(&host, &addr(A));
            let f = line(&findings, &what);
            assert_eq!(f.status, Status::Fail);
            assert!(f.detail.starts_with(detail), "{f}");
            assert!(f.fix.as_deref().unwrap().contains(fix), "{f}");
        }
    }
}
