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
use pci_ids::PciNames;
pub use render::{json, table};

/// sysfs resource flags (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x10_0000;
/// The expansion ROM's line in a function's `resource` file, after the six BARs.
const ROM_LINE: usize = 6;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Mem32,
    /// Memory anywhere (a 64-bit BAR, taking two slots).
    Mem64,
    /// The expansion ROM.
    Rom,
}

impl BarKind {
    /// Its name in listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Mem32 => "mem32",
            Self::Mem64 => "mem64",
            Self::Rom => "rom",
        }
    }
}

/// One BAR (or the ROM) with a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR number, 6 for the ROM.
    pub index: usize,
    /// What it decodes.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size in bytes.
    pub size: u64,
}

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
    #[error("cannot read {path}: {source}; is sysfs mounted (mount -t sysfs sysfs /sys)?")]
    Sysfs {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// This platform lists devices another way.
    #[error("{0}")]
    Unsupported(String),
}

/// A sysfs hex attribute (`0x1b36`).
pub fn read_hex(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// A short name for a 24-bit class code.
pub fn class_name(class: u32) -> &'static str {
    let (base, sub) = ((class >> 16) as u8, (class >> 8) as u8);
    match (base, sub) {
        (0x01, 0x00) => "SCSI",
        (0x01, 0x01) => "IDE",
        (0x01, 0x04) => "RAID",
        (0x01, 0x06) => "SATA",
        (0x01, 0x07) => "SAS",
        (0x01, 0x08) => "NVMe",
        (0x01, _) => "storage",
        (0x02, 0x00) => "Ethernet",
        (0x02, _) => "network",
        (0x03, 0x00) => "VGA",
        (0x03, 0x02) => "3D",
        (0x03, _) => "display",
        (0x04, 0x01 | 0x03) => "audio",
        (0x04, _) => "multimedia",
        (0x05, _) => "memory",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "bridge",
        (0x07, _) => "communication",
        (0x08, _) => "system",
        (0x09, _) => "input",
        (0x0c, 0x03) => "USB",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "serial bus",
        (0x0d, _) => "wireless",
        (0x10, _) => "crypto",
        (0x11, _) => "signal processing",
        (0x12, _) => "accelerator",
        (0x00, _) => "unclassified",
        _ => "other",
    }
}

/// The BARs and ROM in a sysfs `resource` file (`start end flags` per line, in hex).
pub fn parse_resources(text: &str) -> Vec<Bar> {
    let mut bars = Vec::new();
    for (index, line) in text.lines().enumerate().take(ROM_LINE + 1) {
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .collect();
        let [start, end, flags] = fields[..] else { continue };
        // Unused slots (and the upper half of a 64-bit BAR) are all zeros.
        if flags == 0 || end == 0 || end < start {
            continue;
        }
        let kind = if index == ROM_LINE {
            BarKind::Rom
        } else if flags & IORESOURCE_IO != 0 {
            BarKind::Io
        } else if flags & IORESOURCE_MEM == 0 {
            continue;
        } else if flags & IORESOURCE_MEM_64 != 0 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        };
        // The kernel marks ROMs prefetchable too; only memory BARs say something by it.
        let memory = matches!(kind, BarKind::Mem32 | BarKind::Mem64);
        let prefetchable = memory && flags & IORESOURCE_PREFETCH != 0;
        bars.push(Bar { index, kind, prefetchable, size: end - start + 1 });
    }
    bars
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
        .map_err(|source| DevicesError::Sysfs { path: dir.display().to_string(), source })?;
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
    Ok(crate::check::macos::dext_listing(as_json))
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
