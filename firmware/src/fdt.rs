//! The device tree: one small function per node, so new devices are one function more.

use vm_fdt::{FdtWriter, FdtWriterResult};

mod pci;

pub use pci::PciHostNode;

/// Largest blob the boot protocol allows (arm64 booting.rst).
pub const FDT_MAX_SIZE: usize = 2 << 20;
/// arm64's COMMAND_LINE_SIZE, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Phandle of the GIC (the root's interrupt-parent).
pub const PHANDLE_GIC: u32 = 1;
/// Phandle of the GICv3 ITS: the PCIe host bridge's `msi-map` points at it.
pub const PHANDLE_ITS: u32 = 2;
/// Phandle of the 24 MHz APB clock of the PrimeCell devices.
pub const PHANDLE_CLOCK: u32 = 3;
/// Phandle of the GICv2m-style MSI frame (Hypervisor.framework); `msi-map` target without an ITS.
pub const PHANDLE_MSI_FRAME: u32 = 4;
/// Phandle of the PL061 GPIO controller the power key hangs off.
pub const PHANDLE_GPIO: u32 = 5;
/// Linux's `KEY_POWER` input code (include/uapi/linux/input-event-codes.h).
pub const KEY_POWER: u32 = 116;

// GIC interrupt specifier cells (`<type number flags>`).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
const IRQ_TYPE_LEVEL_LOW: u32 = 8;
/// The GICv3 maintenance interrupt is PPI 9.
const GIC_MAINTENANCE_PPI: u32 = 9;

/// Errors building the device tree.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt refused a node or property: a bug in how Aperture builds the tree.
    #[error("building the device tree failed: {0} (a bug in Aperture; please report it)")]
    Writer(#[from] vm_fdt::Error),
    /// No vCPUs.
    #[error("the device tree needs at least one CPU; pass --cpus 1 or more")]
    NoCpus,
    /// The command line does not fit the guest's buffer.
    #[error(
        "kernel command line is {0} bytes; arm64 Linux takes at most {max} (COMMAND_LINE_SIZE): \
         shorten --cmdline",
        max = CMDLINE_MAX_SIZE - 1
    )]
    CmdlineTooLong(usize),
    /// The command line holds a NUL byte, which would cut it short in the guest.
    #[error("kernel command line contains a NUL byte at offset {0}; remove it from --cmdline")]
    CmdlineHasNul(usize),
    /// The initrd's end does not fit in a 64-bit address.
    #[error(
        "initrd at {start:#x} of {size:#x} bytes ends beyond the 64-bit address space \
         (a bug in the boot loader; please report it)"
    )]
    InitrdOutOfRange {
        /// First byte.
        start: u64,
        /// Length in bytes.
        size: u64,
    },
    /// The blob is larger than the boot protocol allows.
    #[error(
        "device tree is {0} bytes, more than the {FDT_MAX_SIZE} bytes arm64 Linux accepts; \
         use fewer --cpus"
    )]
    TooLarge(usize),
}

/// The interrupt controller's frames, as `(base, size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicConfig {
    /// Distributor.
    pub dist: (u64, u64),
    /// All redistributors.
    pub redists: (u64, u64),
    /// ITS (KVM).
    pub its: Option<(u64, u64)>,
    /// GICv2m-style MSI frame (Hypervisor.framework): base, size, first SPI, SPI count.
    pub msi_frame: Option<(u64, u64, u32, u32)>,
}

/// A simple MMIO device: its frame and its SPI, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceNode {
    /// Frame base.
    pub base: u64,
    /// Frame size.
    pub size: u64,
    /// SPI number (INTID - 32).
    pub spi: Option<u32>,
    /// A PrimeCell's peripheral ID, given as `arm,primecell-periphid`: Linux's AMBA bus then
    /// takes it from the device tree instead of reading the eight ID registers (eight exits
    /// to the VMM per device and boot).
    pub periph_id: Option<u32>,
}

/// A PL061 GPIO controller with a `gpio-keys` power key on one of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerKeyNode {
    /// The PL061.
    pub gpio: MmioDeviceNode,
    /// The line (0..8) the key drives, active high.
    pub line: u32,
}

/// Everything the device tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig {
    /// Per vCPU, its MPIDR affinity (the `reg` of its cpu node).
    pub cpu_mpidrs: Vec<u64>,
    /// Guest RAM `(base, size)`.
    pub ram: (u64, u64),
    /// Kernel command line.
    pub cmdline: String,
    /// Initramfs `(start, size)`.
    pub initrd: Option<(u64, u64)>,
    /// Seed for the guest's RNG.
    pub rng_seed: [u8; 64],
    /// Seed for KASLR; none: the guest kernel stays where it was loaded.
    pub kaslr_seed: Option<u64>,
    /// The interrupt controller.
    pub gic: GicConfig,
    /// Arch timer PPIs: secure physical, non-secure physical, virtual, hypervisor.
    pub timer_ppis: [u32; 4],
    /// PL011 UART (the console).
    pub uart: MmioDeviceNode,
    /// PL031 RTC.
    pub rtc: MmioDeviceNode,
    /// Aperture's test-exit device.
    pub test_exit: MmioDeviceNode,
    /// The PCIe host bridge, if the VM has PCI.
    pub pci: Option<PciHostNode>,
    /// The GPIO power key, if the VM has one.
    pub power_key: Option<PowerKeyNode>,
}

/// Builds the device tree blob.
pub fn create_fdt(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    let initrd = validate(cfg)?;
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string_list(
        "compatible",
        vec!["aperture,virt".into(), "linux,dummy-virt".into()],
    )?;
    fdt.property_string("model", "Aperture")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    chosen_node(&mut fdt, cfg, initrd)?;
    memory_node(&mut fdt, cfg.ram)?;
    cpus_node(&mut fdt, &cfg.cpu_mpidrs)?;
    psci_node(&mut fdt)?;
    gic_node(&mut fdt, &cfg.gic)?;
    timer_node(&mut fdt, &cfg.timer_ppis)?;
    clock_node(&mut fdt)?;
    pl011_node(&mut fdt, &cfg.uart)?;
    pl031_node(&mut fdt, &cfg.rtc)?;
    test_exit_node(&mut fdt, &cfg.test_exit)?;
    if let Some(key) = &cfg.power_key {
        power_key_nodes(&mut fdt, key)?;
    }
    if let Some(pci) = &cfg.pci {
        pci::pci_node(&mut fdt, pci, msi_controller(&cfg.gic))?;
    }

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() > FDT_MAX_SIZE {
        return Err(FdtError::TooLarge(blob.len()));
    }
    Ok(blob)
}

/// Checks what the guest would otherwise choke on; returns the initrd as `(start, end)`.
fn validate(cfg: &FdtConfig) -> Result<Option<(u64, u64)>, FdtError> {
    if cfg.cpu_mpidrs.is_empty() {
        return Err(FdtError::NoCpus);
    }
    // The kernel copies bootargs into a COMMAND_LINE_SIZE buffer, NUL included.
    if cfg.cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(FdtError::CmdlineTooLong(cfg.cmdline.len()));
    }
    if let Some(offset) = cfg.cmdline.find('\0') {
        return Err(FdtError::CmdlineHasNul(offset));
    }
    cfg.initrd
        .map(|(start, size)| {
            start
                .checked_add(size)
                .map(|end| (start, end))
                .ok_or(FdtError::InitrdOutOfRange { start, size })
        })
        .transpose()
}

/// The MSI controller PCI devices signal to: the ITS (KVM) or the MSI frame (HVF).
fn msi_controller(gic: &GicConfig) -> Option<u32> {
    if gic.its.is_some() {
        Some(PHANDLE_ITS)
    } else if gic.msi_frame.is_some() {
        Some(PHANDLE_MSI_FRAME)
    } else {
        None
    }
}

fn uart_name(uart: &MmioDeviceNode) -> String {
    format!("pl011@{:x}", uart.base)
}

/// `reg` of a node whose parent has two address and two size cells.
fn reg(fdt: &mut FdtWriter, base: u64, size: u64) -> FdtWriterResult<()> {
    fdt.property_array_u64("reg", &[base, size])
}

fn spi_interrupt(fdt: &mut FdtWriter, spi: Option<u32>) -> FdtWriterResult<()> {
    match spi {
        Some(spi) => fdt.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_TYPE_LEVEL_HIGH]),
        None => Ok(()),
    }
}

fn chosen_node(
    fdt: &mut FdtWriter,
    cfg: &FdtConfig,
    initrd: Option<(u64, u64)>,
) -> FdtWriterResult<()> {
    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &cfg.cmdline)?;
    // The UART is a child of the root, so its path is its name under "/".
    fdt.property_string("stdout-path", &format!("/{}", uart_name(&cfg.uart)))?;
    if let Some((start, end)) = initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.property("rng-seed", &cfg.rng_seed)?;
    if let Some(seed) = cfg.kaslr_seed {
        fdt.property_u64("kaslr-seed", seed)?;
    }
    fdt.end_node(chosen)
}

fn memory_node(fdt: &mut FdtWriter, (base, size): (u64, u64)) -> FdtWriterResult<()> {
    let memory = fdt.begin_node(&format!("memory@{base:x}"))?;
    fdt.property_string("device_type", "memory")?;
    reg(fdt, base, size)?;
    fdt.end_node(memory)
}

fn cpus_node(fdt: &mut FdtWriter, mpidrs: &[u64]) -> FdtWriterResult<()> {
    let cpus = fdt.begin_node("cpus")?;
    // Two address cells: an MPIDR may carry Aff3 in bits 32..39.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for &mpidr in mpidrs {
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u64("reg", mpidr)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)
}

fn psci_node(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list("compatible", vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()])?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)
}

fn gic_node(fdt: &mut FdtWriter, gic: &GicConfig) -> FdtWriterResult<()> {
    let intc = fdt.begin_node(&format!("intc@{:x}", gic.dist.0))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u64("reg", &[gic.dist.0, gic.dist.1, gic.redists.0, gic.redists.1])?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_array_u32("interrupts", &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH])?;
    fdt.property_phandle(PHANDLE_GIC)?;
    if let Some((base, size)) = gic.its {
        let its = fdt.begin_node(&format!("msi-controller@{base:x}"))?;
        fdt.property_string("compatible", "arm,gic-v3-its")?;
        fdt.property_null("msi-controller")?;
        fdt.property_u32("#msi-cells", 1)?;
        reg(fdt, base, size)?;
        fdt.property_phandle(PHANDLE_ITS)?;
        fdt.end_node(its)?;
    }
    if let Some((base, size, first_spi, count)) = gic.msi_frame {
        let frame = fdt.begin_node(&format!("v2m@{base:x}"))?;
        fdt.property_string("compatible", "arm,gic-v2m-frame")?;
        fdt.property_null("msi-controller")?;
        reg(fdt, base, size)?;
        fdt.property_u32("arm,msi-base-spi", first_spi)?;
        fdt.property_u32("arm,msi-num-spis", count)?;
        fdt.property_phandle(PHANDLE_MSI_FRAME)?;
        fdt.end_node(frame)?;
    }
    fdt.end_node(intc)
}

fn timer_node(fdt: &mut FdtWriter, ppis: &[u32; 4]) -> FdtWriterResult<()> {
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let cells: Vec<u32> = ppis.iter().flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_LOW]).collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.end_node(timer)
}

fn clock_node(fdt: &mut FdtWriter) -> FdtWriterResult<()> {
    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(PHANDLE_CLOCK)?;
    fdt.end_node(clock)
}

/// `arm,primecell-periphid`, when the node has one.
fn periph_id(fdt: &mut FdtWriter, node: &MmioDeviceNode) -> FdtWriterResult<()> {
    match node.periph_id {
        Some(id) => fdt.property_u32("arm,primecell-periphid", id),
        None => Ok(()),
    }
}

fn pl011_node(fdt: &mut FdtWriter, uart: &MmioDeviceNode) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&uart_name(uart))?;
    fdt.property_string_list("compatible", vec!["arm,pl011".into(), "arm,primecell".into()])?;
    reg(fdt, uart.base, uart.size)?;
    spi_interrupt(fdt, uart.spi)?;
    periph_id(fdt, uart)?;
    fdt.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.end_node(node)
}

fn pl031_node(fdt: &mut FdtWriter, rtc: &MmioDeviceNode) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("pl031@{:x}", rtc.base))?;
    fdt.property_string_list("compatible", vec!["arm,pl031".into(), "arm,primecell".into()])?;
    reg(fdt, rtc.base, rtc.size)?;
    spi_interrupt(fdt, rtc.spi)?;
    periph_id(fdt, rtc)?;
    fdt.property_u32("clocks", PHANDLE_CLOCK)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.end_node(node)
}

fn test_exit_node(fdt: &mut FdtWriter, dev: &MmioDeviceNode) -> FdtWriterResult<()> {
    let node = fdt.begin_node(&format!("test-exit@{:x}", dev.base))?;
    fdt.property_string("compatible", "aperture,test-exit")?;
    reg(fdt, dev.base, dev.size)?;
    fdt.end_node(node)
}

/// The PL061 and a `gpio-keys` node whose one key is `KEY_POWER` on `key.line`, as QEMU's
/// `virt` machine describes its power button: Linux's gpio-keys turns the line's edges into
/// key presses that systemd-logind (or acpid, or a busybox loop) acts on.
fn power_key_nodes(fdt: &mut FdtWriter, key: &PowerKeyNode) -> FdtWriterResult<()> {
    let gpio = fdt.begin_node(&format!("pl061@{:x}", key.gpio.base))?;
    fdt.property_string_list("compatible", vec!["arm,pl061".into(), "arm,primecell".into()])?;
    reg(fdt, key.gpio.base, key.gpio.size)?;
    spi_interrupt(fdt, key.gpio.spi)?;
    periph_id(fdt, &key.gpio)?;
    fdt.property_null("gpio-controller")?;
    fdt.property_u32("#gpio-cells", 2)?;
    fdt.property_u32("clocks", PHANDLE_CLOCK)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.property_phandle(PHANDLE_GPIO)?;
    fdt.end_node(gpio)?;

    let keys = fdt.begin_node("gpio-keys")?;
    fdt.property_string("compatible", "gpio-keys")?;
    let power = fdt.begin_node("poweroff")?;
    fdt.property_string("label", "GPIO Key Poweroff")?;
    fdt.property_u32("linux,code", KEY_POWER)?;
    // <controller line flags>: flags 0 = active high.
    fdt.property_array_u32("gpios", &[PHANDLE_GPIO, key.line, 0])?;
    fdt.end_node(power)?;
    fdt.end_node(keys)
}

#[cfg(test)]
mod tests;
