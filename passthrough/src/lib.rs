//! Device passthrough for Aperture: VFIO on Linux, a PCIDriverKit client on macOS, and the DMA
//! window manager that fits guest DMA into the host IOMMU's limits. Filled in by later work.
