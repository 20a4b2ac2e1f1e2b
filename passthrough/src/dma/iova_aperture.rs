//! Where a host-picks mapper may put device addresses (IOVAs): below 2^40 so that a GPU whose
//! driver lowers its DMA mask to 40 bits (Turing's RM) works out of the box, never at a guest
//! RAM address (a device address equal to the guest address of the same buffer would hide a
//! driver that confuses the two), and never in a range the host IOMMU reserves (on arm64 the
//! SMMU's MSI window). Portable: the VFIO mapper feeds it what `VFIO_IOMMU_GET_INFO` says.

use super::units::{align_down, align_up};

/// Device addresses stay below this by default: 2^40, the narrowest DMA mask GPUs lower to.
pub const DEFAULT_DMA_REACH: u64 = 1 << 40;
/// The first device addresses are never handed out (address 0 reads as "no address" to many
/// drivers).
pub const IOVA_FLOOR: u64 = 1 << 20;
/// The MSI doorbell window Linux reserves in every arm64 SMMU domain (`MSI_IOVA_BASE`,
/// `MSI_IOVA_LENGTH`), as `(start, len)`; excluded when the host does not list its ranges.
pub const ARM64_SMMU_MSI_WINDOW: (u64, u64) = (0x800_0000, 0x10_0000);

/// `VFIO_IOMMU_INFO_CAPS`: the info has a capability chain.
const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`.
const CAP_IOVA_RANGE: u16 = 1;
/// Size of `struct vfio_iommu_type1_info` (argsz, flags, iova_pgsizes, cap_offset, pad).
pub const VFIO_IOMMU_INFO_SIZE: usize = 24;

/// The usable device-address ranges, `(start, len)` by address and aligned to `granule`:
/// `host_valid` (inclusive `(start, last)` pairs as VFIO reports them; `None` if the host does
/// not say: all but [`ARM64_SMMU_MSI_WINDOW`]) within `[IOVA_FLOOR, reach)`, less the guest
/// RAM ranges `ram` (`(start, len)`).
pub fn usable_iova_ranges(
    host_valid: Option<&[(u64, u64)]>,
    ram: &[(u64, u64)],
    reach: u64,
    granule: u64,
) -> Vec<(u64, u64)> {
    // Half-open [start, end) from here on.
    let mut ranges: Vec<(u64, u64)> = match host_valid {
        Some(valid) => valid
            .iter()
            .filter(|r| r.0 <= r.1)
            .map(|&(s, last)| (s, last.saturating_add(1)))
            .collect(),
        None => {
            let (msi, msi_len) = ARM64_SMMU_MSI_WINDOW;
            vec![(0, msi), (msi + msi_len, u64::MAX)]
        }
    };
    ranges.sort_unstable();
    let mut holes: Vec<(u64, u64)> = ram.iter().map(|&(s, l)| (s, s.saturating_add(l))).collect();
    holes.push((0, IOVA_FLOOR));
    holes.push((reach, u64::MAX));
    for (hole_start, hole_end) in holes {
        ranges = ranges
            .into_iter()
            .flat_map(|(s, e)| {
                let below = (s, e.min(hole_start));
                let above = (s.max(hole_end), e);
                [below, above]
            })
            .filter(|(s, e)| s < e)
            .collect();
    }
    ranges
        .into_iter()
        .filter_map(|(s, e)| {
            let (s, e) = (align_up(s, granule)?, align_down(e, granule));
            (s < e).then_some((s, e - s))
        })
        .collect()
}

/// The IOVA ranges in the capability chain of a `VFIO_IOMMU_GET_INFO` answer, as inclusive
/// `(start, last)` pairs; `Ok(None)` if the host lists none (kernels before 5.4). `Err` says
/// what is malformed.
pub fn parse_vfio_iova_ranges(info: &[u8]) -> Result<Option<Vec<(u64, u64)>>, String> {
    let u32_at = |at: usize| -> Result<u32, String> {
        info.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("the IOMMU info ends before offset {at:#x}"))
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        Ok(u64::from(u32_at(at)?) | u64::from(u32_at(at + 4)?) << 32)
    };
    let flags = u32_at(4)?;
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(None);
    }
    let mut at = u32_at(16)? as usize;
    // Each capability must lie after the header and after the previous one: no loops.
    let mut floor = VFIO_IOMMU_INFO_SIZE;
    while at != 0 {
        if at < floor {
            return Err(format!("capability at {at:#x} points backwards"));
        }
        let id = u32_at(at)? as u16;
        let next = u32_at(at + 4)? as usize;
        if id == CAP_IOVA_RANGE {
            let count = u32_at(at + 8)? as usize;
            let mut ranges = Vec::with_capacity(count.min(64));
            for i in 0..count {
                let entry = at + 16 + 16 * i;
                ranges.push((u64_at(entry)?, u64_at(entry + 8)?));
            }
            return Ok(Some(ranges));
        }
        floor = at + 8;
        at = next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K16: u64 = 16 << 10;
    const GIB: u64 = 1 << 30;

    #[test]
    fn without_host_ranges_everything_below_2_40_but_ram_and_the_msi_window() {
        let ram = [(GIB, 4 * GIB)];
        let r = usable_iova_ranges(None, &ram, DEFAULT_DMA_REACH, K16);
        assert_eq!(
            r,
            vec![
                (IOVA_FLOOR, 0x800_0000 - IOVA_FLOOR),
                (0x810_0000, GIB - 0x810_0000),
                (5 * GIB, DEFAULT_DMA_REACH - 5 * GIB)
            ]
        );
    }

    #[test]
    fn host_ranges_and_ram_are_cut_out_and_aligned_inward() {
        // As an arm64 SMMU reports: 48-bit input, the MSI window reserved.
        let valid = [(0, 0x7ff_ffff), (0x810_0000, (1 << 48) - 1)];
        let ram = [(GIB, 2 * GIB), (8 * GIB + 0x1000, GIB)];
        let r = usable_iova_ranges(Some(&valid), &ram, DEFAULT_DMA_REACH, K16);
        assert_eq!(
            r,
            vec![
                (IOVA_FLOOR, 0x800_0000 - IOVA_FLOOR),
                (0x810_0000, GIB - 0x810_0000),
                (3 * GIB, 5 * GIB),
                (9 * GIB + K16, DEFAULT_DMA_REACH - 9 * GIB - K16),
            ]
        );
        for (s, l) in &r {
            assert!(s % K16 == 0 && l % K16 == 0 && s + l <= DEFAULT_DMA_REACH);
            for (rs, rl) in ram {
                assert!(s + l <= rs || *s >= rs + rl, "overlaps RAM");
            }
        }
    }

    #[test]
    fn a_narrow_iommu_limits_the_ranges() {
        // A 39-bit IOMMU: nothing at or above 2^39.
        let valid = [(0, (1 << 39) - 1)];
        let r = usable_iova_ranges(Some(&valid), &[(GIB, GIB)], DEFAULT_DMA_REACH, K16);
        assert_eq!(r.last().map(|&(s, l)| s + l), Some(1 << 39));
        // Nothing usable at all.
        assert!(usable_iova_ranges(Some(&[(0, 0xfffff)]), &[], DEFAULT_DMA_REACH, K16).is_empty());
        assert!(usable_iova_ranges(Some(&[(5, 4)]), &[], DEFAULT_DMA_REACH, K16).is_empty());
    }

    fn info(flags: u32, caps: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; VFIO_IOMMU_INFO_SIZE];
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        let mut offsets = Vec::new();
        let mut at = VFIO_IOMMU_INFO_SIZE;
        for (_, _, body) in caps {
            offsets.push(at);
            at += 8 + body.len();
        }
        if let Some(first) = offsets.first() {
            b[16..20].copy_from_slice(&(*first as u32).to_le_bytes());
        }
        for (i, (id, _, body)) in caps.iter().enumerate() {
            let next = offsets.get(i + 1).copied().unwrap_or(0) as u32;
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&next.to_le_bytes());
            b.extend_from_slice(body);
        }
        b
    }

    fn range_cap(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut body = (ranges.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 4]);
        for (s, e) in ranges {
            body.extend_from_slice(&s.to_le_bytes());
            body.extend_from_slice(&e.to_le_bytes());
        }
        body
    }

    #[test]
    fn parses_the_iova_range_capability() {
        let ranges = [(0, 0x7ff_ffff), (0x810_0000, 0xffff_ffff_ffff)];
        let b = info(VFIO_IOMMU_INFO_CAPS, &[(2, 0, vec![0; 8]), (1, 0, range_cap(&ranges))]);
        assert_eq!(parse_vfio_iova_ranges(&b), Ok(Some(ranges.to_vec())));
        assert_eq!(parse_vfio_iova_ranges(&info(0, &[])), Ok(None), "no capabilities");
        let b = info(VFIO_IOMMU_INFO_CAPS, &[(3, 0, vec![0; 8])]);
        assert_eq!(parse_vfio_iova_ranges(&b), Ok(None), "no range capability");
    }

    #[test]
    fn malformed_chains_are_errors_not_panics() {
        let ranges = [(0, 0xffff_ffff)];
        let mut b = info(VFIO_IOMMU_INFO_CAPS, &[(1, 0, range_cap(&ranges))]);
        b.truncate(b.len() - 4);
        assert!(parse_vfio_iova_ranges(&b).is_err(), "truncated");
        assert!(parse_vfio_iova_ranges(&[0; 4]).is_err(), "too short");
        let mut b = info(VFIO_IOMMU_INFO_CAPS, &[(2, 0, vec![0; 8])]);
        b[VFIO_IOMMU_INFO_SIZE + 4..VFIO_IOMMU_INFO_SIZE + 8]
            .copy_from_slice(&(VFIO_IOMMU_INFO_SIZE as u32).to_le_bytes());
        assert!(parse_vfio_iova_ranges(&b).is_err(), "a loop");
        for len in 0..40 {
            let _ = parse_vfio_iova_ranges(&vec![0xff; len]);
        }
    }
}
