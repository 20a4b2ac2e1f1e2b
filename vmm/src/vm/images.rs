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

#[cfg(test)]
mod tests {
    use arch::layout::GuestRegion;

    use super::*;
    use crate::hypervisor::fake::FakeHypervisor;
    use crate::hypervisor::{Hypervisor, VmSpec};
    use crate::memory::MemoryError;

    const RAM_BASE: u64 = 0x4000_0000;
    const RAM_BYTES: u64 = 16 << 20;

    /// A file in the temp directory holding `bytes`, removed when dropped; a name of its own
    /// per call, as the tests run in parallel in one process (one shrinks its initrd).
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> Self {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("aperture-images-{name}-{}-{n}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A minimal raw arm64 Image: the 64-byte header and some padding.
    fn kernel_file() -> TempFile {
        let mut image = vec![0u8; 4096];
        image[16..24].copy_from_slice(&(2u64 << 20).to_le_bytes()); // image_size
        image[24..32].copy_from_slice(&0b1010u64.to_le_bytes()); // LE, 4K pages, anywhere
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        TempFile::new("kernel", &image)
    }

    fn ram() -> Arc<GuestRam> {
        let vm = FakeHypervisor::default().create_vm(&VmSpec { ipa_bits: 40, tso: false }).unwrap();
        Arc::new(GuestRam::new(vm.as_ref(), RAM_BASE, RAM_BYTES).unwrap())
    }

    /// The kernel at the start of RAM, the initrd (`initrd_size` bytes) at `initrd_base`.
    fn plan(initrd_base: u64, initrd_size: u64) -> BootPlan {
        BootPlan {
            kernel_load: RAM_BASE,
            kernel_end: RAM_BASE + (2 << 20),
            initrd: Some(GuestRegion { base: initrd_base, size: initrd_size }),
            fdt: GuestRegion { base: RAM_BASE + RAM_BYTES - (2 << 20), size: 2 << 20 },
        }
    }

    /// Loads the kernel and an initrd of `initrd_bytes` that shrinks to `shrink_to` bytes
    /// once opened, at `initrd_base` of `ram`, on the loader thread.
    fn load(
        ram: &Arc<GuestRam>,
        initrd_bytes: usize,
        shrink_to: usize,
        initrd_base: u64,
    ) -> Result<(), VmError> {
        let kernel_path = kernel_file();
        let kernel = KernelFile::open(&kernel_path.0).unwrap();
        let initrd_path = TempFile::new("initrd", &vec![0x5a; initrd_bytes]);
        let initrd = InitrdFile::open(&initrd_path.0).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&initrd_path.0)
            .unwrap()
            .set_len(shrink_to as u64)
            .unwrap();
        let plan = plan(initrd_base, initrd.len());
        ImageLoad::start(ram.clone(), plan, kernel, Some(initrd)).unwrap().finish().map(|_| ())
    }

    #[test]
    fn the_loader_thread_loads_the_kernel_and_initrd_and_hands_the_files_back() {
        let ram = ram();
        load(&ram, 300_000, 300_000, RAM_BASE + (4 << 20)).unwrap();
        let read = |addr: u64, len: usize| {
            let mut bytes = vec![0u8; len];
            vm_memory::Bytes::read_slice(ram.memory(), &mut bytes, vm_memory::GuestAddress(addr))
                .unwrap();
            bytes
        };
        assert_eq!(read(RAM_BASE + 0x38, 4), b"ARM\x64");
        assert_eq!(read(RAM_BASE + (4 << 20), 300_000), vec![0x5a; 300_000]);
    }

    #[test]
    fn an_initrd_that_shrinks_after_it_was_opened_comes_back_as_an_error() {
        let err = load(&ram(), 300_000, 1000, RAM_BASE + (4 << 20)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the initrd file is 1000 bytes now, 300000 when Aperture opened it: it changed while \
             being loaded; run again once nothing writes to it"
        );
    }

    #[test]
    fn an_initrd_past_the_end_of_ram_comes_back_as_an_error() {
        let err = load(&ram(), 300_000, 300_000, RAM_BASE + RAM_BYTES - 4096).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, VmError::Memory(MemoryError::Write { what: "initrd", .. })),
            "{message}"
        );
        assert!(message.starts_with("could not write the initrd at guest address"), "{message}");
    }
}
