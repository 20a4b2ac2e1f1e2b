//! Aperture's emulated devices.
