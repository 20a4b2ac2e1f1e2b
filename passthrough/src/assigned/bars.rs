//! The device's BARs as the guest sees them: virtual registers sized from the host's regions
//! (the guest's addresses never reach the device), and which parts the VMM can map straight
//! into the guest.

use std::ops::Range;

use devices::pci::config::{BarKind, ConfigSpace, BAR0};
use log::{debug, warn};

use super::error::AssignError;
use super::host::{HostFunction, RegionInfo};

/// Memory BARs in a type 0 header.
pub const BAR_COUNT: usize = 6;
/// The smallest BAR offered to the guest: one 4 KiB page, so that BARs can be page-mapped.
pub const MIN_BAR_SIZE: u64 = 4096;
/// The smallest expansion ROM the header can describe.
const MIN_ROM_SIZE: u64 = 2048;
const BAR_IO_SPACE: u32 = 1;
const BAR_TYPE_64: u32 = 0b100;
const BAR_TYPE_MASK: u32 = 0b110;
const BAR_PREFETCHABLE: u32 = 0b1000;

/// One memory BAR offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignedBar {
    /// The host region behind it.
    pub host: RegionInfo,
    /// The size the guest sees (a power of two, at least [`MIN_BAR_SIZE`]).
    pub size: u64,
    /// 32- or 64-bit, as the device's register says.
    pub kind: BarKind,
    /// Prefetchable, as the device's register says.
    pub prefetchable: bool,
}

/// The BARs and expansion ROM offered to the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BarLayout {
    /// Memory BARs by index (the upper half of a 64-bit BAR is `None`).
    pub bars: [Option<AssignedBar>; BAR_COUNT],
    /// The expansion ROM's host region and the size the guest sees.
    pub rom: Option<(RegionInfo, u64)>,
}

fn guest_size(host_size: u64) -> Option<u64> {
    host_size.max(MIN_BAR_SIZE).checked_next_power_of_two()
}

/// Reads the device's BAR registers and host regions and implements matching virtual BARs and
/// ROM in `config`. I/O BARs are not offered.
pub fn build(
    name: &str,
    device: &ConfigSpace,
    host: &dyn HostFunction,
    config: &mut ConfigSpace,
) -> Result<BarLayout, AssignError> {
    let mut layout = BarLayout::default();
    let mut index = 0;
    while index < BAR_COUNT {
        // index < 6.
        let register = device.read_u32(BAR0 + 4 * index as u16);
        let is_64 = register & BAR_IO_SPACE == 0 && register & BAR_TYPE_MASK == BAR_TYPE_64;
        let this = index;
        index += if is_64 { 2 } else { 1 };
        let Some(info) = host.bar_info(this).filter(|info| info.size > 0) else {
            continue;
        };
        if register & BAR_IO_SPACE != 0 {
            warn!(
                "{name}: BAR {this} is an I/O BAR ({:#x} bytes); Aperture offers no I/O space, \
                 so the guest does not see it",
                info.size
            );
            continue;
        }
        let kind =
            if is_64 && this + 1 < BAR_COUNT { BarKind::Memory64 } else { BarKind::Memory32 };
        let Some(size) = guest_size(info.size) else {
            return Err(AssignError::BarTooLarge { name: name.into(), bar: this, size: info.size });
        };
        if kind == BarKind::Memory32 && size > 1 << 31 {
            return Err(AssignError::BarTooLarge { name: name.into(), bar: this, size: info.size });
        }
        let prefetchable = register & BAR_PREFETCHABLE != 0;
        config
            .add_memory_bar(this, size, kind, prefetchable)
            .map_err(|source| AssignError::Bar { name: name.into(), bar: this, source })?;
        debug!(
            "{name}: BAR {this}: {size:#x} bytes ({:#x} on the host), {kind:?}{}{}",
            info.size,
            if prefetchable { ", prefetchable" } else { "" },
            if info.mmappable { ", mappable" } else { ", trapped" }
        );
        layout.bars[this] = Some(AssignedBar { host: info, size, kind, prefetchable });
    }
    if let Some(info) = host.rom_info().filter(|info| info.size > 0 && info.readable) {
        let size = info.size.max(MIN_ROM_SIZE).checked_next_power_of_two().unwrap_or(0);
        config
            .set_expansion_rom(size)
            .map_err(|source| AssignError::Rom { name: name.into(), source })?;
        layout.rom = Some((info, size));
    }
    Ok(layout)
}

/// The page-aligned parts of a BAR of `host_size` bytes that can be mapped into the guest:
/// everything but the pages that hold any of `trapped`. Sub-page BARs are not mappable.
pub fn mappable_ranges(host_size: u64, trapped: &[Range<u64>], page_size: u64) -> Vec<(u64, u64)> {
    if !page_size.is_power_of_two() || host_size < page_size {
        return Vec::new();
    }
    let end = host_size & !(page_size - 1);
    let mut holes: Vec<Range<u64>> = trapped
        .iter()
        .filter(|r| r.start < r.end)
        .map(|r| r.start & !(page_size - 1)..r.end.saturating_add(page_size - 1) & !(page_size - 1))
        .collect();
    holes.sort_by_key(|r| r.start);
    let mut ranges = Vec::new();
    let mut at = 0;
    for hole in holes {
        if hole.start > at {
            ranges.push((at, hole.start.min(end) - at));
        }
        at = at.max(hole.end);
        if at >= end {
            break;
        }
    }
    if at < end {
        ranges.push((at, end - at));
    }
    ranges.retain(|&(_, len)| len > 0);
    ranges
}
