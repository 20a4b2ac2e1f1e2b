//! The host kernel's version, where it decides what Aperture can do: before Linux 6.8, KVM
//! on arm64 maps VFIO BARs into guests as Device-nGnRE memory whatever the guest asks for
//! (Linux 6.8 added `VM_ALLOW_ANY_UNCACHED`, which lets the guest's Normal-NC mapping
//! through). NVIDIA's drivers rely on write-combined BARs (the framebuffer, BAR1 uploads,
//! USERD doorbells): on older kernels they are slow, and unaligned accesses to Device memory
//! fault in the guest.

use super::Finding;

/// What the check line is called.
pub const WHAT: &str = "KVM BAR memory type";
/// The first Linux release whose KVM lets guests map VFIO BARs write-combined.
pub const WRITE_COMBINING_SINCE: (u32, u32) = (6, 8);

/// The (major, minor) of a kernel release string such as `6.8.0-45-generic` or `5.15.0`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release.trim().split(['.', '-', '+']);
    let major = numbers.next()?.parse().ok()?;
    let minor_text = numbers.next()?;
    let digits = minor_text.find(|c: char| !c.is_ascii_digit()).unwrap_or(minor_text.len());
    let minor = minor_text[..digits].parse().ok()?;
    Some((major, minor))
}

/// Whether guests get write-combined VFIO BARs on a kernel of `release` (`uname -r`).
pub fn bar_memory_type(release: Option<&str>) -> Finding {
    let (major, minor) = WRITE_COMBINING_SINCE;
    let update = format!(
        "update the host kernel to Linux {major}.{minor} or later (KVM's VM_ALLOW_ANY_UNCACHED); \
         until then GPU drivers in the guest are slow and may fault on unaligned BAR accesses"
    );
    let Some(release) = release else {
        return Finding::warn(WHAT, "the kernel release is unknown (uname failed)", update);
    };
    match parse_release(release) {
        Some(version) if version >= WRITE_COMBINING_SINCE => Finding::ok(
            WHAT,
            format!(
                "Linux {release}: guests map VFIO BARs with their own memory type, so GPU \
                 drivers get write-combined BARs"
            ),
        ),
        Some(_) => Finding::warn(
            WHAT,
            format!(
                "Linux {release}: KVM maps VFIO BARs as Device memory whatever the guest asks; \
                 NVIDIA drivers rely on write-combined BARs"
            ),
            update,
        ),
        None => Finding::warn(
            WHAT,
            format!(
                "kernel release {release:?} not understood; write-combining needs {major}.{minor}"
            ),
            update,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("6.10"), Some((6, 10)));
        assert_eq!(parse_release("6.1rc3"), Some((6, 1)));
        assert_eq!(parse_release("4.19.0+"), Some((4, 19)));
        assert_eq!(parse_release("6"), None);
        assert_eq!(parse_release("linux"), None);
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn old_kernels_warn_new_ones_pass() {
        for (release, status) in [
            ("5.15.0-91-generic", Status::Warn),
            ("6.7.12", Status::Warn),
            ("6.8.0-45-generic", Status::Ok),
            ("6.10.3-arch1", Status::Ok),
            ("7.0.0", Status::Ok),
            ("weird", Status::Warn),
        ] {
            let f = bar_memory_type(Some(release));
            assert_eq!(f.status, status, "{f}");
            assert!(f.detail.contains(release), "{f}");
        }
        let f = bar_memory_type(Some("6.6.30"));
        assert!(f.detail.contains("Device memory") && f.detail.contains("write-combined"), "{f}");
        assert!(f.fix.as_deref().unwrap().contains("Linux 6.8 or later"), "{f}");
        let f = bar_memory_type(None);
        assert_eq!(f.status, Status::Warn);
        assert!(f.detail.contains("unknown"), "{f}");
    }
}
