//! Resets the guest starts: a Function Level Reset through the PCIe Device Control register
//! and a secondary bus reset of the root port above the function. Either resets the device
//! through the host (the reset hook the VMM installs: VFIO's per-function reset, or the hot
//! reset of the slot) and brings the guest's view back to power-on.
//!
//! FLR is offered (DEVCAP bit 28) only when the device has it and a hook is installed: without
//! a host reset, a guest FLR would leave the device as it was while its driver expects it
//! fresh.

use devices::pci::config::ConfigSpace;

use super::capabilities::{DEVCAP_FLR, PCIE_DEVCAP, PCIE_DEVCTL};
use crate::host::ResetOutcome;

/// Resets the physical function for the guest (VMM: the opened function's reset, traced
/// with what caused it).
pub type ResetHook = Box<dyn FnMut(GuestResetCause) -> ResetOutcome + Send>;

/// DEVCTL bit 15: Initiate Function Level Reset (the high byte's bit 7).
const DEVCTL_INITIATE_FLR_HIGH_BYTE: u8 = 0x80;

/// What starts a guest reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestResetCause {
    /// The guest set Initiate Function Level Reset.
    Flr,
    /// The guest reset the secondary bus of the root port above.
    BusReset,
    /// The VM rebooted in place.
    Reboot,
}

impl GuestResetCause {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flr => "function level reset",
            Self::BusReset => "secondary bus reset",
            Self::Reboot => "reboot",
        }
    }
}

/// The host reset hook and where FLR can be asked for.
#[derive(Default)]
pub(super) struct GuestReset {
    hook: Option<ResetHook>,
    /// The PCIe capability's offset, if the device itself advertises FLR.
    device_flr_at: Option<u16>,
}

impl std::fmt::Debug for GuestReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestReset")
            .field("hook", &self.hook.is_some())
            .field("device_flr_at", &self.device_flr_at)
            .finish()
    }
}

impl GuestReset {
    /// For a device whose PCIe capability (at `pcie`, if any) reads `device`'s DEVCAP.
    pub(super) fn new(device: &ConfigSpace, pcie: Option<u16>) -> Self {
        let device_flr_at = pcie.filter(|&at| device.read_u32(at + PCIE_DEVCAP) & DEVCAP_FLR != 0);
        Self { hook: None, device_flr_at }
    }

    /// Installs the host reset and, if the device has FLR, offers it in the guest's views.
    pub(super) fn set_hook(&mut self, hook: ResetHook, views: [&mut ConfigSpace; 2]) {
        self.hook = Some(hook);
        if let Some(at) = self.device_flr_at {
            for view in views {
                let devcap = view.read_u32(at + PCIE_DEVCAP) | DEVCAP_FLR;
                view.set_u32(at + PCIE_DEVCAP, devcap);
            }
        }
    }

    /// Whether FLR is offered to the guest.
    pub(super) fn offers_flr(&self) -> bool {
        self.hook.is_some() && self.device_flr_at.is_some()
    }

    /// Whether a configuration write of `data` at `offset` initiates an FLR the guest was
    /// offered.
    pub(super) fn flr_requested(&self, offset: u16, data: &[u8]) -> bool {
        let Some(at) = self.device_flr_at.filter(|_| self.offers_flr()) else { return false };
        let high_byte = at + PCIE_DEVCTL + 1;
        high_byte
            .checked_sub(offset)
            .and_then(|i| data.get(usize::from(i)))
            .is_some_and(|byte| byte & DEVCTL_INITIATE_FLR_HIGH_BYTE != 0)
    }

    /// Runs the host reset, if installed.
    pub(super) fn host_reset(&mut self, cause: GuestResetCause) -> Option<ResetOutcome> {
        self.hook.as_mut().map(|hook| hook(cause))
    }
}
