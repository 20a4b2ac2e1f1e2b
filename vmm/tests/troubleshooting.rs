//! `vmm/docs/troubleshooting.md` quotes Aperture's messages: every quoted message must match
//! what the code prints today. The messages here come from the real error types' `Display`
//! (and, for the command line, from parsing real arguments), so rewording an error without
//! the table, or the table without the error, fails this test.
//!
//! Matching: a table message is a pattern in which `…`, `0x…` and the placeholders `N`, `M`,
//! `G`, `NM`, `BDF`, `PATH` and `FILE` stand for any text; backticks are ignored on both sides
//! (a Markdown code span cannot show them), and a message's line breaks count as spaces.

// A test: its helpers fail loudly on a broken fixture.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use arch::esr::ExceptionClass;
use clap::Parser;
use passthrough::driverkit::protocol::Selector;
use passthrough::driverkit::DextError;
use passthrough::vfio::VfioError;
use passthrough::{HostDeviceError, PciAddress};
use vmm::cli::{Cli, Command};
use vmm::config::VmConfig;
use vmm::control::StopReason;
use vmm::hypervisor::hvf::status;
use vmm::hypervisor::{GuestError, HypervisorError};
use vmm::vcpu_thread::VcpuError;

const TABLE: &str = include_str!("../docs/troubleshooting.md");

/// Rows whose message comes from code that cannot run in this test (another OS's backend) or
/// from a type another part of Aperture is reworking; each is named by the start of its
/// message, and must still be in the table.
const NOT_CHECKED_HERE: [(&str, &str); 5] = [
    ("--trace-pci FILE: ", "PciSetupError::TracePci (vmm/src/pci.rs)"),
    ("virtio-rng: ", "PciSetupError::Rng (vmm/src/pci.rs)"),
    ("--device BDF: dma=identity is not possible on macOS", "assign/sys/macos.rs (macOS)"),
    ("--device: PCI passthrough is not available", "assign/sys/unsupported.rs (other OSes)"),
    (
        "--device BDF: trace-bar=N: the device offers no memory BAR",
        "AssignError::TraceBar (passthrough/src/assigned: checked against the device's BARs)",
    ),
];

/// The first code span of each table row's first column: the quoted message.
fn table_messages() -> Vec<String> {
    TABLE
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            let cell = line.strip_prefix("| ")?;
            // A span opened with two backticks may hold single ones.
            let (open, rest) = if let Some(rest) = cell.strip_prefix("``") {
                ("``", rest)
            } else {
                ("`", cell.strip_prefix('`')?)
            };
            let end = rest.find(open)?;
            Some(rest[..end].trim().replace("\\|", "|"))
        })
        .collect()
}

/// Whether `text` matches `pattern`, where `*` matches any text.
fn glob(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            retry = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, from)) = retry {
            p = star + 1;
            t = from + 1;
            retry = Some((star, from + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A table message as a [`glob`] pattern.
fn pattern(message: &str) -> Vec<char> {
    const PLACEHOLDERS: [&str; 7] = ["N", "M", "G", "NM", "BDF", "PATH", "FILE"];
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let message = message.replace('`', "").replace('…', "*");
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<char>| {
        if PLACEHOLDERS.contains(&word.as_str()) {
            out.push('*');
        } else {
            out.extend(word.chars());
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_ascii_alphabetic() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Whether the table's `message` stands for `actual`. A message that spans lines (a list of
/// commands) is one line in the table.
fn matches(message: &str, actual: &str) -> bool {
    let one_line = actual.split_whitespace().collect::<Vec<_>>().join(" ");
    let text: Vec<char> = one_line.replace('`', "").chars().collect();
    glob(&pattern(message), &text)
}

/// A scratch directory with a kernel file and a disk image, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("aperture-troubleshooting-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Image"), [0u8; 64]).unwrap();
        std::fs::write(dir.join("disk.img"), [0u8; 512]).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The error `aperture run ARGS` stops with before it builds anything.
fn run_error(args: &[&str]) -> String {
    let cli = Cli::try_parse_from(["aperture", "run"].iter().chain(args)).unwrap();
    let Command::Run(run) = cli.command else { panic!("not a run command") };
    VmConfig::from_run_args(&run).unwrap_err().to_string()
}

fn addr(text: &str) -> PciAddress {
    text.parse().unwrap()
}

fn os_error(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

/// Every message the table may quote, from the code.
fn actual_messages(scratch: &Scratch) -> Vec<String> {
    let kernel = scratch.path("Image");
    let disk = scratch.path("disk.img");
    let bdf = "0000:01:00.0";
    let device = addr(bdf);
    let mut out = vec![
        // The command line.
        run_error(&["--kernel", &kernel, "--cpus", "0"]),
        run_error(&["--kernel", &kernel, "--memory", "4X"]),
        run_error(&["--kernel", &kernel, "--memory", "8M"]),
        run_error(&["--kernel", &scratch.path("missing")]),
        run_error(&["--kernel", &scratch.0.display().to_string()]),
        run_error(&["--kernel", &kernel, "--disk", &format!("{disk},cache=none")]),
        run_error(&["--kernel", &kernel, "--device", "01:00"]),
        run_error(&["--kernel", &kernel, "--tso"]),
        run_error(&["--kernel", &kernel, "--device", &format!("{bdf},colour=blue")]),
        run_error(&["--kernel", &kernel, "--device", &format!("{bdf},dma=identity,dma-limit=1G")]),
        run_error(&["--kernel", &kernel, "--device", &format!("{bdf},dma=window,dma-align=3K")]),
        run_error(&["--kernel", &kernel, "--device", bdf, "--device", bdf]),
        run_error(&["--kernel", &kernel, "--timeout", "0"]),
        run_error(&["--kernel", &kernel, "--device", &format!("{bdf},trace-bar=7")]),
        run_error(&["--kernel", &kernel, "--device", &format!("{bdf},trace-bar=0")]),
        run_error(&["--kernel", &kernel, "--net", "bridge=br0"]),
        run_error(&["--kernel", &kernel, "--net", "tap=tap0,queues=2"]),
        run_error(&["--kernel", &kernel, "--net", "tap=tap0,mac=zz"]),
        run_error(&["--kernel", &kernel, "--net", "tap=tap0,mac=01:00:5e:00:00:01"]),
        run_error(&["--kernel", &kernel, "--net", "user,hostfwd=tcp:0-:22"]),
        run_error(&["--kernel", &kernel, "--net", "user,hostfwd=tcp:22"]),
        run_error(&["--kernel", &kernel, "--net", "tap=tap0,hostfwd=tcp:2222-:22"]),
        run_error(&["--kernel", &kernel, "--net", "tap=tap0,vhost=yes"]),
        run_error(&["--kernel", &kernel, "--net", "socket=/s,vhost=on"]),
        // `aperture check`'s warnings.
        vmm::check::kernel::bar_memory_type(Some("6.1.0-28-arm64")).to_string(),
    ];
    // The kernel image and the memory map.
    let kernel_path = PathBuf::from(&kernel);
    let image_errors = [
        arch::image::ImageError::Elf,
        arch::image::ImageError::X86BzImage,
        arch::image::ImageError::UnsupportedCompression { compression: "xz", command: "xz -d" },
        arch::image::ImageError::UImage,
        arch::image::ImageError::ZbootUnsupportedCompression("lzma".into()),
        arch::image::ImageError::ImageSizeTooSmall { image_size: 0x200_0000, file_len: 0x10_0000 },
        arch::image::ImageError::BigEndian,
        arch::image::ImageError::Unknown { first_bytes: "00 01 02 03".into() },
    ];
    out.extend(
        image_errors.into_iter().map(|source| {
            vmm::vm::VmError::Kernel { path: kernel_path.clone(), source }.to_string()
        }),
    );
    out.push(
        arch::loader::LoaderError::MemoryTooSmall {
            ram_mib: 32,
            kernel_mib: 40,
            initrd_mib: Some(8),
            needed_mib: 120,
        }
        .to_string(),
    );
    out.push(arch::loader::LoaderError::EmptyInitrd.to_string());
    out.push(
        arch::layout::LayoutError::RamTooLarge {
            ram_mib: 65536,
            window_base: 0x8_0000_0000,
            ipa_bits: 36,
            max_mib: 30720,
        }
        .to_string(),
    );
    out.push(
        vmm::memory::MemoryError::Allocate { mib: 65536, source: os_error(libc::ENOMEM) }
            .to_string(),
    );
    out.push(vmm::memory::MemoryError::Shrank { what: "initrd", len: 4096, now: 0 }.to_string());
    // KVM.
    out.push(HypervisorError::KvmOpen { source: os_error(libc::ENOENT) }.to_string());
    out.push(HypervisorError::KvmOpen { source: os_error(libc::EACCES) }.to_string());
    out.push(HypervisorError::NoBackend { arch: "x86_64", os: "linux" }.to_string());
    out.push(
        HypervisorError::KvmCreateVm { ipa_bits: 40, source: os_error(libc::EINVAL) }.to_string(),
    );
    let pc = Some(0xffff_8000_8001_2345);
    for source in [
        HypervisorError::call("KVM_RUN", os_error(libc::ENOSYS)),
        HypervisorError::call("KVM_RUN", os_error(libc::EFAULT)),
        GuestError::UnhandledExit { exit: "FailEntry(0, 0)".into() }.into(),
    ] {
        out.push(VcpuError::Run { index: 1, pc, source }.to_string());
    }
    // Assigning a device on Linux (the rows leave out the `--device BDF: ` every one starts
    // with).
    out.extend(
        [
            HostDeviceError::NotFound(device),
            HostDeviceError::NotBoundToVfio { address: device, driver: Some("nvidia".into()) },
            HostDeviceError::NoVfio(PathBuf::from("/dev/vfio/vfio")),
            HostDeviceError::NoIommuGroup(device),
            HostDeviceError::GroupNotViable {
                address: device,
                group: 7,
                offenders: vec![(addr("0000:01:00.1"), "snd_hda_intel".into())],
            },
        ]
        .iter()
        .map(ToString::to_string),
    );
    let group_path = PathBuf::from("/dev/vfio/7");
    out.extend(
        [
            VfioError::OpenContainer {
                path: PathBuf::from("/dev/vfio/vfio"),
                source: os_error(libc::ENOENT),
            },
            VfioError::NoType1Iommu,
            VfioError::OpenGroup {
                address: device,
                group: 7,
                path: group_path.clone(),
                source: os_error(libc::EACCES),
            },
            VfioError::MemlockTooLow { needed: 4096, limit: 8 },
            VfioError::GroupBusy { address: device, group: 7, path: group_path },
            VfioError::DeviceBusy { address: device },
        ]
        .iter()
        .map(ToString::to_string),
    );
    let name = bdf.to_string();
    out.extend(
        [
            passthrough::assigned::AssignError::NoDevice { name: name.clone(), vendor_id: 0xffff },
            passthrough::assigned::AssignError::NotAnEndpoint {
                name: name.clone(),
                header_type: 1,
            },
            passthrough::assigned::AssignError::BarTooLarge {
                name: name.clone(),
                bar: 1,
                size: 0x2_0000_0000,
            },
            passthrough::assigned::AssignError::ConfigRead {
                name,
                offset: 0x40,
                source: os_error(libc::EIO),
            },
        ]
        .iter()
        .map(ToString::to_string),
    );
    // Hypervisor.framework.
    for code in [status::HV_DENIED, status::HV_UNSUPPORTED, status::HV_BUSY] {
        out.push(HypervisorError::HvfVmCreate { status: code }.to_string());
    }
    out.push(HypervisorError::HvfNoGic { macos_version: Some("14.6.1".into()) }.to_string());
    for source in [
        GuestError::UnhandledException {
            class: ExceptionClass::Other(0x3c),
            pc: 0x4008_0000,
            esr: 0xf200_0000,
        },
        GuestError::ExecutedOutsideRam { ipa: 0x1000_0000, pc: 0x1000_0000, esr: 0x8200_0006 },
    ] {
        out.push(
            VcpuError::Run { index: 0, pc: Some(0x4008_0000), source: source.into() }.to_string(),
        );
    }
    // DriverKit passthrough: `--device BDF: ` as the assignment error adds it.
    let dext = addr("0000:0a:00.0");
    out.extend(
        [
            DextError::NoService { address: dext, serving: vec!["0b:00.0".into()] },
            DextError::Ambiguous { address: dext, count: 2 },
            DextError::Call {
                selector: Selector::Claim,
                code: passthrough::driverkit::protocol::IO_RETURN_EXCLUSIVE_ACCESS,
            },
            DextError::ShortReply { selector: Selector::GetIdentity, got: 3, expected: 6 },
            DextError::OpenUserClient {
                address: dext,
                code: passthrough::driverkit::protocol::IO_RETURN_NOT_PRIVILEGED,
            },
            DextError::MultimediaFunction { address: dext, class_code: 0x040300 },
            DextError::InUse { address: dext, holder: Some(4242), path: "/tmp/x.lock".into() },
            DextError::Call {
                selector: Selector::Claim,
                code: passthrough::driverkit::protocol::IO_RETURN_NO_DEVICE,
            },
        ]
        .iter()
        .map(|e| format!("--device {dext}: {e}")),
    );
    // Networking.
    {
        use vmm::net::{Helper, NetError};
        let path = "/run/passt.sock".to_string();
        out.extend(
            [
                NetError::TunDevice("No such file or directory (os error 2)".into()),
                NetError::Tap { name: "tap0".into(), source: os_error(libc::EPERM) },
                NetError::TapUnsupported("tap0".into()),
                NetError::Vhost { name: "tap0".into(), source: os_error(libc::ENOENT) },
                NetError::SocketConnect { path, source: os_error(libc::ECONNREFUSED) },
                NetError::HelperMissing(Helper::Passt),
                NetError::HelperStart {
                    program: "/usr/bin/passt".into(),
                    source: os_error(libc::EACCES),
                },
                NetError::HelperExited {
                    program: "/usr/bin/passt".into(),
                    status: "exit status: 1".into(),
                },
                NetError::GvproxyForwards,
            ]
            .iter()
            .map(ToString::to_string),
        );
    }
    // While the guest runs, and how it ended.
    for reason in [
        StopReason::Timeout(Duration::from_secs(30)),
        StopReason::Reset,
        StopReason::RebootLoop { reboots: 6, within: Duration::from_secs(120) },
        StopReason::PowerKeyIgnored {
            trigger: vmm::control::ShutdownTrigger::Signal(libc::SIGTERM),
            grace: Duration::from_secs(30),
        },
        StopReason::DeviceLost("0000:01:00.0".into()),
        StopReason::Signal(libc::SIGTERM),
        StopReason::Error(
            VcpuError::BootRegs { index: 0, source: HypervisorError::NoIrqfd }.to_string(),
        ),
    ] {
        out.extend(vmm::report::stop_line(&reason));
    }
    // SIGUSR1 (re-plug) refusals, in the warning that a device was not plugged in again.
    out.extend(
        [
            vmm::assign::AssignError::ReplugWindow { address: device },
            vmm::assign::AssignError::ReplugSharedIdentity { address: device },
        ]
        .iter()
        .map(ToString::to_string),
    );
    let location = std::panic::Location::caller();
    out.push(vmm::signals::internal_error_message(&"boom", Some(location), Some("vcpu0")));
    out
}

#[test]
fn the_table_quotes_the_messages_aperture_prints() {
    let scratch = Scratch::new();
    let actual = actual_messages(&scratch);
    let quoted = table_messages();
    assert!(quoted.len() >= 60, "the table has {} messages; is it parsed right?", quoted.len());
    let mut unmatched = Vec::new();
    for message in &quoted {
        if NOT_CHECKED_HERE.iter().any(|(start, _)| message.starts_with(start)) {
            continue;
        }
        if !actual.iter().any(|text| matches(message, text)) {
            unmatched.push(message.as_str());
        }
    }
    assert!(
        unmatched.is_empty(),
        "these messages in vmm/docs/troubleshooting.md match nothing Aperture prints:\n  {}\n\
         Aperture prints:\n  {}",
        unmatched.join("\n  "),
        actual.join("\n  ")
    );
    for (start, owner) in NOT_CHECKED_HERE {
        assert!(
            quoted.iter().any(|m| m.starts_with(start)),
            "{start:?} ({owner}) is no longer in the table; drop it from NOT_CHECKED_HERE"
        );
    }
}

#[test]
fn patterns_stand_for_values_and_nothing_else() {
    assert!(matches("--cpus N: a VM needs 1 to 123 vCPUs", "--cpus 0: a VM needs 1 to 123 vCPUs"));
    assert!(!matches("--cpus N: a VM needs 1 to 123 vCPUs", "--cpus 0: a VM needs 1 to 64 vCPUs"));
    assert!(matches("vCPU N at PC 0x…: KVM_RUN: …", "vCPU 1 at PC 0x1000: KVM_RUN: Bad address"));
    assert!(!matches("KVM_RUN: …", "vCPU 1: KVM_RUN: Bad address"), "anchored at the start");
    assert!(!matches("a `b` c", "a b c d"), "anchored at the end");
    assert!(matches("run `xz -d` first, …", "run `xz -d` first, or not"));
    // Words that merely contain a placeholder's letters stay literal.
    assert!(!matches("KVM_CREATE_VM", "KVM_CREATE_XX"));
    let messages = table_messages();
    assert!(messages.iter().any(|m| m.contains("dma=identity|window")), "\\| unescaped");
    assert!(messages.iter().any(|m| m.contains("`xz -d`")), "double-backtick spans");
}

#[test]
fn table_paths_are_in_the_repository() {
    // The guide links the troubleshooting table points at exist.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for guide in ["guide-linux-arm64-gpu.md", "guide-macos-egpu.md"] {
        assert!(TABLE.contains(guide) && docs.join(guide).exists(), "{guide}");
    }
}
