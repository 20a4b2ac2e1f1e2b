//! What the portable passthrough logic needs from the host: access to the physical function
//! (VFIO regions on Linux, the DriverKit user client on macOS) and MSI / MSI-X interrupt
//! plumbing. INTx, where a host offers it, is wired outside the configuration space (VFIO:
//! `vfio::IntxHandle`); the function only needs to know whether to show its pin.

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
    /// Whether the host can deliver the function's INTx (VFIO: its INTx interrupt index has
    /// an interrupt). Only then does the guest see the device's Interrupt Pin.
    fn intx_available(&self) -> bool {
        false
    }
}

/// Which message-signalled interrupt mechanism of the function a host call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterruptKind {
    /// The MSI capability: up to 32 vectors in one block (VFIO_PCI_MSI_IRQ_INDEX).
    Msi,
    /// The MSI-X table (VFIO_PCI_MSIX_IRQ_INDEX).
    Msix,
}

impl std::fmt::Display for InterruptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Msi => "MSI",
            Self::Msix => "MSI-X",
        })
    }
}

/// Host interrupt plumbing for MSI and MSI-X (VFIO: eventfds + KVM irqfd routes).
///
/// The assigned function never has both kinds enabled: it disables one (count 0) before it
/// enables the other, so a host may serve both from one pool of routes.
pub trait InterruptHost: Send {
    /// The most vectors of `kind` the host can deliver, if it knows (VFIO: its IRQ info;
    /// DriverKit: the vectors the extension set up, one MSI vector when it fell back to
    /// MSI). The guest is then offered no more MSI vectors than that.
    fn max_vectors(&self, _kind: InterruptKind) -> Option<u16> {
        None
    }
    /// The guest enabled `kind` with `vectors` vectors, or disabled it (0). A new count while
    /// `kind` is enabled replaces the old one (MSI: the guest changed Multiple Message
    /// Enable); every vector starts disconnected until [`Self::set_vector`] routes it.
    fn set_vector_count(&mut self, kind: InterruptKind, vectors: u16) -> std::io::Result<()>;
    /// A vector now delivers what `route` says ([`VectorRoute`]).
    fn route_vector(&mut self, route: VectorRoute) -> std::io::Result<()>;
    /// Vector `vector` of `kind` now delivers `message` (`None`: masked or not programmed).
    /// `requester_id` is the function's current `bus << 8 | devfn`.
    fn set_vector(
        &mut self,
        kind: InterruptKind,
        vector: u16,
        message: Option<devices::pci::MsiMessage>,
        requester_id: u16,
    ) -> std::io::Result<()> {
        self.route_vector(VectorRoute { kind, vector, message, requester_id })
    }
}

/// What one MSI or MSI-X vector delivers, as [`InterruptHost::route_vector`] gets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorRoute {
    /// MSI or MSI-X.
    pub kind: InterruptKind,
    /// The vector's index.
    pub vector: u16,
    /// The message it sends; `None` while masked or not programmed.
    pub message: Option<devices::pci::MsiMessage>,
    /// The function's current `bus << 8 | devfn`.
    pub requester_id: u16,
}

/// Whether a host may route vector `vector` of `kind` now, per the [`InterruptHost`] contract,
/// with `enabled` the kind and vector count it has enabled: `Ok(true)` if the vector is
/// enabled; `Ok(false)` if not and the function only disconnects it (`message` is `None`,
/// which changes nothing); an error if the function programs a message for it.
pub fn vector_is_live(
    enabled: Option<(InterruptKind, u16)>,
    kind: InterruptKind,
    vector: u16,
    message: Option<&devices::pci::MsiMessage>,
) -> std::io::Result<bool> {
    match enabled {
        Some((on, count)) if on == kind && vector < count => Ok(true),
        _ if message.is_none() => Ok(false),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{kind} vector {vector} is not enabled on the host"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use devices::pci::MsiMessage;

    use super::*;

    #[test]
    fn only_enabled_vectors_of_the_enabled_kind_are_live() {
        let message = MsiMessage { address: 0x0809_0040, data: 1 };
        let enabled = Some((InterruptKind::Msix, 4));
        assert!(vector_is_live(enabled, InterruptKind::Msix, 3, Some(&message)).unwrap());
        assert!(vector_is_live(enabled, InterruptKind::Msix, 4, Some(&message)).is_err());
        assert!(vector_is_live(enabled, InterruptKind::Msi, 0, Some(&message)).is_err());
        assert!(!vector_is_live(enabled, InterruptKind::Msi, 0, None).unwrap(), "disconnect");
        let err = vector_is_live(None, InterruptKind::Msi, 2, Some(&message)).unwrap_err();
        assert_eq!(err.to_string(), "MSI vector 2 is not enabled on the host");
    }
}
