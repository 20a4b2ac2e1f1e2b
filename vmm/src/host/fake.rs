//! Fake sysfs/procfs/dev trees for the tests of `aperture check` and `aperture devices`.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

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
        let root = std::env::temp_dir().join(format!("aperture-host-{}-{n}", std::process::id()));
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
