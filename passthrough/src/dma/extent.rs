//! One host mapping as the window manager tracks it.

/// Names an extent for its whole life (ids are never reused).
pub(crate) type ExtentId = u64;

/// A guest range mapped by one host call: one or more whole windows (clipped to guest RAM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extent {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Device address of `gpa`.
    pub device_addr: u64,
    /// Live map requests using it; 0 means cached (still mapped, evictable).
    pub users: u64,
    /// A newer extent now serves part of this one's guest range (host-picks only); it is
    /// unmapped as soon as its last user leaves instead of being cached.
    pub shadowed: bool,
}

impl Extent {
    /// End of the guest range (exclusive).
    pub fn gpa_end(&self) -> u64 {
        self.gpa + self.len
    }

    /// Device address of `gpa` inside this extent.
    pub fn device_addr_of(&self, gpa: u64) -> u64 {
        self.device_addr + (gpa - self.gpa)
    }
}

/// A host mapping as shown to callers (tests, traces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowInfo {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Device address of `gpa`.
    pub device_addr: u64,
    /// Live map requests using it (0: cached).
    pub users: u64,
    /// A newer window serves part of its guest range; it goes when its users do.
    pub shadowed: bool,
}

impl From<&Extent> for WindowInfo {
    fn from(e: &Extent) -> Self {
        Self {
            gpa: e.gpa,
            len: e.len,
            device_addr: e.device_addr,
            users: e.users,
            shadowed: e.shadowed,
        }
    }
}
