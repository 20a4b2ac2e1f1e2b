//! [`DeviceLock`]: one VM per device. The dext's Claim is shared and reference-counted (a
//! second client gets a "secondary claim" and the same device), so two Aperture processes
//! could both drive one GPU. Each takes an exclusive advisory lock (`flock`) on a file named
//! after the device in a run directory and writes its PID there, so the loser can say who
//! holds it. The lock goes with the file descriptor: a crashed VM leaves no stale lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::connection::DextError;
use crate::pci_address::PciAddress;

/// An exclusive lock on one PCI function, held until dropped.
#[derive(Debug)]
pub struct DeviceLock {
    path: PathBuf,
    // Closing it releases the flock.
    _file: File,
}

/// The lock file of `address` in `dir`: `aperture-<domain>-<bus>-<dev>.<fn>.lock`.
pub fn lock_path(dir: &Path, address: PciAddress) -> PathBuf {
    dir.join(format!(
        "aperture-{:04x}-{:02x}-{:02x}.{:x}.lock",
        address.domain, address.bus, address.device, address.function
    ))
}

impl DeviceLock {
    /// Takes `address`'s lock in `dir` (created if missing), or fails naming the PID that
    /// holds it.
    pub fn acquire(dir: &Path, address: PciAddress) -> Result<Self, DextError> {
        let path = lock_path(dir, address);
        let failed =
            |e: std::io::Error| DextError::Lock { path: path.clone(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(failed)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        // SAFETY: flock on a descriptor this function owns; it touches no memory.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(failed(error));
            }
            let mut text = String::new();
            let holder = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
            return Err(DextError::InUse { address, holder, path });
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .map_err(failed)?;
        Ok(Self { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The directory lock files go in: `$TMPDIR` (per user on macOS), else `/tmp`.
pub fn default_lock_dir() -> PathBuf {
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("aperture-lock-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_claim_fails_naming_the_holder_until_the_first_is_dropped() {
        let dir = dir("second");
        let address: PciAddress = "0000:03:00.0".parse().unwrap();
        let first = DeviceLock::acquire(&dir, address).unwrap();
        assert_eq!(first.path(), dir.join("aperture-0000-03-00.0.lock"));
        let pid = std::process::id();
        assert_eq!(std::fs::read_to_string(first.path()).unwrap(), format!("{pid}\n"));
        let err = DeviceLock::acquire(&dir, address).unwrap_err();
        assert!(matches!(err, DextError::InUse { holder: Some(p), .. } if p == pid), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("process {pid}")) && text.contains("0000:03:00.0"),
            "{text}"
        );
        // Another function is another lock.
        let other = DeviceLock::acquire(&dir, "0000:03:00.1".parse().unwrap()).unwrap();
        drop(first);
        let again = DeviceLock::acquire(&dir, address).unwrap();
        drop((other, again));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_holder_is_still_refused() {
        let dir = dir("garbled");
        let address: PciAddress = "0001:0a:1f.7".parse().unwrap();
        let first = DeviceLock::acquire(&dir, address).unwrap();
        std::fs::write(first.path(), "not a pid").unwrap();
        let err = DeviceLock::acquire(&dir, address).unwrap_err();
        assert!(matches!(err, DextError::InUse { holder: None, .. }), "{err:?}");
        assert!(err.to_string().contains("another process"), "{err}");
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
