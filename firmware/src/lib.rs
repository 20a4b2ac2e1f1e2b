//! What the guest is handed at boot: the flattened device tree. Portable: every address is
//! passed in, so this crate depends on no other part of Aperture.

mod fdt;

pub use fdt::{
    create_fdt, FdtConfig, FdtError, GicConfig, MmioDeviceNode, PciHostNode, PowerKeyNode,
    CMDLINE_MAX_SIZE, FDT_MAX_SIZE, KEY_POWER, PHANDLE_CLOCK, PHANDLE_GIC, PHANDLE_GPIO,
    PHANDLE_ITS, PHANDLE_MSI_FRAME,
};
