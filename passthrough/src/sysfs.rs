//! What the host says about a PCI device in sysfs: its driver, IOMMU group and group mates,
//! checked before Aperture opens anything, so that every problem comes with its fix.
//!
//! All paths hang off a root directory (normally `/`), so tests use fake trees.

use std::path::{Path, PathBuf};

use crate::pci_address::PciAddress;

/// PCI class code of PCI-to-PCI bridges (root ports, switch ports), which may stay with
/// their host driver inside a group.
const CLASS_BRIDGE: u32 = 0x0604;
/// Drivers the kernel's VFIO accepts for other devices of a group.
const GROUP_SAFE_DRIVERS: [&str; 3] = ["vfio-pci", "pci-stub", "pcieport"];

/// Why a host device cannot be assigned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostDeviceError {
    /// No such device.
    #[error("PCI device {0} does not exist on this host; list devices with `lspci -D`")]
    NotFound(PciAddress),
    /// Bound to a host driver.
    #[error(
        "PCI device {address} is {}, not to vfio-pci; hand it to VFIO with:\n{}",
        match driver { Some(d) => format!("bound to {d}"), None => "not bound to a driver".into() },
        bind_commands(address, driver.is_some())
    )]
    NotBoundToVfio {
        /// The device.
        address: PciAddress,
        /// Its current driver.
        driver: Option<String>,
    },
    /// No IOMMU group.
    #[error(
        "PCI device {0} has no IOMMU group: the host has no IOMMU enabled (arm64: an SMMU; \
         x86: intel_iommu=on or amd_iommu=on on the kernel command line). Check `dmesg | grep -i iommu`"
    )]
    NoIommuGroup(PciAddress),
    /// Other devices in the group are in use by the host.
    #[error(
        "IOMMU group {group} of {address} is not viable: every device in it must be bound to \
         vfio-pci (bridges may keep pcieport) or have no driver; these do not: {}. Bind them \
         to vfio-pci too (and pass them with --device if the guest should have them)",
        offenders.iter().map(|(a, d)| format!("{a} ({d})")).collect::<Vec<_>>().join(", ")
    )]
    GroupNotViable {
        /// The device asked for.
        address: PciAddress,
        /// Its group number.
        group: u32,
        /// Group mates and the host drivers holding them.
        offenders: Vec<(PciAddress, String)>,
    },
    /// The VFIO modules are not loaded.
    #[error("{0} is missing: load VFIO with `modprobe vfio-pci`")]
    NoVfio(PathBuf),
    /// sysfs could not be read.
    #[error("reading {path}: {source}")]
    Sysfs {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: SysfsReadError,
    },
}

/// Why a sysfs file could not be read. Comparable (for tests), so the OS error is kept as its
/// errno.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SysfsReadError {
    /// The OS refused.
    #[error("{}", std::io::Error::from_raw_os_error(*.errno))]
    Os {
        /// The errno.
        errno: i32,
    },
    /// An error without an errno.
    #[error("{kind}")]
    Io {
        /// What kind.
        kind: std::io::ErrorKind,
    },
    /// The attribute is not a hex number.
    #[error("not a hex number: {text:?}")]
    NotHex {
        /// What the file holds.
        text: String,
    },
}

impl From<std::io::Error> for SysfsReadError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => Self::Os { errno },
            None => Self::Io { kind: e.kind() },
        }
    }
}

/// A hex number as sysfs and procfs print them (`0x1b36`, `000001ffffffffff`), surrounding
/// white space allowed.
pub fn parse_hex(text: &str) -> Option<u64> {
    let text = text.trim();
    u64::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
}

/// Whether procfs `status` text shows CAP_IPC_LOCK in the effective set (`CapEff:`): such a
/// process may lock memory without limit.
pub fn has_cap_ipc_lock(status: &str) -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(parse_hex)
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// A 32-bit sysfs hex attribute (`vendor`, `device`, `class`).
pub fn read_hex(path: &Path) -> Result<u32, HostDeviceError> {
    let sysfs = |source| HostDeviceError::Sysfs { path: path.to_path_buf(), source };
    let text = std::fs::read_to_string(path).map_err(|e| sysfs(e.into()))?;
    parse_hex(&text)
        .and_then(|value| u32::try_from(value).ok())
        .ok_or_else(|| sysfs(SysfsReadError::NotHex { text: text.trim().to_string() }))
}

/// The shell commands that bind `address` to vfio-pci.
pub fn bind_commands(address: &PciAddress, has_driver: bool) -> String {
    let dev = format!("/sys/bus/pci/devices/{address}");
    let mut lines = vec!["  modprobe vfio-pci".to_string()];
    if has_driver {
        lines.push(format!("  echo {address} > {dev}/driver/unbind"));
    }
    lines.push(format!("  echo vfio-pci > {dev}/driver_override"));
    lines.push(format!("  echo {address} > /sys/bus/pci/drivers_probe"));
    lines.join("\n")
}

/// A host PCI device that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Its address.
    pub address: PciAddress,
    /// Its sysfs directory.
    pub sysfs_path: PathBuf,
    /// Its IOMMU group.
    pub group: u32,
    /// Vendor and device ids.
    pub ids: (u16, u16),
    /// 24-bit class code.
    pub class: u32,
}

/// sysfs and devfs under a root directory.
#[derive(Debug, Clone)]
pub struct HostSysfs {
    root: PathBuf,
}

impl Default for HostSysfs {
    fn default() -> Self {
        Self { root: PathBuf::from("/") }
    }
}

/// The last path component of a symlink's target (a driver or group name).
fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

impl HostSysfs {
    /// sysfs under another root (tests).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn device_dir(&self, address: &PciAddress) -> PathBuf {
        self.root.join(format!("sys/bus/pci/devices/{address}"))
    }

    /// The driver bound to `address`, if any.
    pub fn driver(&self, address: &PciAddress) -> Option<String> {
        link_name(&self.device_dir(address).join("driver"))
    }

    /// Checks everything VFIO needs for `address` and describes the device.
    pub fn inspect(&self, address: &PciAddress) -> Result<HostDevice, HostDeviceError> {
        let dir = self.device_dir(address);
        if !dir.exists() {
            return Err(HostDeviceError::NotFound(*address));
        }
        let vfio = self.root.join("dev/vfio/vfio");
        if !vfio.exists() {
            return Err(HostDeviceError::NoVfio(vfio));
        }
        let driver = self.driver(address);
        if driver.as_deref() != Some("vfio-pci") {
            return Err(HostDeviceError::NotBoundToVfio { address: *address, driver });
        }
        let group: u32 = link_name(&dir.join("iommu_group"))
            .and_then(|g| g.parse().ok())
            .ok_or(HostDeviceError::NoIommuGroup(*address))?;
        let members = self.root.join(format!("sys/kernel/iommu_groups/{group}/devices"));
        let mut offenders = Vec::new();
        let entries = std::fs::read_dir(&members)
            .map_err(|e| HostDeviceError::Sysfs { path: members.clone(), source: e.into() })?;
        for entry in entries.flatten() {
            let Ok(mate) = entry.file_name().to_string_lossy().parse::<PciAddress>() else {
                continue;
            };
            let Some(mate_driver) = self.driver(&mate) else { continue };
            let is_bridge = read_hex(&self.device_dir(&mate).join("class"))
                .is_ok_and(|class| class >> 8 == CLASS_BRIDGE);
            if !GROUP_SAFE_DRIVERS.contains(&mate_driver.as_str()) && !is_bridge {
                offenders.push((mate, mate_driver));
            }
        }
        if !offenders.is_empty() {
            offenders.sort();
            return Err(HostDeviceError::GroupNotViable { address: *address, group, offenders });
        }
        let vendor = read_hex(&dir.join("vendor"))? as u16;
        let device = read_hex(&dir.join("device"))? as u16;
        let class = read_hex(&dir.join("class"))?;
        Ok(HostDevice { address: *address, sysfs_path: dir, group, ids: (vendor, device), class })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs under the temporary directory, removed when dropped.
    struct FakeSysfs(PathBuf);

    impl std::ops::Deref for FakeSysfs {
        type Target = PathBuf;
        fn deref(&self) -> &PathBuf {
            &self.0
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fake sysfs: devices with (address, driver, group, class).
    fn fake_sysfs(
        devices: &[(&str, Option<&str>, Option<u32>, u32)],
        with_vfio: bool,
    ) -> FakeSysfs {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("aperture-sysfs-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (address, driver, group, class) in devices {
            let dir = root.join(format!("sys/bus/pci/devices/{address}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vendor"), "0x1b36\n").unwrap();
            std::fs::write(dir.join("device"), "0x0010\n").unwrap();
            std::fs::write(dir.join("class"), format!("0x{class:06x}\n")).unwrap();
            if let Some(driver) = driver {
                let drv = root.join(format!("sys/bus/pci/drivers/{driver}"));
                std::fs::create_dir_all(&drv).unwrap();
                symlink(&drv, dir.join("driver")).unwrap();
            }
            if let Some(group) = group {
                let g = root.join(format!("sys/kernel/iommu_groups/{group}"));
                std::fs::create_dir_all(g.join("devices")).unwrap();
                symlink(&g, dir.join("iommu_group")).unwrap();
                symlink(&dir, g.join(format!("devices/{address}"))).unwrap();
            }
        }
        if with_vfio {
            std::fs::create_dir_all(root.join("dev/vfio")).unwrap();
            std::fs::write(root.join("dev/vfio/vfio"), "").unwrap();
        }
        FakeSysfs(root)
    }

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn viable_device_with_a_bridge_in_its_group() {
        let root = fake_sysfs(
            &[
                ("0000:01:00.0", Some("vfio-pci"), Some(5), 0x010802),
                ("0000:00:01.0", Some("pcieport"), Some(5), 0x060400),
                ("0000:01:00.1", None, Some(5), 0x040300),
            ],
            true,
        );
        let dev = HostSysfs::with_root(&*root).inspect(&addr("0000:01:00.0")).unwrap();
        assert_eq!(dev.group, 5);
        assert_eq!(dev.ids, (0x1b36, 0x0010));
        assert_eq!(dev.class, 0x010802);
    }

    #[test]
    fn not_bound_gives_the_bind_commands() {
        let root = fake_sysfs(&[("0000:01:00.0", Some("nvme"), Some(5), 0x010802)], true);
        let err = HostSysfs::with_root(&*root).inspect(&addr("0000:01:00.0")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bound to nvme, not to vfio-pci"), "{text}");
        assert!(
            text.contains("echo 0000:01:00.0 > /sys/bus/pci/devices/0000:01:00.0/driver/unbind")
        );
        assert!(text.contains("echo vfio-pci > /sys/bus/pci/devices/0000:01:00.0/driver_override"));
        assert!(text.contains("echo 0000:01:00.0 > /sys/bus/pci/drivers_probe"));
        let root = fake_sysfs(&[("0000:01:00.0", None, Some(5), 0x010802)], true);
        let text =
            HostSysfs::with_root(&*root).inspect(&addr("0000:01:00.0")).unwrap_err().to_string();
        assert!(text.contains("not bound to a driver") && !text.contains("unbind"), "{text}");
    }

    #[test]
    fn group_mates_held_by_host_drivers_are_listed() {
        let root = fake_sysfs(
            &[
                ("0000:01:00.0", Some("vfio-pci"), Some(7), 0x030000),
                ("0000:01:00.1", Some("snd_hda_intel"), Some(7), 0x040300),
                ("0000:01:00.2", Some("xhci_hcd"), Some(7), 0x0c0330),
            ],
            true,
        );
        let err = HostSysfs::with_root(&*root).inspect(&addr("0000:01:00.0")).unwrap_err();
        assert_eq!(
            err,
            HostDeviceError::GroupNotViable {
                address: addr("0000:01:00.0"),
                group: 7,
                offenders: vec![
                    (addr("0000:01:00.1"), "snd_hda_intel".into()),
                    (addr("0000:01:00.2"), "xhci_hcd".into())
                ],
            }
        );
        assert!(err.to_string().contains("0000:01:00.1 (snd_hda_intel), 0000:01:00.2 (xhci_hcd)"));
    }

    #[test]
    fn hex_attributes_and_capabilities() {
        assert_eq!(parse_hex("0x1b36\n"), Some(0x1b36));
        assert_eq!(parse_hex("\t000001ffffffffff"), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_hex("0xz"), None);
        assert!(has_cap_ipc_lock("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(has_cap_ipc_lock("CapEff:\t0000000000004000\n"));
        assert!(!has_cap_ipc_lock("CapEff:\t0000000000000000\n"));
        assert!(!has_cap_ipc_lock("CapPrm:\t0000000000004000\n"));
        let root = fake_sysfs(&[("0000:01:00.0", Some("vfio-pci"), Some(1), 0x010802)], true);
        let dir = root.join("sys/bus/pci/devices/0000:01:00.0");
        assert_eq!(read_hex(&dir.join("class")), Ok(0x010802));
        std::fs::write(dir.join("vendor"), "nope\n").unwrap();
        let err = read_hex(&dir.join("vendor")).unwrap_err();
        assert!(err.to_string().ends_with("vendor: not a hex number: \"nope\""), "{err}");
        let err = read_hex(&dir.join("missing")).unwrap_err();
        assert_eq!(
            err,
            HostDeviceError::Sysfs {
                path: dir.join("missing"),
                source: SysfsReadError::Os { errno: libc::ENOENT }
            }
        );
        assert!(err.to_string().contains("No such file or directory"), "{err}");
    }

    #[test]
    fn missing_device_group_or_vfio() {
        let root = fake_sysfs(&[("0000:01:00.0", Some("vfio-pci"), None, 0x010802)], true);
        let sysfs = HostSysfs::with_root(&*root);
        assert_eq!(
            sysfs.inspect(&addr("0000:02:00.0")),
            Err(HostDeviceError::NotFound(addr("0000:02:00.0")))
        );
        let err = sysfs.inspect(&addr("0000:01:00.0")).unwrap_err();
        assert_eq!(err, HostDeviceError::NoIommuGroup(addr("0000:01:00.0")));
        assert!(err.to_string().contains("IOMMU"));
        let root = fake_sysfs(&[("0000:01:00.0", Some("vfio-pci"), Some(1), 0x010802)], false);
        let err = HostSysfs::with_root(&*root).inspect(&addr("0000:01:00.0")).unwrap_err();
        assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
    }
}
