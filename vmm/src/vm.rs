//! The VM's life: build it from a [`VmConfig`], run it, and tear it down.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arch::layout::{self, MemoryLayout};
use arch::loader::{plan_boot, BootPlan};
use arch::regs::{boot_cpu_regs, mpidr_to_fdt_reg};
use devices::virtio::WorkerStartHook;
use devices::{IrqLine, Pl011, Pl031, Pl061, TestExit};
use firmware::{FdtConfig, GicConfig, MmioDeviceNode, PciHostNode, PowerKeyNode};
use log::{debug, info, warn};

use crate::assign::AssignedDevices;
use crate::bus::{BusError, MmioBus};
use crate::config::VmConfig;
use crate::console::{self, RawTerminal};
use crate::control::{StopReason, VmControl};
use crate::hypervisor::{self, GicSpec, Hypervisor, HypervisorError, MsiController, Vm, VmSpec};
use crate::memory::{GuestRam, MemoryError};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::signals;
use crate::uart_page::ConsoleUart;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file could not be read.
    #[error("{what} {}: {source}", .path.display())]
    Read {
        /// Which option.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is not a bootable arm64 Image.
    #[error("--kernel {}: {source}", .path.display())]
    Kernel {
        /// The path.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: arch::image::ImageError,
    },
    /// The memory map cannot be built.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// Kernel, initrd and device tree do not fit.
    #[error(transparent)]
    Loader(#[from] arch::loader::LoaderError),
    /// The host hypervisor failed or is missing.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The device tree could not be built.
    #[error("building the device tree: {0}")]
    Fdt(#[from] firmware::FdtError),
    /// The device bus could not be built.
    #[error("building the device bus: {0}")]
    Bus(#[from] BusError),
    /// The PCI hierarchy could not be built.
    #[error(transparent)]
    Pci(#[from] crate::pci::PciSetupError),
    /// A `--device` could not be assigned.
    #[error(transparent)]
    Assign(#[from] crate::assign::AssignError),
    /// A thread could not be started.
    #[error("could not start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A vCPU thread ended before reporting in.
    #[error("vCPU thread {0} ended during setup")]
    VcpuLost(u32),
    /// The control thread could not be confined to its seccomp allowlist.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Drives one SPI of the VM's interrupt controller.
struct SpiLine {
    vm: Arc<dyn Vm>,
    spi: u32,
}

impl IrqLine for SpiLine {
    fn set_level(&self, asserted: bool) {
        if let Err(e) = self.vm.set_spi_level(self.spi, asserted) {
            warn!("SPI {}: {e}", self.spi);
        }
    }
}

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, VmError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| VmError::Read { what, path: path.to_path_buf(), source })?;
    Ok(bytes)
}

/// Random bytes from the host for the guest's RNG and KASLR seeds. Linux asks `getrandom`,
/// which the seccomp allowlists allow (a reboot in place reseeds from the confined main
/// thread, which may not open files).
fn host_random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    #[cfg(target_os = "linux")]
    {
        // SAFETY: writes at most N bytes into `bytes`; requests of up to 256 bytes are never
        // cut short once the pool is ready.
        let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
        if usize::try_from(got).is_ok_and(|got| got == N) {
            return bytes;
        }
    }
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        warn!("no host randomness for the guest's seeds ({e}); the guest seeds itself");
    }
    bytes
}

/// Where the guest console goes.
pub enum Console {
    /// This process's stdout and stdin (raw mode when stdin is a terminal).
    Host,
    /// Output into a writer, no input (tests).
    Capture(Box<dyn std::io::Write + Send>),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Host => "Console::Host",
            Self::Capture(_) => "Console::Capture",
        })
    }
}

/// Builds the VM described by `config` on this host's hypervisor, runs it until it stops,
/// and returns why it stopped.
pub fn run(config: &VmConfig) -> Result<StopReason, VmError> {
    let hypervisor = hypervisor::host_hypervisor()?;
    run_on(hypervisor.as_ref(), config, Console::Host)
}

/// [`run`] on a given hypervisor and console.
pub fn run_on(
    hypervisor: &dyn Hypervisor,
    config: &VmConfig,
    console: Console,
) -> Result<StopReason, VmError> {
    let mut phases = crate::boot_phases::BootPhases::default();
    if config.seccomp {
        seccomp::prepare_in_background();
    }
    let kernel = images::KernelFile::open(&config.kernel)?;
    info!("kernel: {} ({} MiB loaded)", kernel.format(), kernel.layout().image_size >> 20);
    let initrd = config.initrd.as_deref().map(images::InitrdFile::open).transpose()?;
    phases.mark("open kernel+initrd");

    let max_ipa_bits = hypervisor.max_ipa_bits().min(layout::PREFERRED_IPA_BITS);
    // The devices' BARs are sized only once they are opened, after the VM exists: with
    // devices the window is as large as the host allows (the pipeline then refuses BARs that
    // do not fit); without, the smallest map that holds RAM saves a stage-2 level.
    let ipa_bits = if config.devices.is_empty() {
        layout::smallest_ipa_bits(config.memory_bytes, &[], max_ipa_bits)?
    } else {
        max_ipa_bits
    };
    let memory_layout = MemoryLayout::new(config.memory_bytes, config.vcpus, ipa_bits)?;
    let plan = plan_boot(memory_layout.ram, kernel.layout(), initrd.as_ref().map(|i| i.len()))?;
    debug!("memory layout {memory_layout:x?}, boot plan {plan:x?}");

    let vm = hypervisor.create_vm(&VmSpec { ipa_bits, tso: config.tso })?;
    phases.mark("create VM");
    let ram = Arc::new(GuestRam::new(vm.as_ref(), memory_layout.ram.base, memory_layout.ram.size)?);
    phases.mark("map RAM");
    let image_load = images::ImageLoad::start(ram.clone(), plan, kernel, initrd)?;

    let control = Arc::new(VmControl::default());
    let (output, host_console): (Box<dyn std::io::Write + Send>, bool) = match console {
        Console::Host => (Box::new(std::io::stdout()), true),
        Console::Capture(writer) => (writer, false),
    };
    // Before any vCPU exists: a device that cannot be assigned fails the run early.
    let trace = crate::pci::open_trace(config)?;
    let (mut assigned, pending) = AssignedDevices::open(&vm, &ram, config, trace.as_ref())?;
    let pci = crate::pci::PciExtras {
        assigned: pending,
        trace: trace.clone(),
        worker_start: worker_start_hook(config, &control),
    };
    let mut devices = build_devices(&vm, &control, output, &ram, &memory_layout, config, pci)?;
    phases.mark("devices");
    assigned.watch_loss(&vm, &devices.pci, trace.as_ref(), config.seccomp)?;
    let (vcpus, cpus) =
        vcpus::spawn_vcpus(config.vcpus, config.seccomp, &vm, &control, &devices.bus)?;
    phases.mark("vCPUs");
    let fdt = fdt_config(config, &memory_layout, &plan, &cpus, vm.msi_controller());
    let setup = (|| -> Result<reboot::BootPayload, VmError> {
        let msi = vm.msi_controller();
        vm.create_gic(&GicSpec {
            dist_base: layout::GIC_DIST_BASE,
            redist_base: memory_layout.gic_redists.base,
            redist_size: memory_layout.gic_redists.size,
            its_base: matches!(msi, MsiController::Its).then_some(layout::GIC_ITS_BASE),
            nr_irqs: layout::gic_nr_irqs(matches!(msi, MsiController::Its)),
        })?;
        phases.mark("GIC");
        // Level irqfds need the GIC.
        assigned.connect_intx(&vm, &devices.intx);
        let (kernel, initrd) = image_load.finish()?;
        // Kept for reboots in place, which load them again.
        let mut payload = reboot::BootPayload { kernel, initrd, plan, fdt };
        payload.load_device_tree(&ram)?;
        phases.mark("images (rest)+device tree");
        Ok(payload)
    })();
    let payload = match setup {
        Ok(payload) => payload,
        Err(e) => {
            vcpus.abort(&control);
            return Err(e);
        }
    };

    // The platform keeps the INTx handles it connected; these copies would hold an unplugged
    // device open.
    devices.intx.clear();
    let terminal =
        if host_console { attach_host_console(&devices, &control, config.seccomp) } else { None };
    // The VM is built and its threads are waiting: from here on this thread only waits,
    // stops the vCPUs and tears down.
    if config.seccomp {
        if let Err(e) = seccomp::confine(ThreadKind::Control) {
            vcpus.abort(&control);
            return Err(e.into());
        }
    }

    // A signal that came during setup: the vCPUs see the stop and never enter the guest, and
    // the VM ends through the normal path below.
    if let Some(signal) = signals::take() {
        control.request_stop(StopReason::Signal(signal));
    }
    // Every thread of the VM exists (and blocks SIGUSR1): from here on SIGUSR1 (re-plug)
    // reaches this thread only, whose wait loop acts on it.
    if let Err(e) = signals::accept_replug() {
        warn!("SIGUSR1 (re-plug) stays blocked: {e}");
    }
    vcpus.start(boot_cpu_regs(&plan), None);
    phases.mark("sandbox+start");
    info!("guest started with {} vCPU(s) and {} MiB", config.vcpus, config.memory_bytes >> 20);
    debug!("boot phases: {phases}");

    let policy = power::ShutdownPolicy::from_grace(config.shutdown_grace);
    let mut waiter = power::StopWaiter::new(policy, config.timeout, Instant::now());
    let mut machine = reboot::Machine {
        vm: &vm,
        ram: &ram,
        pci: &devices.pci.root,
        gpio: &devices.power_key.gpio,
        pinned: !config.devices.is_empty(),
        payload,
    };
    let reason = reboot::run_boots(
        &mut machine,
        &vcpus,
        &control,
        &mut waiter,
        &devices.power_key,
        config.reboot,
        &mut || {
            if signals::take_replug() {
                assigned.replug_lost();
            }
            assigned.poll_device_loss(&control, config.on_device_loss);
        },
    );
    phases.restart();
    vcpus.stop(&control);
    phases.mark("vCPUs");
    assigned.shutdown();
    phases.mark("assigned devices");
    info!("{} vCPU exits were handled in the VMM", control.vmm_exits());
    debug!("MMIO exits by region: {}", devices.bus.exit_counts());
    debug!("PL011 register page (reads without exits): {}", devices.uart.page_summary());
    debug!("stop phases: {phases}");
    drop(terminal);
    Ok(reason)
}

/// Connects stdin to the UART; returns the raw-mode guard when stdin is a terminal.
fn attach_host_console(
    devices: &Devices,
    control: &Arc<VmControl>,
    sandbox: bool,
) -> Option<RawTerminal> {
    let terminal = RawTerminal::enable();
    let uart = devices.uart.clone();
    let quit_control = control.clone();
    let power_control = control.clone();
    let confine_control = control.clone();
    let confine = move || {
        if sandbox {
            if let Err(e) = seccomp::confine(ThreadKind::Stdin) {
                confine_control.request_stop(StopReason::Error(e.to_string()));
            }
        }
    };
    if let Err(source) = console::spawn_stdin_reader(
        terminal.is_some(),
        confine,
        move |bytes| uart.enqueue_input(bytes),
        move || quit_control.request_stop(StopReason::ConsoleQuit),
        move || power_control.request_power_key(),
    ) {
        warn!("no console input: could not start the stdin thread: {source}");
    }
    terminal
}

/// The hook that confines each virtio worker thread as it starts; none with `--no-seccomp`.
/// A worker that cannot be confined stops the VM.
fn worker_start_hook(config: &VmConfig, control: &Arc<VmControl>) -> Option<WorkerStartHook> {
    if !config.seccomp {
        return None;
    }
    let control = control.clone();
    Some(WorkerStartHook::new(move |name| {
        // Only virtio-net's vhost-net thread may drive the kernel's vhost-net.
        let kind =
            if name == "vhost-net" { ThreadKind::VhostNet } else { ThreadKind::DeviceWorker };
        if let Err(e) = seccomp::confine(kind) {
            control.request_stop(StopReason::Error(format!("{name}: {e}")));
        }
    }))
}

/// The emulated platform devices and the bus that routes to them.
struct Devices {
    bus: Arc<MmioBus>,
    uart: Arc<ConsoleUart>,
    power_key: power::PowerKey,
    /// Assigned functions' INTx, connected once the GIC exists.
    intx: Vec<crate::assign::AssignedIntx>,
    /// The guest's PCI hierarchy (reset for a reboot in place), with where each assigned
    /// function sits.
    pci: crate::pci::PciHierarchy,
}

fn build_devices(
    vm: &Arc<dyn Vm>,
    control: &Arc<VmControl>,
    console_output: Box<dyn std::io::Write + Send>,
    ram: &GuestRam,
    memory_layout: &MemoryLayout,
    config: &VmConfig,
    pci: crate::pci::PciExtras,
) -> Result<Devices, VmError> {
    let spi = |spi| -> Arc<dyn IrqLine> { Arc::new(SpiLine { vm: vm.clone(), spi }) };
    let uart = Pl011::new(spi(layout::UART_SPI), console_output);
    let uart = Arc::new(ConsoleUart::new(vm, layout::UART_BASE, uart));
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let rtc = Arc::new(Mutex::new(Pl031::new(Box::new(clock), spi(layout::RTC_SPI))));
    let test_exit = Arc::new(Mutex::new(TestExit::new(control.clone())));
    let gpio = Arc::new(Mutex::new(Pl061::new(spi(layout::GPIO_SPI))));
    let mut bus = MmioBus::default();
    bus.insert_shared("pl011", layout::UART_BASE, layout::UART_SIZE, uart.clone())?;
    bus.insert("pl031", layout::RTC_BASE, layout::RTC_SIZE, rtc)?;
    bus.insert("test-exit", layout::TEST_EXIT_BASE, layout::TEST_EXIT_SIZE, test_exit)?;
    bus.insert("pl061", layout::GPIO_BASE, layout::GPIO_SIZE, gpio.clone())?;
    let mut pci = crate::pci::build_pci(vm, ram.memory(), memory_layout, config, pci, &mut bus)?;
    let power_key = power::PowerKey { gpio, line: layout::POWER_KEY_GPIO_LINE };
    Ok(Devices { bus: Arc::new(bus), uart, power_key, intx: std::mem::take(&mut pci.intx), pci })
}

/// The interrupt controller as the device tree describes it: the ITS (KVM) or the MSI frame
/// (Hypervisor.framework), whichever the hypervisor delivers MSIs through.
fn gic_config(memory: &MemoryLayout, msi: MsiController) -> GicConfig {
    let (its, msi_frame) = match msi {
        MsiController::Its => (Some((layout::GIC_ITS_BASE, layout::GIC_ITS_SIZE)), None),
        MsiController::SpiFrame { base, spi_base, spi_count } => {
            (None, Some((base, layout::GIC_MSI_FRAME_SIZE, spi_base, spi_count)))
        }
    };
    GicConfig {
        dist: (layout::GIC_DIST_BASE, layout::GIC_DIST_SIZE),
        redists: (memory.gic_redists.base, memory.gic_redists.size),
        its,
        msi_frame,
    }
}

fn fdt_config(
    config: &VmConfig,
    memory: &MemoryLayout,
    plan: &BootPlan,
    cpus: &vcpus::GuestCpus,
    msi: MsiController,
) -> FdtConfig {
    let node = |base, size, spi, periph_id| MmioDeviceNode { base, size, spi, periph_id };
    let (kaslr, why) = config.kaslr.seed_for(cpus.id_aa64mmfr2);
    info!("guest KASLR seed: {} ({why})", if kaslr { "given" } else { "none" });
    FdtConfig {
        cpu_mpidrs: cpus.mpidrs.iter().map(|&m| mpidr_to_fdt_reg(m)).collect(),
        ram: (memory.ram.base, memory.ram.size),
        cmdline: config.cmdline.clone(),
        initrd: plan.initrd.map(|r| (r.base, r.size)),
        rng_seed: host_random::<64>(),
        kaslr_seed: kaslr.then(|| u64::from_le_bytes(host_random::<8>())),
        gic: gic_config(memory, msi),
        timer_ppis: [
            layout::TIMER_PPI_SECURE_PHYS,
            layout::TIMER_PPI_NONSECURE_PHYS,
            layout::TIMER_PPI_VIRT,
            layout::TIMER_PPI_HYP,
        ],
        uart: node(
            layout::UART_BASE,
            layout::UART_SIZE,
            Some(layout::UART_SPI),
            Some(devices::pl011::PERIPH_ID),
        ),
        rtc: node(
            layout::RTC_BASE,
            layout::RTC_SIZE,
            Some(layout::RTC_SPI),
            Some(devices::pl031::PERIPH_ID),
        ),
        test_exit: node(layout::TEST_EXIT_BASE, layout::TEST_EXIT_SIZE, None, None),
        pci: Some(PciHostNode {
            ecam: (layout::PCI_ECAM_BASE, layout::PCI_ECAM_SIZE),
            mmio32: (layout::PCI_MMIO32_BASE, layout::PCI_MMIO32_SIZE),
            mmio64: (memory.pci_mmio64.base, memory.pci_mmio64.size),
            intx_spis: Some(layout::PCI_INTX_SPIS),
        }),
        power_key: Some(PowerKeyNode {
            gpio: node(
                layout::GPIO_BASE,
                layout::GPIO_SIZE,
                Some(layout::GPIO_SPI),
                Some(devices::pl061::PERIPH_ID),
            ),
            line: layout::POWER_KEY_GPIO_LINE,
        }),
    }
}

mod images;
mod power;
mod reboot;
#[cfg(test)]
mod tests;
mod vcpus;
