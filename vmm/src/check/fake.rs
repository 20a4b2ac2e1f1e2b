//! A fake Linux host for the checks' tests: a fake tree, scripted open errors and KVM answers.

use std::path::Path;

use super::linux::{HostEnv, KvmCaps, KvmProbe};
use crate::host::fake::FakeTree;

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
