//! The Linux host's checks: /dev/kvm and what KVM offers, the IOMMU, VFIO, locked memory, and
//! each `--device` ([`super::device`]). Everything is read under [`HostEnv::root`], so tests
//! run the checks on fake sysfs/procfs/dev trees.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use passthrough::dma::Bytes;
use passthrough::sysfs::has_cap_ipc_lock;
use passthrough::vfio::check_memlock;

use super::{device, ipa_finding, kernel, CheckOptions, Finding};

/// What KVM offers that Aperture uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmCaps {
    /// The largest guest physical address size, in bits.
    pub ipa_bits: u32,
    /// Whether the kernel has KVM_CAP_ARM_VM_IPA_SIZE (without it, every VM gets 40 bits).
    pub ipa_cap: bool,
    /// An in-kernel GICv3 can be created (KVM_DEV_TYPE_ARM_VGIC_V3).
    pub gic_v3: bool,
    /// Its ITS can be created (KVM_DEV_TYPE_ARM_VGIC_ITS).
    pub its: bool,
    /// KVM_CAP_IRQFD.
    pub irqfd: bool,
    /// KVM_CAP_SIGNAL_MSI.
    pub signal_msi: bool,
}

/// What the KVM probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    /// Aperture has no KVM backend for this CPU architecture.
    Unsupported(&'static str),
    /// KVM could not be asked (the reason).
    Failed(String),
    /// KVM answered.
    Caps(KvmCaps),
}

/// The host as the checks see it.
pub trait HostEnv {
    /// Where sysfs, procfs and /dev are (`/` on a real host).
    fn root(&self) -> &Path;
    /// Opens `path` read-write and closes it at once: may this process use it, and is it free?
    fn try_open(&self, path: &Path) -> std::io::Result<()>;
    /// Asks KVM what it offers.
    fn probe_kvm(&self) -> KvmProbe;
    /// The kernel release (`uname -r`), if known.
    fn kernel_release(&self) -> Option<String>;
}

/// This host.
#[derive(Debug, Clone)]
pub struct RealHost {
    root: PathBuf,
}

impl Default for RealHost {
    fn default() -> Self {
        Self { root: PathBuf::from("/") }
    }
}

impl HostEnv for RealHost {
    fn root(&self) -> &Path {
        &self.root
    }

    fn try_open(&self, path: &Path) -> std::io::Result<()> {
        OpenOptions::new().read(true).write(true).open(path).map(drop)
    }

    fn probe_kvm(&self) -> KvmProbe {
        #[cfg(target_arch = "aarch64")]
        return super::sys::linux::probe(&self.root.join("dev/kvm"));
        #[cfg(not(target_arch = "aarch64"))]
        KvmProbe::Unsupported(std::env::consts::ARCH)
    }

    fn kernel_release(&self) -> Option<String> {
        // SAFETY: utsname is plain bytes, all-zero is a valid value.
        let mut names: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the struct we own and touches nothing else.
        if unsafe { libc::uname(&mut names) } != 0 {
            return None;
        }
        // c_char is i8 on some targets and u8 on others; the bytes are the same.
        let bytes: Vec<u8> =
            names.release.iter().take_while(|&&c| c != 0).map(|&c| c.to_ne_bytes()[0]).collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Every check for `options` on `env`.
pub fn check_host(env: &dyn HostEnv, options: &CheckOptions) -> Vec<Finding> {
    let mut findings = vec![kvm_node(env)];
    let usable = findings[0].status == super::Status::Ok;
    findings.extend(kvm_backend(env.probe_kvm(), usable, options.memory_bytes));
    // Without --device, passthrough is optional: what it lacks is only a warning.
    let passthrough = !options.devices.is_empty();
    findings.push(iommu(env.root(), passthrough));
    findings.push(vfio(env, passthrough));
    if passthrough {
        findings.push(memlock(env.root(), options.memory_bytes));
        findings.push(kernel::bar_memory_type(env.kernel_release().as_deref()));
        for address in &options.devices {
            findings.extend(device::check_device(env, address));
        }
    }
    findings
}

/// /dev/kvm exists and this process may open it.
fn kvm_node(env: &dyn HostEnv) -> Finding {
    const WHAT: &str = "/dev/kvm";
    let Err(e) = env.try_open(&env.root().join("dev/kvm")) else {
        return Finding::ok(WHAT, "present, and this user may open it");
    };
    match e.raw_os_error() {
        Some(libc::ENOENT) => Finding::fail(
            WHAT,
            "missing: the kernel runs without KVM",
            "boot an arm64 Linux host with virtualization (EL2) available and KVM enabled \
             (CONFIG_KVM); `dmesg | grep -i kvm` says why KVM is off",
        ),
        Some(libc::EACCES | libc::EPERM) => Finding::fail(
            WHAT,
            "permission denied",
            "sudo usermod -aG kvm $USER, then log in again (or run Aperture as root)",
        ),
        _ => Finding::fail(
            WHAT,
            format!("cannot open it: {e}"),
            "check `ls -l /dev/kvm` and `dmesg | grep -i kvm`",
        ),
    }
}

/// What KVM offers; nothing more when /dev/kvm is not `usable` (its line says why).
fn kvm_backend(probe: KvmProbe, usable: bool, memory_bytes: u64) -> Vec<Finding> {
    let caps = match (probe, usable) {
        (KvmProbe::Unsupported(arch), _) => {
            return vec![Finding::fail(
                "KVM backend",
                format!("no KVM backend for this architecture ({arch}): Aperture runs arm64 guests on arm64 hosts"),
                "run Aperture on an arm64 Linux host (elsewhere, images/boot-demo.sh runs it in \
                 an emulated arm64 host)",
            )]
        }
        (_, false) => return Vec::new(),
        (KvmProbe::Failed(reason), true) => {
            return vec![Finding::fail("KVM", reason, "check `dmesg | grep -i kvm`")]
        }
        (KvmProbe::Caps(caps), true) => caps,
    };
    let mut ipa = ipa_finding("KVM IPA size", caps.ipa_bits, memory_bytes);
    if !caps.ipa_cap {
        ipa.detail.push_str(" (the kernel has no KVM_CAP_ARM_VM_IPA_SIZE: VMs get 40 bits)");
    }
    let update = "update the host kernel (every arm64 distribution kernel since Linux 4.8 has it)";
    let cap = |present: bool, what: &str, ok: &str, missing: &str, fix: &str| {
        if present {
            Finding::ok(what, ok)
        } else {
            Finding::fail(what, missing, fix)
        }
    };
    vec![
        ipa,
        cap(
            caps.gic_v3,
            "KVM GICv3",
            "an in-kernel GICv3 can be created (KVM_DEV_TYPE_ARM_VGIC_V3)",
            "KVM cannot create an in-kernel GICv3 (KVM_DEV_TYPE_ARM_VGIC_V3)",
            "Aperture needs a host with a GICv3 (KVM cannot give a GICv2 host's guests a \
             GICv3); `dmesg | grep -i gic` shows the host's",
        ),
        cap(
            caps.its,
            "KVM ITS",
            "a GICv3 ITS can be created (KVM_DEV_TYPE_ARM_VGIC_ITS) for guest MSIs",
            "KVM cannot create a GICv3 ITS (KVM_DEV_TYPE_ARM_VGIC_ITS): guest MSIs need it",
            update,
        ),
        cap(
            caps.irqfd,
            "KVM irqfd",
            "KVM_CAP_IRQFD: device interrupts reach the guest without a trip through Aperture",
            "no KVM_CAP_IRQFD: device interrupts need it",
            update,
        ),
        cap(
            caps.signal_msi,
            "KVM MSI injection",
            "KVM_CAP_SIGNAL_MSI",
            "no KVM_CAP_SIGNAL_MSI: emulated devices' MSIs need it",
            update,
        ),
    ]
}

/// Names of the entries of `dir` (none if it cannot be read), sorted.
pub(crate) fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An IOMMU: units in /sys/class/iommu, or IOMMU groups.
fn iommu(root: &Path, required: bool) -> Finding {
    const WHAT: &str = "IOMMU";
    let units = entries(&root.join("sys/class/iommu"));
    let groups = entries(&root.join("sys/kernel/iommu_groups")).len();
    if units.is_empty() && groups == 0 {
        return Finding::fail_if(
            required,
            WHAT,
            "none: /sys/class/iommu and /sys/kernel/iommu_groups are empty; PCI passthrough \
             needs one",
            "enable the IOMMU, then reboot:\n\
             arm64: the SMMU in the firmware (ACPI IORT or device tree), arm-smmu-v3 in the kernel\n\
             x86: intel_iommu=on or amd_iommu=on on the kernel command line\n\
             `dmesg | grep -i -e iommu -e smmu` shows what the kernel found",
        );
    }
    let units = if units.is_empty() { "present".to_string() } else { units.join(", ") };
    Finding::ok(WHAT, format!("{units} ({groups} IOMMU groups)"))
}

/// The VFIO container node and the vfio-pci driver.
fn vfio(env: &dyn HostEnv, required: bool) -> Finding {
    const WHAT: &str = "VFIO";
    let root = env.root();
    let node = root.join("dev/vfio/vfio");
    let missing: Vec<&str> = [
        (node.exists(), "/dev/vfio/vfio"),
        (root.join("sys/bus/pci/drivers/vfio-pci").is_dir(), "the vfio-pci driver"),
    ]
    .into_iter()
    .filter_map(|(present, name)| (!present).then_some(name))
    .collect();
    if !missing.is_empty() {
        return Finding::fail_if(
            required,
            WHAT,
            format!("{} missing: VFIO is not loaded", missing.join(" and ")),
            "modprobe vfio-pci",
        );
    }
    match env.try_open(&node) {
        Ok(()) => Finding::ok(WHAT, "/dev/vfio/vfio and the vfio-pci driver are present"),
        Err(e) => Finding::fail_if(
            required,
            WHAT,
            format!("cannot open /dev/vfio/vfio: {e}"),
            "run Aperture as root (or give your user access to /dev/vfio)",
        ),
    }
}

/// The soft RLIMIT_MEMLOCK from procfs `limits`: `Some(None)` when unlimited, `None` when
/// it cannot be read.
pub(crate) fn parse_memlock(limits: &str) -> Option<Option<u64>> {
    let line = limits.lines().find_map(|l| l.strip_prefix("Max locked memory"))?;
    match line.split_whitespace().next()? {
        "unlimited" => Some(None),
        value => value.parse().ok().map(Some),
    }
}

/// RLIMIT_MEMLOCK lets this process pin the guest RAM (identity DMA maps all of it).
fn memlock(root: &Path, needed: u64) -> Finding {
    const WHAT: &str = "locked memory";
    let proc_self = root.join("proc/self");
    let privileged = std::fs::read_to_string(proc_self.join("status"))
        .is_ok_and(|status| has_cap_ipc_lock(&status));
    let limits = std::fs::read_to_string(proc_self.join("limits")).ok();
    let pinned = Bytes(needed).to_string();
    let Some(limit) = limits.as_deref().and_then(parse_memlock) else {
        if privileged {
            return Finding::ok(WHAT, format!("CAP_IPC_LOCK: no limit on pinning {pinned}"));
        }
        return Finding::warn(
            WHAT,
            "cannot read RLIMIT_MEMLOCK from /proc/self/limits",
            format!("check that `ulimit -l` allows {pinned} (the guest RAM)"),
        );
    };
    let fix = "ulimit -l unlimited (or prlimit --memlock=unlimited --pid $$, or \
               LimitMEMLOCK=infinity in a systemd unit), or run Aperture as root";
    match (check_memlock(needed, limit, privileged), limit) {
        (Err(_), Some(limit)) => Finding::fail(
            WHAT,
            format!(
                "RLIMIT_MEMLOCK allows {}, but passthrough pins all {pinned} of guest RAM \
                 (--memory) for device DMA",
                Bytes(limit)
            ),
            fix,
        ),
        _ if privileged => Finding::ok(
            WHAT,
            format!("running with CAP_IPC_LOCK: no limit on pinning the {pinned} of guest RAM"),
        ),
        (_, None) => Finding::ok(
            WHAT,
            format!("RLIMIT_MEMLOCK is unlimited: enough to pin the {pinned} of guest RAM"),
        ),
        (_, Some(limit)) => Finding::ok(
            WHAT,
            format!(
                "RLIMIT_MEMLOCK allows {}: enough to pin the {pinned} of guest RAM",
                Bytes(limit)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{full_caps, FakeHost};
    use super::super::Status;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn options(devices: &[&str]) -> CheckOptions {
        CheckOptions {
            devices: devices.iter().map(|d| d.parse().unwrap()).collect(),
            memory_bytes: 512 * MIB,
        }
    }

    fn find<'a>(findings: &'a [Finding], what: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.what == what)
            .unwrap_or_else(|| panic!("no {what} in {findings:?}"))
    }

    #[test]
    fn kvm_node_present_missing_or_forbidden() {
        let mut host = FakeHost::new();
        let f = kvm_node(&host);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("missing") && f.fix.as_deref().unwrap().contains("EL2"), "{f}");
        host.tree.file("dev/kvm", "");
        assert_eq!(kvm_node(&host).status, Status::Ok);
        host.open_errors.push(("dev/kvm".into(), libc::EACCES));
        let f = kvm_node(&host);
        assert_eq!(f.status, Status::Fail);
        assert_eq!(f.detail, "permission denied");
        assert!(f.fix.as_deref().unwrap().contains("usermod -aG kvm $USER"), "{f}");
        host.open_errors[0].1 = libc::EIO;
        assert!(kvm_node(&host).detail.contains("cannot open it"));
    }

    #[test]
    fn kvm_capabilities() {
        let all = kvm_backend(KvmProbe::Caps(full_caps()), true, 512 * MIB);
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|f| f.status == Status::Ok), "{all:?}");
        assert!(find(&all, "KVM IPA size").detail.starts_with("44 bits"));
        for (what, caps) in [
            ("KVM GICv3", KvmCaps { gic_v3: false, ..full_caps() }),
            ("KVM ITS", KvmCaps { its: false, ..full_caps() }),
            ("KVM irqfd", KvmCaps { irqfd: false, ..full_caps() }),
            ("KVM MSI injection", KvmCaps { signal_msi: false, ..full_caps() }),
            ("KVM IPA size", KvmCaps { ipa_bits: 32, ..full_caps() }),
        ] {
            let findings = kvm_backend(KvmProbe::Caps(caps), true, 512 * MIB);
            let failed: Vec<_> = findings.iter().filter(|f| f.status == Status::Fail).collect();
            assert_eq!(failed.len(), 1, "{findings:?}");
            assert_eq!(failed[0].what, what);
            assert!(failed[0].fix.is_some());
        }
        let old = kvm_backend(
            KvmProbe::Caps(KvmCaps { ipa_bits: 40, ipa_cap: false, ..full_caps() }),
            true,
            512 * MIB,
        );
        assert!(find(&old, "KVM IPA size").detail.contains("no KVM_CAP_ARM_VM_IPA_SIZE"));
    }

    #[test]
    fn kvm_backend_unsupported_failed_or_skipped() {
        let f = kvm_backend(KvmProbe::Unsupported("x86_64"), false, 512 * MIB);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Fail);
        assert!(f[0].detail.starts_with("no KVM backend for this architecture (x86_64)"));
        assert!(kvm_backend(KvmProbe::Caps(full_caps()), false, 512 * MIB).is_empty());
        let f = kvm_backend(KvmProbe::Failed("KVM_CREATE_VM failed: EINVAL".into()), true, 0);
        assert_eq!(
            (f[0].status, f[0].detail.as_str()),
            (Status::Fail, "KVM_CREATE_VM failed: EINVAL")
        );
    }

    #[test]
    fn iommu_units_groups_or_none() {
        let host = FakeHost::new();
        let root = host.root();
        assert_eq!(iommu(root, false).status, Status::Warn);
        let f = iommu(root, true);
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.as_deref().unwrap().contains("intel_iommu=on"), "{f}");
        host.tree.dir("sys/kernel/iommu_groups/3");
        let f = iommu(root, true);
        assert_eq!((f.status, f.detail.as_str()), (Status::Ok, "present (1 IOMMU groups)"));
        host.tree.dir("sys/class/iommu/smmu3.0x9050000");
        assert_eq!(iommu(root, true).detail, "smmu3.0x9050000 (1 IOMMU groups)");
    }

    #[test]
    fn vfio_loaded_missing_or_forbidden() {
        let mut host = FakeHost::new();
        let f = vfio(&host, true);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.starts_with("/dev/vfio/vfio and the vfio-pci driver missing"), "{f}");
        assert_eq!(f.fix.as_deref(), Some("modprobe vfio-pci"));
        assert_eq!(vfio(&host, false).status, Status::Warn);
        host.tree.file("dev/vfio/vfio", "");
        assert!(vfio(&host, true).detail.starts_with("the vfio-pci driver missing"));
        host.tree.dir("sys/bus/pci/drivers/vfio-pci");
        assert_eq!(vfio(&host, true).status, Status::Ok);
        host.open_errors.push(("dev/vfio/vfio".into(), libc::EACCES));
        let f = vfio(&host, true);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("cannot open /dev/vfio/vfio"), "{f}");
    }

    #[test]
    fn procfs_memlock_and_capabilities() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max locked memory         8388608              8388608              bytes\n";
        assert_eq!(parse_memlock(limits), Some(Some(8 << 20)));
        assert_eq!(
            parse_memlock(
                "Max locked memory         unlimited            unlimited            bytes"
            ),
            Some(None)
        );
        assert_eq!(parse_memlock("Max open files 1024 1024 files"), None);
    }

    #[test]
    fn memlock_enough_too_low_privileged_or_unknown() {
        let host = FakeHost::new();
        let root = host.root();
        let f = memlock(root, 512 * MIB);
        assert_eq!(f.status, Status::Warn, "{f}");
        let limit = |value: &str| {
            host.tree.file(
                "proc/self/limits",
                &format!(
                    "Max locked memory         {value}              {value}              bytes\n"
                ),
            );
        };
        host.tree.file("proc/self/status", "CapEff:\t0000000000000000\n");
        limit("65536");
        let f = memlock(root, 512 * MIB);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("allows 64 KiB") && f.detail.contains("512 MiB"), "{f}");
        assert!(f.fix.as_deref().unwrap().contains("ulimit -l unlimited"), "{f}");
        limit("unlimited");
        assert!(memlock(root, 512 * MIB).detail.contains("unlimited"));
        limit("1073741824");
        let f = memlock(root, 512 * MIB);
        assert_eq!((f.status, f.detail.contains("allows 1 GiB")), (Status::Ok, true), "{f}");
        limit("65536");
        host.tree.file("proc/self/status", "CapEff:\t0000000000004000\n");
        let f = memlock(root, 512 * MIB);
        assert_eq!(f.status, Status::Ok, "{f}");
        assert!(f.detail.contains("CAP_IPC_LOCK"), "{f}");
    }

    #[test]
    fn this_hosts_kernel_release_parses() {
        let release = RealHost::default().kernel_release().unwrap();
        assert!(kernel::parse_release(&release).is_some(), "{release:?}");
    }

    #[test]
    fn passthrough_checks_only_with_devices() {
        let host = FakeHost::new();
        host.tree.file("dev/kvm", "");
        let findings = check_host(&host, &options(&[]));
        let whats: Vec<&str> = findings.iter().map(|f| f.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "/dev/kvm",
                "KVM IPA size",
                "KVM GICv3",
                "KVM ITS",
                "KVM irqfd",
                "KVM MSI injection",
                "IOMMU",
                "VFIO"
            ]
        );
        assert_eq!(super::super::exit_status(&findings), 0, "{findings:?}");
        let findings = check_host(&host, &options(&["0000:01:00.0"]));
        assert!(findings.iter().any(|f| f.what == "locked memory"));
        assert_eq!(find(&findings, kernel::WHAT).status, Status::Ok, "fake host runs 6.8");
        let old = FakeHost { kernel_release: Some("6.1.0-18-arm64".into()), ..FakeHost::new() };
        old.tree.file("dev/kvm", "");
        let findings = check_host(&old, &options(&["0000:01:00.0"]));
        let f = find(&findings, kernel::WHAT);
        assert!(f.status == Status::Warn && f.detail.contains("6.1.0-18-arm64"), "{f}");
        assert_eq!(find(&findings, "IOMMU").status, Status::Fail);
        assert_eq!(find(&findings, "0000:01:00.0").status, Status::Fail);
        assert_eq!(super::super::exit_status(&findings), 1);
    }
}
