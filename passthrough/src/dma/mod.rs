//! DMA windows: fitting a passed-through device's DMA into a host IOMMU's limits.
//!
//! On macOS the DART lets a device reach only ~1.5 GB of memory in at most ~64k mappings,
//! 16 KiB aligned, at device addresses the host picks. The guest's DMA mapping requests
//! ("map guest-physical `[gpa, gpa+len)`", "unmap") therefore go to the [`WindowManager`],
//! which keeps host mappings within a [`HostMapper`]'s [`MapperLimits`]. The same code runs on
//! Linux against a VFIO mapper imposing the same limits, and in tests against
//! `testing::FakeMapper` (feature `testing`). The guest's requests arrive through the
//! paravirtual aperture-dma PCI function, [`DmaWindowDevice`]
//! (`passthrough/docs/dma-window-protocol.md`).
//!
//! # Design
//!
//! - **Windows.** A small request (under `window_size`, 256 KiB by default) maps the aligned
//!   window around it (two if it straddles a boundary), clipped to its guest RAM region and
//!   shrunk away from neighbouring mappings it does not touch. Later small requests in the
//!   same window share it: one host mapping, a user count. A large request maps exactly its
//!   pages (aligned to the mapper's granule): its neighbours are rarely related to it, and
//!   widening it would only spend budget. Windows trade bytes for mapping slots, so a request
//!   maps just its pages when widening would take pinned bytes above 3/4 of the byte budget,
//!   or would not fit at all: coalescing never causes a failure.
//! - **Device addresses.** The device address of `gpa` is the window's device base plus the
//!   offset of `gpa` in the window. A request is always served by one host mapping when the
//!   host picks addresses (so the range is device-contiguous); with identity mapping any set
//!   of mappings covering it will do, so existing windows are reused and only the holes are
//!   mapped.
//! - **Device constraints.** A request may carry [`MapConstraints`]: the device's DMA mask
//!   and an alignment; a power-of-two request of 64 KiB or more at a guest address aligned to
//!   `A = min(len, 2 MiB)` needs a device address aligned to `A` anyway ([`auto_alignment`]).
//!   Device addresses keep the guest address's offset modulo the alignment (windows modulo
//!   the window size, so aligned requests sharing a window stay aligned). A mapper that can
//!   be told ([`AddressPolicy::HostPicksWithin`]) places the mapping within them; when it has
//!   no room there, cached windows below the mask are evicted and it retries. One that cannot
//!   ([`AddressPolicy::HostPicks`], the DART) has its answer checked: a mapping that breaks
//!   them is undone and the request refused ([`DmaError::AboveMask`],
//!   [`DmaError::Misaligned`]). An existing window that breaks them is not reused: a new
//!   mapping takes over, as for straddling. With identity mapping the guest address is checked
//!   up front. No device address that breaks a request's constraints is ever returned.
//! - **Unmap by device address.** `unmap(device_addr, len)` takes what Linux's `dma_unmap_*`
//!   gets: the returned address and the mapped length. Live requests are recorded under that
//!   key, so an unmap that matches no live map is refused without touching any count.
//! - **Cache and eviction.** A window whose last user leaves stays mapped (cached); a later
//!   request for the same guest pages reuses it without a host call. When a map needs bytes
//!   or mapping slots, cached windows are unmapped least recently released first. A window
//!   in use is never evicted.
//! - **Budget first.** Zero length, wrapping, addresses outside guest RAM, requests larger
//!   than the budget, or requests that would not fit even after evicting every cached window
//!   get a typed [`DmaError`] saying what is pinned, before any host call.
//! - **Straddling with host-picked addresses.** A request that touches a window in use and
//!   memory outside it needs one device-contiguous mapping, which the old window cannot give.
//!   The new mapping then takes over ("shadows") the overlapping addresses; the old window
//!   stays mapped for its current users (the same guest pages are briefly mapped twice, which
//!   the DART and VFIO allow) and is unmapped, not cached, when they leave. Cached windows in
//!   the way are simply evicted. This is the only way guest ranges of live mappings overlap.
//! - **Fragmentation.** Windows sit on a fixed, aligned grid of guest addresses and large
//!   mappings are exactly their pages, so guest-side bookkeeping never fragments; budget is
//!   counted in bytes and mappings, so freeing any cached window makes room for any request
//!   (`tests::property` checks the manager never refuses a map that fits after eviction).
//!   Device-address fragmentation is the host's when it picks addresses; the
//!   [`HostPicksAllocator`] that the VFIO host-picks mapper uses keeps it low with best fit
//!   and coalescing of freed ranges.
//! - **Host failures.** A failed host map leaves the state as it was (mappings made for the
//!   same request become cached windows); a failed host unmap leaves the window mapped,
//!   counted and first in line for eviction.

mod config;
mod error;
mod extent;
mod guest_ram;
mod host_picks;
mod iova_aperture;
mod lru;
mod mapper;
pub mod pv;
mod runs;
mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod units;
mod window;

#[cfg(test)]
mod tests;

pub use config::{ConfigError, WindowConfig, DEFAULT_WINDOW_SIZE};
pub use error::DmaError;
pub use extent::WindowInfo;
pub use guest_ram::{GuestRam, GuestRamError, GuestRamRange};
pub use host_picks::{AllocatorError, FitPolicy, HostPicksAllocator};
pub use iova_aperture::{
    parse_vfio_iova_ranges, usable_iova_ranges, ARM64_SMMU_MSI_WINDOW, DEFAULT_DMA_REACH,
    IOVA_FLOOR, VFIO_IOMMU_INFO_SIZE,
};
pub use mapper::{
    auto_alignment, AddressPolicy, ConstraintKind, HostMapper, MapConstraints, MapperError,
    MapperLimits, AUTO_ALIGN_MAX, AUTO_ALIGN_MIN,
};
pub use pv::{DmaWindowDevice, PvDeviceError, SharedWindows};
pub use stats::{DmaStats, FailureCounts, FailureReason};
pub use units::Bytes;
pub use window::WindowManager;
