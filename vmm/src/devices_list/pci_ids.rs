//! Vendor and device names from the pci.ids database (`/usr/share/misc/pci.ids` on Debian,
//! `/usr/share/hwdata/pci.ids` on Fedora), read only when devices are listed and only for the
//! ids asked for.
//!
//! The format: `vvvv  vendor name` at column 0, `\tdddd  device name` under it,
//! `\t\tssss ssss  subsystem name` below that (ignored), `#` comments, and after the vendors,
//! the class section starting with `C `.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Where distributions keep pci.ids, under a root directory.
pub const PCI_IDS_PATHS: [&str; 2] = ["usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids"];

/// Names for some vendor and device ids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PciNames {
    vendors: HashMap<u16, String>,
    devices: HashMap<(u16, u16), String>,
}

/// A `hhhh  name` line: the id and the name.
fn id_and_name(line: &str) -> Option<(u16, &str)> {
    let (id, name) = line.split_once(char::is_whitespace)?;
    if id.len() != 4 {
        return None;
    }
    Some((u16::from_str_radix(id, 16).ok()?, name.trim()))
}

impl PciNames {
    /// The names in `text` for the vendors in `vendors`.
    pub fn parse(text: &str, vendors: &BTreeSet<u16>) -> Self {
        let mut names = Self::default();
        // The vendor whose devices follow, if it is wanted.
        let mut current: Option<u16> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with("C ") {
                break;
            }
            if let Some(device_line) = line.strip_prefix('\t') {
                if device_line.starts_with('\t') {
                    continue;
                }
                if let (Some(vendor), Some((device, name))) = (current, id_and_name(device_line)) {
                    names.devices.insert((vendor, device), name.to_string());
                }
                continue;
            }
            current = id_and_name(line).filter(|(id, _)| vendors.contains(id)).map(|(id, name)| {
                names.vendors.insert(id, name.to_string());
                id
            });
        }
        names
    }

    /// The first pci.ids under `root`, parsed for `vendors`; empty when there is none.
    pub fn load(root: &Path, vendors: &BTreeSet<u16>) -> Self {
        if vendors.is_empty() {
            return Self::default();
        }
        let found = PCI_IDS_PATHS.iter().map(|p| root.join(p)).find(|p: &PathBuf| p.is_file());
        let Some(path) = found else {
            log::debug!("no pci.ids: devices are listed by id only");
            return Self::default();
        };
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&String::from_utf8_lossy(&bytes), vendors),
            Err(e) => {
                log::warn!("cannot read {}: {e}; devices are listed by id only", path.display());
                Self::default()
            }
        }
    }

    /// The vendor's name.
    pub fn vendor(&self, vendor: u16) -> Option<&str> {
        self.vendors.get(&vendor).map(String::as_str)
    }

    /// The device's name.
    pub fn device(&self, vendor: u16, device: u16) -> Option<&str> {
        self.devices.get(&(vendor, device)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# pci.ids sample
#\tList of PCI ID's

10de  NVIDIA Corporation
\t2684  AD102 [GeForce RTX 4090]
\t\t10de 167c  GeForce RTX 4090 Founders Edition
\t22ba  AD102 High Definition Audio Controller
1b36  Red Hat, Inc.
\t0010  QEMU NVM Express Controller
8086  Intel Corporation
\t0010  not wanted

C 01  Mass storage controller
\t08  Non-Volatile memory controller
1234  not a vendor: in the class section
";

    #[test]
    fn parses_only_wanted_vendors_and_their_devices() {
        let names = PciNames::parse(SAMPLE, &[0x10de, 0x1b36, 0x1234].into_iter().collect());
        assert_eq!(names.vendor(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(names.device(0x10de, 0x2684), Some("AD102 [GeForce RTX 4090]"));
        assert_eq!(names.device(0x10de, 0x22ba), Some("AD102 High Definition Audio Controller"));
        assert_eq!(names.device(0x10de, 0x10de), None);
        assert_eq!(names.vendor(0x1b36), Some("Red Hat, Inc."));
        assert_eq!(names.device(0x1b36, 0x0010), Some("QEMU NVM Express Controller"));
        assert_eq!(names.vendor(0x8086), None);
        assert_eq!(names.device(0x8086, 0x0010), None);
        assert_eq!(names.vendor(0x1234), None);
    }

    #[test]
    fn loads_from_either_path_or_none() {
        let dir = std::env::temp_dir().join(format!("aperture-pciids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let wanted: BTreeSet<u16> = [0x1b36].into_iter().collect();
        assert_eq!(PciNames::load(&dir, &wanted), PciNames::default());
        std::fs::create_dir_all(dir.join("usr/share/hwdata")).unwrap();
        std::fs::write(dir.join("usr/share/hwdata/pci.ids"), SAMPLE).unwrap();
        assert_eq!(PciNames::load(&dir, &wanted).vendor(0x1b36), Some("Red Hat, Inc."));
        assert_eq!(PciNames::load(&dir, &BTreeSet::new()), PciNames::default());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
