//! A scratch disk image for virtio-blk: a temporary file, unlinked at once so that no run
//! leaves files behind, shared by every input of a fuzzing process.

use std::fs::{File, OpenOptions};
use std::sync::OnceLock;

/// Sectors in the scratch image.
pub const IMAGE_SECTORS: u64 = 16;
/// Bytes in the scratch image.
pub const IMAGE_LEN: usize = IMAGE_SECTORS as usize * 512;

static IMAGE: OnceLock<File> = OnceLock::new();

/// A new handle on the process's scratch image (read-write).
pub fn scratch_image() -> File {
    let file = IMAGE.get_or_init(|| {
        // tmpfs if there is one: FLUSH requests fsync the image.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let path = dir.join(format!("aperture-fuzz-{}-{:p}.img", std::process::id(), &IMAGE));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // Unlinked: the open handle keeps it alive until the process ends.
        let _ = std::fs::remove_file(&path);
        let pattern: Vec<u8> = (0..IMAGE_LEN).map(|i| (i % 251) as u8).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &pattern, 0)
            .unwrap_or_else(|e| panic!("cannot fill {}: {e}", path.display()));
        file
    });
    file.try_clone().unwrap_or_else(|e| panic!("cannot reopen the scratch image: {e}"))
}

/// The scratch image's current contents.
pub fn image_contents(file: &File) -> Vec<u8> {
    let mut buf = vec![0u8; IMAGE_LEN + 1];
    let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, 0).unwrap_or(0);
    buf.truncate(n);
    buf
}
