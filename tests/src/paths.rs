//! Where the rig's build outputs live, relative to the workspace root.

use std::path::{Path, PathBuf};

use crate::error::RigError;

/// Paths of the rig's inputs and outputs.
#[derive(Debug, Clone)]
pub struct RigPaths {
    /// The workspace root (parent of this crate).
    pub root: PathBuf,
    /// `build/images/Image`: the kernel of both L1 and the nested guest.
    pub kernel: PathBuf,
    /// `build/rig/l1-base.cpio`: L1's initramfs without `/cases.sh`.
    pub l1_base: PathBuf,
    /// `build/rig/`: where run files and logs go.
    pub rig_dir: PathBuf,
}

impl RigPaths {
    /// Paths under the workspace that holds this crate.
    pub fn from_workspace() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().unwrap_or(manifest).to_path_buf();
        Self::under(root)
    }

    /// Paths under an explicit workspace root.
    pub fn under(root: PathBuf) -> Self {
        let rig_dir = root.join("build").join("rig");
        Self {
            kernel: root.join("build").join("images").join("Image"),
            l1_base: rig_dir.join("l1-base.cpio"),
            rig_dir,
            root,
        }
    }

    /// Fails with a message naming `tests/rig/build-rig.sh` if an input is missing.
    pub fn check(&self) -> Result<(), RigError> {
        for path in [&self.kernel, &self.l1_base] {
            if !path.is_file() {
                return Err(RigError::MissingArtifact { path: path.clone() });
            }
        }
        Ok(())
    }
}
