//! What Aperture reads from the host outside the hypervisor: PCI functions in sysfs, and on
//! macOS the OS version and the passthrough dext. Shared by `aperture check` and `aperture
//! devices`; the OS calls are in [`sys`], behind this portable front.

#[cfg(test)]
#[cfg(target_os = "linux")]
pub(crate) mod fake;
pub mod pci;
pub mod sys;

/// How to install the macOS passthrough dext, for fixes.
pub const DEXT_FIX: &str = "install the VFIOUserPCIDriver extension and activate it (System \
     Settings > General > Login Items & Extensions > Driver Extensions), then replug the device";
