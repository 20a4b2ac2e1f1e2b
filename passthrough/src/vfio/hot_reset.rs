//! Slot (secondary bus) reset through `VFIO_DEVICE_PCI_HOT_RESET`, for functions without a
//! per-function reset (GPUs without FLR: the GPU and its HDMI audio reset together). The
//! decision is portable: which functions a hot reset touches (from
//! `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`), whether this VM owns all of them, and which groups
//! the kernel must be shown; the ioctls stay in `ioctls.rs`.

use std::collections::BTreeSet;

use crate::pci_address::PciAddress;

/// One function a hot reset of a device's slot or bus affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffectedFunction {
    /// Its host address.
    pub address: PciAddress,
    /// Its IOMMU group.
    pub group: u32,
}

/// Size of `struct vfio_pci_hot_reset_info`'s header: argsz, flags, count.
pub const HOT_RESET_INFO_HEADER: usize = 12;
/// Size of one `struct vfio_pci_dependent_device`: group_id, segment, bus, devfn.
const DEPENDENT_DEVICE_SIZE: usize = 8;

/// The number of affected functions in a `vfio_pci_hot_reset_info` header.
pub fn hot_reset_info_count(bytes: &[u8]) -> Option<usize> {
    let count = bytes.get(8..12)?;
    Some(u32::from_ne_bytes([count[0], count[1], count[2], count[3]]) as usize)
}

/// Buffer size for a `vfio_pci_hot_reset_info` of `count` devices.
pub fn hot_reset_info_size(count: usize) -> usize {
    HOT_RESET_INFO_HEADER + count * DEPENDENT_DEVICE_SIZE
}

/// The affected functions in a `vfio_pci_hot_reset_info` the kernel filled (group ids, not
/// the iommufd device ids of `VFIO_PCI_HOT_RESET_FLAG_DEV_ID`: Aperture uses groups).
pub fn parse_hot_reset_info(bytes: &[u8]) -> Option<Vec<AffectedFunction>> {
    let count = hot_reset_info_count(bytes)?;
    let devices = bytes.get(HOT_RESET_INFO_HEADER..hot_reset_info_size(count))?;
    let affected = devices
        .chunks_exact(DEPENDENT_DEVICE_SIZE)
        .map(|d| AffectedFunction {
            group: u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
            address: PciAddress {
                domain: u16::from_ne_bytes([d[4], d[5]]),
                bus: d[6],
                device: d[7] >> 3,
                function: d[7] & 7,
            },
        })
        .collect();
    Some(affected)
}

/// How a function is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMethod {
    /// `VFIO_DEVICE_RESET`: the kernel's per-function reset (FLR, PM or a bus reset when the
    /// function is alone on its bus).
    Function,
    /// `VFIO_DEVICE_PCI_HOT_RESET`: the whole slot or bus, every function on it.
    HotReset,
}

/// The method to try first: the per-function reset where VFIO offers one.
pub fn first_method(has_function_reset: bool) -> ResetMethod {
    if has_function_reset {
        ResetMethod::Function
    } else {
        ResetMethod::HotReset
    }
}

/// What a hot reset needs, given the functions it affects and the VM's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HotResetPlan {
    /// Every affected function is this VM's: reset with these groups' fds.
    Reset {
        /// The IOMMU groups to pass, each once, ascending.
        groups: Vec<u32>,
        /// The affected functions other than the one asked for (they are reset too).
        others: Vec<PciAddress>,
    },
    /// Some affected functions belong to no one in this VM; resetting would pull them from
    /// under their owner (or the host).
    NotOwned(Vec<PciAddress>),
}

/// Plans the hot reset of `target` affecting `affected`, where `owned` are the functions this
/// VM has open (with their groups in hand).
pub fn plan_hot_reset(
    target: PciAddress,
    affected: &[AffectedFunction],
    owned: &[PciAddress],
) -> HotResetPlan {
    let not_owned: Vec<PciAddress> =
        affected.iter().map(|a| a.address).filter(|a| !owned.contains(a)).collect();
    if !not_owned.is_empty() {
        return HotResetPlan::NotOwned(not_owned);
    }
    let groups: BTreeSet<u32> = affected.iter().map(|a| a.group).collect();
    let others = affected.iter().map(|a| a.address).filter(|a| *a != target).collect();
    HotResetPlan::Reset { groups: groups.into_iter().collect(), others }
}

/// The warning for a hot reset skipped because `not_owned` are not this VM's, with the fix.
pub fn not_owned_message(target: PciAddress, when: &str, not_owned: &[PciAddress]) -> String {
    let names: Vec<String> = not_owned.iter().map(|a| a.to_string()).collect();
    let flags: Vec<String> = names.iter().map(|n| format!("--device {n}")).collect();
    format!(
        "{target}: reset at {when} skipped: it has no per-function reset, and a hot reset of \
         its slot also resets {}, which this VM does not own; assign them too ({}) so the \
         whole slot is reset; the device's state carries over",
        names.join(", "),
        flags.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> PciAddress {
        text.parse().unwrap()
    }

    fn info(devices: &[(u32, u16, u8, u8)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let size = hot_reset_info_size(devices.len()) as u32;
        for word in [size, 0, devices.len() as u32] {
            bytes.extend(word.to_ne_bytes());
        }
        for &(group, segment, bus, devfn) in devices {
            bytes.extend(group.to_ne_bytes());
            bytes.extend(segment.to_ne_bytes());
            bytes.extend([bus, devfn]);
        }
        bytes
    }

    #[test]
    fn parses_the_affected_functions() {
        let bytes = info(&[(7, 0, 3, 0), (7, 0, 3, 1), (9, 1, 0x80, (2 << 3) | 5)]);
        let affected = parse_hot_reset_info(&bytes).unwrap();
        assert_eq!(
            affected,
            [
                AffectedFunction { address: addr("0000:03:00.0"), group: 7 },
                AffectedFunction { address: addr("0000:03:00.1"), group: 7 },
                AffectedFunction { address: addr("0001:80:02.5"), group: 9 },
            ]
        );
        assert_eq!(hot_reset_info_count(&bytes[..12]), Some(3));
        assert_eq!(parse_hot_reset_info(&bytes[..20]), None, "truncated");
        assert_eq!(parse_hot_reset_info(&bytes[..8]), None, "no header");
    }

    #[test]
    fn hot_resets_only_what_the_vm_owns() {
        let edu = addr("0000:03:00.0");
        let audio = addr("0000:03:00.1");
        let affected = [
            AffectedFunction { address: edu, group: 7 },
            AffectedFunction { address: audio, group: 7 },
        ];
        assert_eq!(
            plan_hot_reset(edu, &affected, &[edu, audio]),
            HotResetPlan::Reset { groups: vec![7], others: vec![audio] }
        );
        assert_eq!(plan_hot_reset(edu, &affected, &[edu]), HotResetPlan::NotOwned(vec![audio]));
        let apart = [
            AffectedFunction { address: edu, group: 8 },
            AffectedFunction { address: audio, group: 7 },
        ];
        assert_eq!(
            plan_hot_reset(audio, &apart, &[audio, edu]),
            HotResetPlan::Reset { groups: vec![7, 8], others: vec![edu] },
            "each group once, for both functions"
        );
    }

    #[test]
    fn picks_the_function_reset_where_there_is_one() {
        assert_eq!(first_method(true), ResetMethod::Function);
        assert_eq!(first_method(false), ResetMethod::HotReset);
    }

    #[test]
    fn names_the_functions_to_assign() {
        let text = not_owned_message(addr("0000:03:00.0"), "start", &[addr("0000:03:00.1")]);
        assert!(text.contains("also resets 0000:03:00.1"), "{text}");
        assert!(text.contains("--device 0000:03:00.1"), "{text}");
    }
}
