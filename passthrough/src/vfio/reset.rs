//! Resetting a VFIO function: its own reset (`VFIO_DEVICE_RESET`) where VFIO has one, else a
//! hot reset of its slot when this VM owns every function on it (`super::hot_reset` decides).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use log::{info, warn};

use super::container::VfioGroup;
use super::device::VfioDevice;
use super::hot_reset::{
    first_method, not_owned_message, parse_hot_reset_info, plan_hot_reset, HotResetPlan,
    ResetMethod,
};
use super::ioctls;
use crate::host::ResetOutcome;
use crate::pci_address::PciAddress;

/// The functions one VM has open in VFIO with their groups (what a hot reset must show the
/// kernel), shared by the VM's functions so that each can reset its slot.
#[derive(Debug, Default)]
pub struct OwnedFunctions {
    functions: Mutex<Vec<(PciAddress, Arc<VfioGroup>)>>,
    /// Functions a hot reset of another one reset in this round: their own reset is done.
    reset_along: Mutex<Vec<PciAddress>>,
}

impl OwnedFunctions {
    /// Records that this VM opened `address` in `group`.
    pub fn add(&self, address: PciAddress, group: Arc<VfioGroup>) {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        functions.push((address, group));
    }

    /// Forgets `address` (its device left), closing its group unless another function of
    /// the VM is in it.
    pub fn remove(&self, address: PciAddress) {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        functions.retain(|(owned, _)| *owned != address);
    }

    fn owned(&self) -> Vec<PciAddress> {
        let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        functions.iter().map(|(address, _)| *address).collect()
    }

    /// The fds of `groups`, if this VM holds all of them.
    fn group_fds(&self, groups: &[u32]) -> Option<Vec<i32>> {
        let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .iter()
            .map(|&number| {
                functions
                    .iter()
                    .find(|(_, group)| group.number() == number)
                    .map(|(_, group)| group.file().as_raw_fd())
            })
            .collect()
    }

    /// Whether a hot reset of another function already reset `address` (once).
    fn take_reset_along(&self, address: PciAddress) -> bool {
        let mut along = self.reset_along.lock().unwrap_or_else(|e| e.into_inner());
        let found = along.iter().position(|a| *a == address);
        found.map(|i| along.swap_remove(i)).is_some()
    }

    fn note_reset_along(&self, others: &[PciAddress]) {
        let mut along = self.reset_along.lock().unwrap_or_else(|e| e.into_inner());
        for other in others {
            if !along.contains(other) {
                along.push(*other);
            }
        }
    }

    /// Resets `device` (`when`: "start", "exit", "guest") and reports the outcome (logged).
    pub fn reset(&self, device: &VfioDevice, when: &str) -> ResetOutcome {
        let address = device.address();
        if self.take_reset_along(address) {
            info!("{address}: reset at {when}: done with its slot's hot reset");
            return ResetOutcome::HotReset;
        }
        let has_function_reset = device.has_function_reset();
        if first_method(has_function_reset) == ResetMethod::Function {
            match ioctls::device_reset(device.file()) {
                Ok(()) => {
                    info!("{address}: reset at {when}: done (per-function reset)");
                    return ResetOutcome::Done;
                }
                Err(e) => warn!(
                    "{address}: reset at {when}: the per-function reset failed ({e}); trying \
                     a hot reset of its slot"
                ),
            }
        }
        let affected = match ioctls::hot_reset_info(device.file()) {
            Ok(bytes) => parse_hot_reset_info(&bytes).unwrap_or_default(),
            Err(e) => {
                warn!(
                    "{address}: reset at {when}: no per-function reset and no hot reset of \
                     its slot ({e}); its state carries over"
                );
                return if has_function_reset {
                    ResetOutcome::Failed
                } else {
                    ResetOutcome::Unsupported
                };
            }
        };
        let (groups, others) = match plan_hot_reset(address, &affected, &self.owned()) {
            HotResetPlan::Reset { groups, others } => (groups, others),
            HotResetPlan::NotOwned(not_owned) => {
                warn!("{}", not_owned_message(address, when, &not_owned));
                return ResetOutcome::NotOwned;
            }
        };
        let Some(fds) = self.group_fds(&groups) else {
            warn!("{address}: reset at {when} skipped: an affected IOMMU group is not open");
            return ResetOutcome::NotOwned;
        };
        match ioctls::pci_hot_reset(device.file(), &fds) {
            Ok(()) => {
                let names: Vec<String> = others.iter().map(|a| a.to_string()).collect();
                info!(
                    "{address}: reset at {when}: done (hot reset of its slot{}{})",
                    if names.is_empty() { "" } else { ", with " },
                    names.join(", ")
                );
                self.note_reset_along(&others);
                ResetOutcome::HotReset
            }
            Err(e) => {
                warn!("{address}: reset at {when}: the hot reset of its slot failed: {e}");
                ResetOutcome::HotResetFailed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_reset_along_with_its_slot_is_reset_once() {
        let owned = OwnedFunctions::default();
        let audio: PciAddress = "0000:03:00.1".parse().unwrap();
        let other: PciAddress = "0000:04:00.0".parse().unwrap();
        assert!(!owned.take_reset_along(audio), "nothing reset yet");
        owned.note_reset_along(&[audio]);
        owned.note_reset_along(&[audio]);
        assert!(!owned.take_reset_along(other));
        assert!(owned.take_reset_along(audio), "its slot's hot reset counts for it");
        assert!(!owned.take_reset_along(audio), "once: the next round resets it again");
        assert!(owned.owned().is_empty());
        assert_eq!(owned.group_fds(&[]), Some(Vec::new()));
        assert_eq!(owned.group_fds(&[7]), None, "group 7 is not open");
    }
}
