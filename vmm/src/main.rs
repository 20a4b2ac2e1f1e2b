//! `aperture`: boot an arm64 Linux guest with an assigned PCI device.
fn main() {}
