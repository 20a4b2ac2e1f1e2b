//! PCI Express: configuration space model, host bridge, root ports, ECAM and BAR routing.
//!
//! Interfaces shared by every PCI function Aperture emulates or passes through.

/// An MSI/MSI-X message as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Doorbell address (the GIC ITS translater, or the HVF MSI frame).
    pub address: u64,
    /// Payload (event id).
    pub data: u32,
}

/// Delivers MSIs into the guest's interrupt controller. `requester_id` is the function's
/// bus/device/function (`bus << 8 | devfn`), which the ITS uses as the device id through
/// the host bridge's `msi-map`.
pub trait MsiSink: Send + Sync {
    /// Sends one message.
    fn signal_msi(&self, message: MsiMessage, requester_id: u16);
}

/// One PCI function on the emulated bus, seen through its configuration space and BARs.
pub trait PciFunction: Send {
    /// A short name for logs and traces ("virtio-blk", "root-port1").
    fn name(&self) -> &str;
    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset` (< 4096).
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    /// Writes configuration space.
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// A read of memory BAR `bar` at `offset` from its start.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write of memory BAR `bar` at `offset` from its start.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}
