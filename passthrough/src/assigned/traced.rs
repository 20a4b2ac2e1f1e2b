//! `trace-bar` ranges: parts of BARs trapped instead of mapped so that every guest access
//! to them reaches the PCI root's trace (and still the device). Checked here against the
//! BARs the device offers, which the command line cannot know.

use std::ops::Range;

use log::info;

use super::bars::BarLayout;
use super::error::AssignError;

/// `ranges` as (BAR, byte range), each `None` range standing for its whole BAR; fails if a
/// BAR is not offered (absent, an I/O BAR, the upper half of a 64-bit BAR) or a range is
/// empty or not inside its BAR.
pub fn checked_ranges(
    name: &str,
    layout: &BarLayout,
    ranges: &[(usize, Option<Range<u64>>)],
) -> Result<Vec<(usize, Range<u64>)>, AssignError> {
    let mut traced = Vec::with_capacity(ranges.len());
    for (bar, range) in ranges {
        let bar = *bar;
        let error = |reason: String| AssignError::TraceBar { name: name.into(), bar, reason };
        let Some(assigned) = layout.bars.get(bar).copied().flatten() else {
            let offered: Vec<String> = layout
                .bars
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_some())
                .map(|(i, _)| i.to_string())
                .collect();
            return Err(error(format!(
                "the device offers no memory BAR {bar} (memory BARs: {})",
                if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
            )));
        };
        let size = assigned.host.size;
        let range = range.clone().unwrap_or(0..size);
        if range.is_empty() || range.end > size {
            return Err(error(format!(
                "{:#x}+{:#x} is not inside the BAR, which is {size:#x} bytes; give OFFSET+LEN \
                 with OFFSET+LEN <= {size:#x}",
                range.start,
                range.end.saturating_sub(range.start)
            )));
        }
        info!(
            "{name}: BAR{bar} {:#x}+{:#x} trapped and traced (slow)",
            range.start,
            range.end - range.start
        );
        traced.push((bar, range));
    }
    Ok(traced)
}
