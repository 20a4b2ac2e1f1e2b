//! A host PCI function as sysfs describes it: hex attributes, class names and the BARs of its
//! `resource` file. Read under a root directory, so tests use fake trees.

use std::path::Path;

pub use devices::pci::BarKind;
use passthrough::sysfs::parse_hex;

/// sysfs resource flags (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x10_0000;
/// The expansion ROM's line in a function's `resource` file, after the six BARs.
const ROM_LINE: usize = 6;

/// What a host BAR decodes: I/O ports, memory (as the emulated functions' BARs do, see
/// [`BarKind`]) or the expansion ROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarSpace {
    /// I/O ports.
    Io,
    /// Memory, below 4 GiB or anywhere (a 64-bit BAR takes two slots).
    Memory(BarKind),
    /// The expansion ROM.
    Rom,
}

impl BarSpace {
    /// Its name in listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Memory(BarKind::Memory32) => "mem32",
            Self::Memory(BarKind::Memory64) => "mem64",
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
    pub kind: BarSpace,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size in bytes.
    pub size: u64,
}

/// A sysfs hex attribute (`0x1b36`), or `None` when it cannot be read.
pub fn read_hex(path: &Path) -> Option<u32> {
    passthrough::sysfs::read_hex(path).ok()
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
        let fields: Vec<u64> = line.split_whitespace().filter_map(parse_hex).collect();
        let [start, end, flags] = fields[..] else { continue };
        // Unused slots (and the upper half of a 64-bit BAR) are all zeros.
        if flags == 0 || end == 0 || end < start {
            continue;
        }
        let kind = if index == ROM_LINE {
            BarSpace::Rom
        } else if flags & IORESOURCE_IO != 0 {
            BarSpace::Io
        } else if flags & IORESOURCE_MEM == 0 {
            continue;
        } else if flags & IORESOURCE_MEM_64 != 0 {
            BarSpace::Memory(BarKind::Memory64)
        } else {
            BarSpace::Memory(BarKind::Memory32)
        };
        // The kernel marks ROMs prefetchable too; only memory BARs say something by it.
        let memory = matches!(kind, BarSpace::Memory(_));
        let prefetchable = memory && flags & IORESOURCE_PREFETCH != 0;
        bars.push(Bar { index, kind, prefetchable, size: end - start + 1 });
    }
    bars
}
