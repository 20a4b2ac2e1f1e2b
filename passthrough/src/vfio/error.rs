//! Errors of the VFIO backend, each with what to do about it.

use std::path::PathBuf;

use crate::pci_address::PciAddress;

/// A VFIO failure.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// `/dev/vfio/vfio` could not be opened.
    #[error(
        "cannot open {path}: {source}; load VFIO with `modprobe vfio-pci` and run Aperture as \
         root (or give your user access to /dev/vfio)"
    )]
    OpenContainer {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel speaks another VFIO API.
    #[error("the host's VFIO API version is {0}, Aperture needs version 0")]
    ApiVersion(i32),
    /// No type1 IOMMU backend.
    #[error(
        "the host's VFIO has no type1 IOMMU backend: load it with `modprobe vfio_iommu_type1` \
         and check that the host has an IOMMU (`dmesg | grep -i -e iommu -e smmu`)"
    )]
    NoType1Iommu,
    /// The group file is held by another process.
    #[error(
        "PCI device {address} is busy: its IOMMU group {group} ({path}) is in use by another \
         process, probably another VM; stop it first (`fuser -v {path}` shows who holds it)"
    )]
    GroupBusy {
        /// The device asked for.
        address: PciAddress,
        /// Its group.
        group: u32,
        /// The group file.
        path: PathBuf,
    },
    /// The group file could not be opened.
    #[error(
        "cannot open {path} (IOMMU group {group} of {address}): {source}; run Aperture as root \
         or give your user the group file (`chown $USER {path}`)"
    )]
    OpenGroup {
        /// The device asked for.
        address: PciAddress,
        /// Its group.
        group: u32,
        /// The group file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel says the group is not viable.
    #[error(
        "IOMMU group {group} of {address} is not viable: every device in \
         /sys/kernel/iommu_groups/{group}/devices must be bound to vfio-pci or have no driver"
    )]
    GroupNotViable {
        /// The device asked for.
        address: PciAddress,
        /// Its group.
        group: u32,
    },
    /// The device is already open elsewhere.
    #[error(
        "PCI device {address} is busy: another process (probably another VM) has it open, or \
         the host still holds it; stop the other user first"
    )]
    DeviceBusy {
        /// The device.
        address: PciAddress,
    },
    /// Pinning guest memory for DMA needs more locked memory than allowed.
    #[error(
        "PCI passthrough pins all guest memory ({needed} MiB) for device DMA, but this process \
         may lock only {limit} MiB (RLIMIT_MEMLOCK); raise the limit (`ulimit -l unlimited`, or \
         `prlimit --memlock=unlimited --pid $$`, or LimitMEMLOCK= in a systemd unit) or run as \
         root"
    )]
    MemlockTooLow {
        /// MiB needed.
        needed: u64,
        /// MiB allowed.
        limit: u64,
    },
    /// A VFIO call failed.
    #[error("{what}: {source}")]
    Call {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl VfioError {
    /// Wraps an OS error with what was being done.
    pub fn call(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Call { what: what.into(), source }
    }
}

/// Checks before pinning `needed` bytes that RLIMIT_MEMLOCK (`limit` bytes, `None` when
/// unlimited) allows it; `privileged` (CAP_IPC_LOCK) processes are not limited.
pub fn check_memlock(needed: u64, limit: Option<u64>, privileged: bool) -> Result<(), VfioError> {
    match limit {
        Some(limit) if !privileged && limit < needed => {
            Err(VfioError::MemlockTooLow { needed: needed.div_ceil(1 << 20), limit: limit >> 20 })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_check_names_the_limit_and_the_fix() {
        let err = check_memlock(512 << 20, Some(64 << 20), false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("512 MiB"), "{text}");
        assert!(text.contains("only 64 MiB"), "{text}");
        assert!(text.contains("ulimit -l unlimited"), "{text}");
        assert!(check_memlock(512 << 20, Some(64 << 20), true).is_ok());
        assert!(check_memlock(512 << 20, None, false).is_ok());
        assert!(check_memlock(512 << 20, Some(512 << 20), false).is_ok());
    }

    #[test]
    fn busy_errors_say_what_to_do() {
        let address: PciAddress = "0000:01:00.0".parse().unwrap();
        let text =
            VfioError::GroupBusy { address, group: 7, path: "/dev/vfio/7".into() }.to_string();
        assert!(text.contains("busy") && text.contains("fuser -v /dev/vfio/7"), "{text}");
        let text = VfioError::DeviceBusy { address }.to_string();
        assert!(text.contains("0000:01:00.0 is busy"), "{text}");
    }
}
