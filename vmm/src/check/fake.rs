//! Fake sysfs/procfs/dev trees for the checks' and the device listing's tests.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::linux::{HostEnv, KvmCaps, KvmProbe};

/// A directory tree standing in for `/`; removed on drop.
#[derive(Debug)]
pub struct FakeTree {
    /// Its root.
    pub root: PathBuf,
}

impl FakeTree {
    /// An empty tree.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("aperture-check-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    /// `rel` under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A directory.
    pub fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.path(rel)).unwrap();
        self
    }

    /// A file with `contents`, and its parents.
    pub fn file(&self, rel: &str, contents: &str) -> &Self {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
        self
    }

    /// A PCI function with ids and class.
    pub fn device(&self, address: &str, vendor: u16, device: u16, class: u32) -> &Self {
        let dir = format!("sys/bus/pci/devices/{address}");
        self.file(&format!("{dir}/vendor"), &format!("0x{vendor:04x}\n"));
        self.file(&format!("{dir}/device"), &format!("0x{device:04x}\n"));
        self.file(&format!("{dir}/class"), &format!("0x{class:06x}\n"))
    }

    /// Binds `address` to `driver`.
    pub fn bind(&self, address: &str, driver: &str) -> &Self {
        let drv = self.path(&format!("sys/bus/pci/drivers/{driver}"));
        std::fs::create_dir_all(&drv).unwrap();
        symlink(&drv, self.path(&format!("sys/bus/pci/devices/{address}/driver"))).unwrap();
        self
    }

    /// Puts `address` in IOMMU group `group`.
    pub fn group(&self, address: &str, group: u32) -> &Self {
        let g = self.path(&format!("sys/kernel/iommu_groups/{group}"));
        std::fs::create_dir_all(g.join("devices")).unwrap();
        let dev = self.path(&format!("sys/bus/pci/devices/{address}"));
        symlink(&g, dev.join("iommu_group")).unwrap();
        symlink(&dev, g.join(format!("devices/{address}"))).unwrap();
        self
    }

    /// The VFIO nodes and driver, and an IOMMU unit.
    pub fn vfio_host(&self) -> &Self {
        self.file("dev/vfio/vfio", "").dir("sys/bus/pci/drivers/vfio-pci");
        self.dir("sys/class/iommu/smmu3.0x0000000009050000")
    }
}

impl Drop for FakeTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A host over a fake tree: opening a file fails with the errno set for it, else succeeds if
/// it exists; KVM answers with `kvm`.
#[derive(Debug)]
pub struct FakeHost {
    /// The tree.
    pub tree: FakeTree,
    /// (path under the root, errno) for opens that fail.
    pub open_errors: Vec<(String, i32)>,
    /// What the KVM probe says.
    pub kvm: KvmProbe,
    /// What `uname -r` says.
    pub kernel_release: Option<String>,
}

impl FakeHost {
    /// An empty tree, KVM with everything.
    pub fn new() -> Self {
        Self {
            tree: FakeTree::new(),
            open_errors: Vec::new(),
            kvm: KvmProbe::Caps(full_caps()),
            kernel_release: Some("6.8.0-45-generic".into()),
        }
    }
}

/// KVM with all Aperture uses and a 44-bit IPA.
pub fn full_caps() -> KvmCaps {
    KvmCaps { ipa_bits: 44, ipa_cap: true, gic_v3: true, its: true, irqfd: true, signal_msi: true }
}

impl HostEnv for FakeHost {
    fn root(&self) -> &Path {
        &self.tree.root
    }

    fn try_open(&self, path: &Path) -> std::io::Result<()> {
        let rel = path.strip_prefix(&self.tree.root).unwrap_or(path);
        if let Some((_, errno)) = self.open_errors.iter().find(|(p, _)| Path::new(p) == rel) {
            return Err(std::io::Error::from_raw_os_error(*errno));
        }
        std::fs::metadata(path).map(drop)
    }

    fn probe_kvm(&self) -> KvmProbe {
        self.kvm.clone()
    }

    fn kernel_release(&self) -> Option<String> {
        self.kernel_release.clone()
    }
}
