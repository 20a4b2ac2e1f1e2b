//! The kernel and initrd files, loaded into guest RAM. An uncompressed Image and the initrd go
//! straight from their files into guest RAM once it exists; only a compressed kernel is read
//! and unpacked in memory first. Reading a whole file into a buffer and copying it would touch
//! every page twice, which shows in the boot time of a large kernel.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use arch::image::{raw_layout, KernelImage, KernelLayout, RAW_HEADER_LEN};
use arch::loader::BootPlan;

use super::{read_file, VmError};
use crate::memory::GuestRam;

fn open(what: &'static str, path: &Path) -> Result<(File, u64), VmError> {
    let read_error = |source| VmError::Read { what, path: path.to_path_buf(), source };
    let file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    Ok((file, len))
}

/// The kernel, ready to load.
#[derive(Debug)]
pub(super) enum KernelFile {
    /// An uncompressed Image, loaded from its file.
    Raw { file: File, len: u64, layout: KernelLayout },
    /// A compressed kernel, unpacked.
    Unpacked(KernelImage),
}

impl KernelFile {
    /// Opens `path` and reads its header (the whole file if it is compressed).
    pub(super) fn open(path: &Path) -> Result<Self, VmError> {
        let kernel_error = |source| VmError::Kernel { path: path.to_path_buf(), source };
        let (file, len) = open("--kernel", path)?;
        let mut head = [0u8; RAW_HEADER_LEN];
        let head_len = usize::try_from(len).map_or(RAW_HEADER_LEN, |l| l.min(RAW_HEADER_LEN));
        file.read_exact_at(&mut head[..head_len], 0).map_err(|source| VmError::Read {
            what: "--kernel",
            path: path.to_path_buf(),
            source,
        })?;
        match raw_layout(&head[..head_len], len) {
            Some(layout) => Ok(Self::Raw { file, len, layout: layout.map_err(kernel_error)? }),
            None => KernelImage::from_bytes(read_file("--kernel", path)?)
                .map(Self::Unpacked)
                .map_err(kernel_error),
        }
    }

    /// Where it goes and how much room it takes.
    pub(super) fn layout(&self) -> KernelLayout {
        match self {
            Self::Raw { layout, .. } => *layout,
            Self::Unpacked(image) => image.layout(),
        }
    }

    /// How it was packaged, for the log.
    pub(super) fn format(&self) -> String {
        match self {
            Self::Raw { .. } => arch::image::ImageFormat::Raw.to_string(),
            Self::Unpacked(image) => image.format.to_string(),
        }
    }

    /// Loads it into `ram` at `addr`, again for each reboot in place.
    pub(super) fn load(&mut self, ram: &GuestRam, addr: u64) -> Result<(), VmError> {
        match self {
            Self::Raw { file, len, .. } => ram.load_file("kernel", addr, file, *len)?,
            Self::Unpacked(image) => ram.write("kernel", addr, &image.image)?,
        }
        Ok(())
    }
}

/// The initrd, ready to load.
#[derive(Debug)]
pub(super) struct InitrdFile {
    file: File,
    len: u64,
}

impl InitrdFile {
    /// Opens `path`.
    pub(super) fn open(path: &Path) -> Result<Self, VmError> {
        let (file, len) = open("--initrd", path)?;
        Ok(Self { file, len })
    }

    /// Its size in bytes.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Loads it into `ram` at `addr`, again for each reboot in place.
    pub(super) fn load(&mut self, ram: &GuestRam, addr: u64) -> Result<(), VmError> {
        Ok(ram.load_file("initrd", addr, &mut self.file, self.len)?)
    }
}

/// Loads the kernel and, when the plan has room for it, the initrd, where `plan` puts them.
pub(super) fn load_images(
    ram: &GuestRam,
    plan: &BootPlan,
    kernel: &mut KernelFile,
    initrd: Option<&mut InitrdFile>,
) -> Result<(), VmError> {
    kernel.load(ram, plan.kernel_load)?;
    if let (Some(region), Some(initrd)) = (plan.initrd, initrd) {
        initrd.load(ram, region.base)?;
    }
    Ok(())
}

/// What the loader thread hands back: the files (kept for reboots in place) and how it went.
type Loaded = (KernelFile, Option<InitrdFile>, Result<(), VmError>);

/// The first boot's kernel and initrd, copied into RAM on a thread of their own while the VM
/// is built: tens of MiB of copying (and the page faults of fresh RAM) that need nothing but
/// RAM, overlapped with the device, vCPU and GIC set-up, which need no RAM contents.
pub(super) struct ImageLoad(JoinHandle<Loaded>);

impl ImageLoad {
    /// Starts copying. The thread holds `ram`, so the mapping outlives it even when the
    /// boot fails before [`ImageLoad::finish`].
    pub(super) fn start(
        ram: Arc<GuestRam>,
        plan: BootPlan,
        mut kernel: KernelFile,
        mut initrd: Option<InitrdFile>,
    ) -> Result<Self, VmError> {
        devices::thread::named("image-load")
            .spawn(move || {
                let result = load_images(&ram, &plan, &mut kernel, initrd.as_mut());
                (kernel, initrd, result)
            })
            .map(Self)
            .map_err(|source| VmError::Thread { what: "image-load".into(), source })
    }

    /// Waits for the copy; returns the files for later boots.
    pub(super) fn finish(self) -> Result<(KernelFile, Option<InitrdFile>), VmError> {
        let (kernel, initrd, result) = self.0.join().map_err(|_| VmError::Thread {
            what: "image-load".into(),
            source: std::io::Error::other("the thread panicked"),
        })?;
        result.map(|()| (kernel, initrd))
    }
}
