//! What the portable passthrough logic needs from the host: access to the physical function
//! (VFIO regions on Linux, the DriverKit user client on macOS) and MSI-X interrupt plumbing.

/// One host region of the physical function (a BAR or the expansion ROM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// Size in bytes as the host reports it (not rounded).
    pub size: u64,
    /// Whether the host allows reads.
    pub readable: bool,
    /// Whether the host allows writes.
    pub writable: bool,
    /// Whether the host can mmap the region (so the VMM can map it into the guest).
    pub mmappable: bool,
}

/// Host access to the physical function (VFIO: config region + BAR regions).
pub trait HostFunction: Send {
    /// Reads the real configuration space (4 KiB) at `offset`.
    fn config_read(&self, offset: u16, data: &mut [u8]) -> std::io::Result<()>;
    /// Writes the real configuration space at `offset`.
    fn config_write(&self, offset: u16, data: &[u8]) -> std::io::Result<()>;
    /// BAR `bar` (0-5), or `None` if the BAR is not implemented.
    fn bar_info(&self, bar: usize) -> Option<RegionInfo>;
    /// The expansion ROM, or `None` if there is none.
    fn rom_info(&self) -> Option<RegionInfo>;
    /// A trapped read of BAR `bar` through the host (VFIO region read).
    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> std::io::Result<()>;
    /// A trapped write of BAR `bar` through the host.
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// Reads the expansion ROM at `offset`.
    fn rom_read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()>;
}

/// Host interrupt plumbing for MSI-X (VFIO: eventfds + KVM irqfd routes).
pub trait MsixHost: Send {
    /// The guest enabled MSI-X with `vectors` vectors (or disabled it: 0).
    fn set_vector_count(&mut self, vectors: u16) -> std::io::Result<()>;
    /// Vector `vector` now delivers `message` (`None`: masked or not programmed).
    /// `requester_id` is the function's current `bus << 8 | devfn`.
    fn set_vector(
        &mut self,
        vector: u16,
        message: Option<devices::pci::MsiMessage>,
        requester_id: u16,
    ) -> std::io::Result<()>;
}
