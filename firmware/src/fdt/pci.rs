//! The PCIe host bridge node (`pci-host-ecam-generic`).

use vm_fdt::{FdtWriter, FdtWriterResult};

use super::{reg, GIC_SPI, IRQ_TYPE_LEVEL_HIGH, PHANDLE_GIC};

/// The PCIe host bridge (`pci-host-ecam-generic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHostNode {
    /// ECAM region `(base, size)`; its size sets the bus range (1 MiB per bus).
    pub ecam: (u64, u64),
    /// 32-bit non-prefetchable memory window `(base, size)`.
    pub mmio32: (u64, u64),
    /// 64-bit prefetchable memory window `(base, size)`.
    pub mmio64: (u64, u64),
    /// SPIs for INTA..INTD, if the bridge routes legacy interrupts. Device `slot` raising pin
    /// `pin` (1 = INTA) on bus 0 signals `intx_spis[(slot + pin - 1) % 4]`, the usual swizzle;
    /// the guest swizzles devices behind bridges up to bus 0 itself.
    pub intx_spis: Option<[u32; 4]>,
}

/// `ranges` space codes (the phys.hi cell of a PCI address).
const PCI_SPACE_MEM32: u32 = 0x0200_0000;
const PCI_SPACE_MEM64_PREFETCH: u32 = 0x4300_0000;
/// ECAM gives each bus 1 MiB of configuration space.
const ECAM_BYTES_PER_BUS: u64 = 1 << 20;
/// The device number sits in bits 11..15 of phys.hi.
const PCI_DEVICE_SHIFT: u32 = 11;
/// INTx pins, INTA..INTD.
const PCI_INTX_PINS: u32 = 4;

/// Writes the host bridge; `msi_controller` is the phandle of the ITS or MSI frame, if any.
pub(super) fn pci_node(
    fdt: &mut FdtWriter,
    pci: &PciHostNode,
    msi_controller: Option<u32>,
) -> FdtWriterResult<()> {
    let (ecam_base, ecam_size) = pci.ecam;
    let buses = (ecam_size / ECAM_BYTES_PER_BUS).clamp(1, 256);
    let last_bus = u32::try_from(buses - 1).unwrap_or(255);
    let node = fdt.begin_node(&format!("pcie@{ecam_base:x}"))?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    reg(fdt, ecam_base, ecam_size)?;
    fdt.property_array_u32("bus-range", &[0, last_bus])?;
    fdt.property_u32("linux,pci-domain", 0)?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.property_null("dma-coherent")?;
    fdt.property_array_u32("ranges", &ranges(pci))?;
    if let Some(phandle) = msi_controller {
        // Requester id (bus << 8 | devfn) is the MSI device id, one to one. msi-map alone is
        // enough for Linux with either controller; msi-parent to the ITS would need a cell.
        fdt.property_array_u32("msi-map", &[0, phandle, 0, 0x1_0000])?;
    }
    if let Some(spis) = pci.intx_spis {
        interrupt_map(fdt, &spis)?;
    }
    fdt.end_node(node)
}

/// The two memory windows, identity-mapped: PCI bus address = CPU physical address.
fn ranges(pci: &PciHostNode) -> Vec<u32> {
    let mut cells = Vec::new();
    for (space, (base, size)) in
        [(PCI_SPACE_MEM32, pci.mmio32), (PCI_SPACE_MEM64_PREFETCH, pci.mmio64)]
    {
        let [base_hi, base_lo] = split_u64(base);
        let [size_hi, size_lo] = split_u64(size);
        cells.extend_from_slice(&[space, base_hi, base_lo, base_hi, base_lo, size_hi, size_lo]);
    }
    cells
}

/// INTx routing. The swizzle repeats every four slots, so the mask keeps only the low two bits
/// of the device number and the pin: 4 slots x 4 pins entries cover every device on bus 0.
fn interrupt_map(fdt: &mut FdtWriter, spis: &[u32; 4]) -> FdtWriterResult<()> {
    let mut map = Vec::new();
    for slot in 0..PCI_INTX_PINS {
        for pin in 1..=PCI_INTX_PINS {
            let spi = spis[((slot + pin - 1) % PCI_INTX_PINS) as usize];
            // Child unit address (3 cells), child pin, parent phandle, parent unit address
            // (the GIC has #address-cells = 2), parent specifier.
            map.extend_from_slice(&[slot << PCI_DEVICE_SHIFT, 0, 0, pin, PHANDLE_GIC, 0, 0]);
            map.extend_from_slice(&[GIC_SPI, spi, IRQ_TYPE_LEVEL_HIGH]);
        }
    }
    fdt.property_array_u32("interrupt-map", &map)?;
    fdt.property_array_u32("interrupt-map-mask", &[0b11 << PCI_DEVICE_SHIFT, 0, 0, 0b111])
}

/// A 64-bit value as two cells, high first.
fn split_u64(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}
