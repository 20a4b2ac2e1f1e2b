//! What a hypervisor backend reports: typed, with the OS or hypervisor error as the source and
//! a one-line `Display` that says what failed and how to fix it.

use arch::esr::ExceptionClass;
use arch::mmio::MmioDecodeError;
use arch::sysreg::SysregError;

use super::hvf::{gic::GicPlanError, status, version};
use super::kvm::routing::RoutingError;
use super::slots::SlotError;

/// Errors from a hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` could not be opened.
    #[error("{} ({source})", kvm_open_fix(.source))]
    KvmOpen {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// This build has no backend for the host.
    #[error(
        "no hypervisor backend for {arch}-{os}: Aperture runs arm64 guests on arm64 Linux hosts \
         (KVM) and Apple Silicon Macs (Hypervisor.framework); on other machines use the \
         emulated arm64 host of images/boot-demo.sh"
    )]
    NoBackend {
        /// The host's architecture (`std::env::consts::ARCH`).
        arch: &'static str,
        /// The host's OS (`std::env::consts::OS`).
        os: &'static str,
    },
    /// `--tso` on a hypervisor that cannot run a vCPU with total store ordering.
    #[error(
        "--tso: {hypervisor} cannot run a vCPU with total store ordering (only \
         Hypervisor.framework on an Apple Silicon Mac can); run without --tso, and the x86 \
         emulator (FEX-Emu) keeps emulating x86 ordering in software"
    )]
    TsoUnsupported {
        /// The hypervisor.
        hypervisor: &'static str,
    },
    /// This macOS lacks the in-kernel GIC (macOS 14 and older).
    #[error("{}", version::gic_missing_message(.macos_version.as_deref()))]
    HvfNoGic {
        /// The running macOS (`kern.osproductversion`), when known.
        macos_version: Option<String>,
    },
    /// `hv_vm_create` failed.
    #[error("{}", status::vm_create_message(*.status))]
    HvfVmCreate {
        /// The `hv_return_t`.
        status: i32,
    },
    /// Hypervisor.framework's GIC does not fit Aperture's memory map or the VM's GIC.
    #[error(transparent)]
    HvfGic(#[from] GicPlanError),
    /// A Hypervisor.framework call failed.
    #[error("{what}: {}", status::describe(*.status))]
    HvfCall {
        /// What was being done, e.g. "hv_vm_map 0x40000000+0x4000".
        what: String,
        /// The `hv_return_t`.
        status: i32,
    },
    /// A hypervisor call failed.
    #[error("{what}: {source}")]
    Call {
        /// What was being done, e.g. "KVM_CREATE_VCPU for vCPU 1".
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A guest memory mapping was refused before the hypervisor was asked.
    #[error("mapping guest {guest_addr:#x}+{size:#x}: {source}")]
    Mapping {
        /// Guest physical start.
        guest_addr: u64,
        /// Length in bytes.
        size: u64,
        /// Why.
        #[source]
        source: SlotError,
    },
    /// KVM refused to create the VM.
    #[error("KVM_CREATE_VM with a {ipa_bits}-bit IPA space: {source}")]
    KvmCreateVm {
        /// The guest physical address size asked for.
        ipa_bits: u32,
        /// The ioctl's error.
        #[source]
        source: std::io::Error,
    },
    /// KVM cannot create the in-kernel interrupt controller.
    #[error(
        "this host's KVM cannot create an in-kernel {device} ({source}); Aperture needs a GICv3 \
         host"
    )]
    KvmNoGic {
        /// "GICv3" or "GICv3 ITS".
        device: &'static str,
        /// The ioctl's error.
        #[source]
        source: std::io::Error,
    },
    /// The backend has no ioeventfds (Hypervisor.framework): doorbell writes trap instead.
    #[error("this hypervisor has no ioeventfd; virtio queue notifies exit to the VMM")]
    NoIoeventfd,
    /// The backend has no irqfds.
    #[error("this hypervisor has no irqfd")]
    NoIrqfd,
    /// The backend cannot put a VM back to its boot state (reboot in place).
    #[error("{backend} cannot reset the vCPUs and interrupt controller for a reboot in place")]
    NoRebootInPlace {
        /// The backend.
        backend: &'static str,
    },
    /// A level irqfd was asked for before the GIC exists.
    #[error("a level irqfd for SPI {spi} needs the GIC, which is not created yet")]
    NoGicYet {
        /// The SPI (0-based).
        spi: u32,
    },
    /// An SPI the GIC does not implement.
    #[error("SPI {spi} (INTID {}) is beyond the GIC's {nr_irqs} interrupt lines", spi + 32)]
    SpiOutOfRange {
        /// The SPI (0-based).
        spi: u32,
        /// Interrupt lines the GIC implements, including the 32 private ones.
        nr_irqs: u32,
    },
    /// The GSI routing table is full or inconsistent.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// KVM's routing table structure could not be built.
    #[error("GSI routing table: {detail}")]
    RoutingTable {
        /// The FAM wrapper's error.
        detail: String,
    },
    /// What the guest did on a vCPU that the VMM cannot emulate. The vCPU is named by whoever
    /// reports it ([`crate::vcpu_thread::VcpuError`]), not here.
    #[error(transparent)]
    Guest(#[from] GuestError),
}

impl HypervisorError {
    /// Wraps an OS error with what was being done.
    pub fn call(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Call { what: what.into(), source: source.into() }
    }

    /// A refused unmapping of `slot`.
    pub fn unmapping(slot: &super::MemorySlot, source: SlotError) -> Self {
        Self::Mapping { guest_addr: slot.guest_addr, size: slot.size, source }
    }

    /// The guest program counter the message already names, so a report does not add it twice.
    pub fn guest_pc(&self) -> Option<u64> {
        match self {
            Self::Guest(guest) => guest.pc(),
            _ => None,
        }
    }
}

/// The fix for a failed open of `/dev/kvm`, by its errno.
fn kvm_open_fix(source: &std::io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::ENOENT) => {
            "the host has no /dev/kvm: boot an arm64 Linux host with virtualization (EL2) \
             available and the kvm module loaded"
        }
        Some(libc::EACCES | libc::EPERM) => {
            "permission denied on /dev/kvm: add your user to the kvm group (sudo usermod -aG kvm \
             $USER, then log in again) or run as root"
        }
        _ => "could not open /dev/kvm",
    }
}

/// The instruction word at the guest PC, for a report about an MMIO access Aperture could not
/// decode, or why it is not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstructionWord {
    /// The word.
    Read(u32),
    /// The guest MMU is on: the PC is virtual and Aperture does not walk the guest's tables.
    MmuOn,
    /// The PC is outside guest RAM.
    OutsideRam,
}

impl std::fmt::Display for InstructionWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(word) => write!(f, " (instruction word {word:#010x})"),
            Self::MmuOn => write!(f, " (instruction word not shown: the guest MMU is on)"),
            Self::OutsideRam => {
                write!(f, " (instruction word not shown: the PC is outside guest RAM)")
            }
        }
    }
}

/// What the guest did that the VMM cannot emulate, on one vCPU.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The hypervisor returned an exit the backend has no handler for.
    #[error("stopped with an exit Aperture cannot handle: {exit}")]
    UnhandledExit {
        /// The exit, as the hypervisor's bindings print it.
        exit: String,
    },
    /// Hypervisor.framework returned an exit reason it does not document.
    #[error("stopped for a reason Hypervisor.framework does not explain (exit reason {reason})")]
    UnknownExitReason {
        /// The raw `hv_exit_reason_t`.
        reason: u32,
    },
    /// An exception the backend does not handle (BRK, SError, a debug exception...).
    #[error(
        "the guest raised {class} at PC {pc:#x} (ESR {esr:#x}), which Aperture does not handle"
    )]
    UnhandledException {
        /// Its class.
        class: ExceptionClass,
        /// Guest PC.
        pc: u64,
        /// The syndrome.
        esr: u64,
    },
    /// An instruction fetch outside guest RAM.
    #[error(
        "the guest executed from IPA {ipa:#x} at PC {pc:#x}, which is not guest RAM (ESR {esr:#x})"
    )]
    ExecutedOutsideRam {
        /// Faulting guest physical address.
        ipa: u64,
        /// Guest PC.
        pc: u64,
        /// The syndrome.
        esr: u64,
    },
    /// A data abort that is not an MMIO access Aperture can emulate.
    #[error("{source}{instruction}")]
    Mmio {
        /// Why it cannot be emulated.
        #[source]
        source: MmioDecodeError,
        /// The instruction word, or why it is not shown.
        instruction: InstructionWord,
    },
    /// A system register access Aperture cannot emulate.
    #[error(transparent)]
    Sysreg(#[from] SysregError),
    /// An HVC/SMC exit whose syndrome is neither.
    #[error("ESR {esr:#x} is not an HVC or SMC")]
    NotSmccc {
        /// The syndrome.
        esr: u64,
    },
}

impl GuestError {
    /// The guest PC the message names, if it names one.
    pub fn pc(&self) -> Option<u64> {
        match self {
            Self::UnhandledException { pc, .. } | Self::ExecutedOutsideRam { pc, .. } => Some(*pc),
            Self::Mmio { source, .. } => source.pc(),
            Self::Sysreg(source) => source.pc(),
            Self::UnhandledExit { .. } | Self::UnknownExitReason { .. } | Self::NotSmccc { .. } => {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_open_errors_say_what_to_do() {
        let missing =
            HypervisorError::KvmOpen { source: std::io::Error::from_raw_os_error(libc::ENOENT) };
        assert!(
            missing.to_string().starts_with("the host has no /dev/kvm: boot an arm64 Linux host"),
            "{missing}"
        );
        assert!(missing.to_string().ends_with("(No such file or directory (os error 2))"));
        let denied =
            HypervisorError::KvmOpen { source: std::io::Error::from_raw_os_error(libc::EACCES) };
        assert!(denied.to_string().contains("sudo usermod -aG kvm $USER"), "{denied}");
        assert!(std::error::Error::source(&denied).is_some());
    }

    #[test]
    fn guest_errors_name_their_pc() {
        let raised = GuestError::UnhandledException {
            class: ExceptionClass::Other(0x3c),
            pc: 0x1000,
            esr: 0xf200_0000,
        };
        assert_eq!(raised.pc(), Some(0x1000));
        assert_eq!(HypervisorError::from(raised).guest_pc(), Some(0x1000));
        assert_eq!(GuestError::NotSmccc { esr: 0 }.pc(), None);
        let mmio = GuestError::Mmio {
            source: MmioDecodeError::NoSyndrome { pc: 0x2000, ipa: 0x3000, esr: 0x9200_0000 },
            instruction: InstructionWord::Read(0xa9bf_7bfd),
        };
        assert_eq!(mmio.pc(), Some(0x2000));
        assert!(mmio.to_string().ends_with(" (instruction word 0xa9bf7bfd)"), "{mmio}");
    }
}
