//! `aperture devices`: the host's PCI devices from sysfs, with names (from pci.ids when the
//! host has it), class, driver, IOMMU group, BARs, and whether Aperture can assign each one
//! now (what `aperture run --device` checks, through [`HostSysfs::inspect`]).
//!
//! Everything is read under a root directory, so tests use fake trees.

pub mod pci_ids;
mod render;

use std::collections::BTreeSet;
use std::path::Path;

use passthrough::{HostDeviceError, HostSysfs, PciAddress};

use crate::cli::DevicesArgs;
pub use crate::host::pci::{class_name, parse_resources, read_hex, Bar, BarSpace};
use pci_ids::PciNames;
pub use render::{json, table};

/// Whether Aperture can assign a device now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignable {
    /// `--device` would take it.
    Yes,
    /// It would not.
    No {
        /// Why, in a few words.
        reason: String,
        /// Aperture's full message, with the fix.
        message: String,
    },
}

/// One PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// Its address.
    pub address: PciAddress,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Vendor name, from pci.ids.
    pub vendor_name: Option<String>,
    /// Device name, from pci.ids.
    pub device_name: Option<String>,
    /// 24-bit class code.
    pub class: u32,
    /// The bound driver.
    pub driver: Option<String>,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// BARs with a size, and the ROM.
    pub bars: Vec<Bar>,
    /// Whether `--device` would take it now.
    pub assignable: Assignable,
}

/// sysfs cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// The PCI devices directory cannot be read.
    #[error("cannot read {}: {source}; is sysfs mounted (mount -t sysfs sysfs /sys)?", .path.display())]
    Sysfs {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// This platform lists devices another way.
    #[error("{0}")]
    Unsupported(String),
}

/// Why `error` keeps a device from being assigned, in a few words.
fn short_reason(error: &HostDeviceError) -> String {
    match error {
        HostDeviceError::NotFound(_) => "gone from sysfs".into(),
        HostDeviceError::NotBoundToVfio { driver: Some(driver), .. } => {
            format!("bound to {driver}, not vfio-pci")
        }
        HostDeviceError::NotBoundToVfio { driver: None, .. } => "no driver, not vfio-pci".into(),
        HostDeviceError::NoIommuGroup(_) => "no IOMMU group (IOMMU off)".into(),
        HostDeviceError::GroupNotViable { group, offenders, .. } => format!(
            "IOMMU group {group} shared with devices in use: {}",
            offenders.iter().map(|(a, d)| format!("{a} ({d})")).collect::<Vec<_>>().join(", ")
        ),
        HostDeviceError::NoVfio(_) => "VFIO not loaded (modprobe vfio-pci)".into(),
        HostDeviceError::Sysfs { .. } => error.to_string(),
    }
}

/// Whether Aperture can assign the device now.
fn assignable(sysfs: &HostSysfs, address: &PciAddress, class: u32) -> Assignable {
    if class >> 16 == 0x06 {
        let reason = "bridges cannot be assigned".to_string();
        return Assignable::No { message: reason.clone(), reason };
    }
    match sysfs.inspect(address) {
        Ok(_) => Assignable::Yes,
        Err(e) => Assignable::No { reason: short_reason(&e), message: e.to_string() },
    }
}

/// Every PCI function under `root`'s sysfs, in address order, with names from its pci.ids.
pub fn scan(root: &Path) -> Result<Vec<PciDevice>, DevicesError> {
    let dir = root.join("sys/bus/pci/devices");
    let entries = std::fs::read_dir(&dir)
        .map_err(|source| DevicesError::Sysfs { path: dir.clone(), source })?;
    let mut addresses: Vec<PciAddress> =
        entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    addresses.sort();
    let sysfs = HostSysfs::with_root(root);
    let mut devices = Vec::new();
    for address in addresses {
        let dev = dir.join(address.to_string());
        let (Some(vendor), Some(device), Some(class)) = (
            read_hex(&dev.join("vendor")),
            read_hex(&dev.join("device")),
            read_hex(&dev.join("class")),
        ) else {
            log::debug!("{address}: no vendor, device or class in sysfs; skipped");
            continue;
        };
        let iommu_group = std::fs::read_link(dev.join("iommu_group"))
            .ok()
            .and_then(|target| target.file_name()?.to_str()?.parse().ok());
        let resources = std::fs::read_to_string(dev.join("resource")).unwrap_or_default();
        devices.push(PciDevice {
            address,
            vendor_id: vendor as u16,
            device_id: device as u16,
            vendor_name: None,
            device_name: None,
            class,
            driver: sysfs.driver(&address),
            iommu_group,
            bars: parse_resources(&resources),
            assignable: assignable(&sysfs, &address, class),
        });
    }
    let vendors: BTreeSet<u16> = devices.iter().map(|d| d.vendor_id).collect();
    let names = PciNames::load(root, &vendors);
    for device in &mut devices {
        device.vendor_name = names.vendor(device.vendor_id).map(str::to_owned);
        device.device_name = names.device(device.vendor_id, device.device_id).map(str::to_owned);
    }
    Ok(devices)
}

#[cfg(target_os = "linux")]
fn listing(as_json: bool) -> Result<String, DevicesError> {
    let devices = scan(Path::new("/"))?;
    Ok(if as_json { json(&devices) } else { table(&devices) })
}

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
fn listing(as_json: bool) -> Result<String, DevicesError> {
    Ok(render::dext_listing(&crate::host::sys::dext_survey(), as_json))
}

#[cfg(not(any(target_os = "linux", all(target_os = "macos", target_arch = "aarch64"))))]
fn listing(_as_json: bool) -> Result<String, DevicesError> {
    Err(DevicesError::Unsupported(format!(
        "Aperture cannot list PCI devices on {}",
        std::env::consts::OS
    )))
}

/// Lists the host's devices on stdout; returns the exit status.
// A report for people and scripts: it goes to stdout.
#[allow(clippy::print_stdout)]
pub fn run(args: &DevicesArgs) -> i32 {
    match listing(args.json) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("aperture: error: {e}");
            1
        }
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests;
