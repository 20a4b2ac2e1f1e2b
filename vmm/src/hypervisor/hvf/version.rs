//! Which macOS has what Aperture needs from Hypervisor.framework.

/// The first macOS with the in-kernel GICv3 (`hv_gic_create`).
pub const GIC_MACOS_MAJOR: u32 = 15;

/// The first macOS the passthrough dext (qemu-vfio-apple's VFIOUserPCIDriver) supports: both
/// qemu-vfio-apple READMEs require macOS 26 and Xcode 26.3 for it. VMs without `--device`
/// need only [`GIC_MACOS_MAJOR`].
pub const DEXT_MACOS_MAJOR: u32 = 26;

/// The major version of a `kern.osproductversion` string ("15.3.1" gives 15).
pub fn macos_major(version: &str) -> Option<u32> {
    version.trim().split('.').next()?.parse().ok()
}

/// Why Aperture cannot run when the GIC functions are missing, naming the running macOS when
/// it is known (`kern.osproductversion`).
pub fn gic_missing_message(version: Option<&str>) -> String {
    let running = match version.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => format!("this Mac runs macOS {v}"),
        None => "the running macOS does not provide hv_gic_create".to_string(),
    };
    format!(
        "Aperture needs Hypervisor.framework's in-kernel GIC: macOS {GIC_MACOS_MAJOR} or later \
         is needed ({running}); update macOS"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(macos_major("15.3.1"), Some(15));
        assert_eq!(macos_major("14.6\n"), Some(14));
        assert_eq!(macos_major("26"), Some(26));
        assert_eq!(macos_major(""), None);
        assert_eq!(macos_major("x.1"), None);
    }

    #[test]
    fn gic_message_names_the_running_macos() {
        let msg = gic_missing_message(Some("14.6.1"));
        assert!(msg.contains("macOS 15 or later is needed"), "{msg}");
        assert!(msg.contains("this Mac runs macOS 14.6.1"), "{msg}");
        let msg = gic_missing_message(None);
        assert!(msg.contains("macOS 15 or later is needed"), "{msg}");
        assert!(msg.contains("hv_gic_create"), "{msg}");
    }
}
