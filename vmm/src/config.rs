//! Typed VM configuration, validated once from the command line.

use std::ops::Range;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::Duration;

use arch::layout::{MAX_VCPUS, MIB};

use crate::cli::{OnDeviceLoss, RunArgs, TraceFormatArg};

/// Bad command-line values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--tso` where the hypervisor cannot provide it.
    #[error(
        "--tso: total store ordering needs Hypervisor.framework on an Apple Silicon Mac; KVM \
         cannot run a vCPU with it: run without --tso (FEX-Emu then emulates x86 ordering in \
         software)"
    )]
    TsoUnavailable,
    /// `--cpus` out of range.
    #[error("--cpus {0}: a VM needs 1 to {MAX_VCPUS} vCPUs")]
    Cpus(u32),
    /// `--memory` not understood.
    #[error("--memory {0}: not a size; write a number with an optional K, M or G suffix, e.g. 512M or 2G")]
    MemorySyntax(String),
    /// `--memory` too small to be useful.
    #[error("--memory {0}: too small; a Linux guest needs at least {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(String),
    /// `--disk` with an option we do not know.
    #[error("--disk {0}: unknown option {1:?}; the form is PATH or PATH,readonly")]
    DiskOption(String, String),
    /// `--device` not understood.
    #[error("--device {0}: {1}")]
    Device(String, String),
    /// `--net` not understood.
    #[error("--net {0}: {1}")]
    Net(String, String),
    /// The same device twice.
    #[error("--device {0} is given twice; assign each device once")]
    DuplicateDevice(String),
    /// `--timeout 0`.
    #[error("--timeout 0: give the guest at least one second")]
    ZeroTimeout,
    /// An input file that is not there.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which option.
        what: &'static str,
        /// The path given.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// Below this Linux cannot boot at all; the loader checks the real need against the kernel.
pub const MIN_MEMORY_MIB: u64 = 16;

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub readonly: bool,
}

impl DiskConfig {
    /// Parses `PATH[,readonly]` (`ro` is accepted for `readonly`).
    fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut parts = text.split(',');
        let path = PathBuf::from(parts.next().unwrap_or_default());
        let mut readonly = false;
        for option in parts {
            match option {
                "readonly" | "ro" | "readonly=on" => readonly = true,
                "readonly=off" | "rw" => readonly = false,
                other => return Err(ConfigError::DiskOption(text.into(), other.into())),
            }
        }
        check_file("--disk", &path)?;
        Ok(Self { path, readonly })
    }
}

/// How an assigned device's DMA reaches guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaMode {
    /// All guest RAM mapped once, device address = guest physical address (VFIO).
    Identity,
    /// Mapped on request through the paravirtual aperture-dma device and its guest driver,
    /// within these host limits (the macOS DART's, or imposed on purpose on Linux).
    Window(DmaWindowLimits),
}

/// `dma=window` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWindowLimits {
    /// `dma-limit`: most bytes mapped at once.
    pub max_bytes: u64,
    /// `dma-max-maps`: most live host mappings.
    pub max_mappings: u32,
    /// `dma-align`: the host's mapping granule.
    pub alignment: u64,
    /// `dma-window`: the coalescing window for small maps (`dma-align` turns it off).
    pub window_size: u64,
}

impl Default for DmaWindowLimits {
    /// The Apple DART's limits (mission.md; `MapperLimits::APPLE_DART`, their one place) and
    /// the default 256 KiB window.
    fn default() -> Self {
        let dart = passthrough::dma::MapperLimits::APPLE_DART;
        Self {
            max_bytes: dart.max_mapped_bytes,
            max_mappings: dart.max_mappings,
            alignment: dart.alignment,
            window_size: passthrough::dma::DEFAULT_WINDOW_SIZE,
        }
    }
}

/// The DMA mode a device gets without `dma=`: identity where the host IOMMU can map all of
/// guest RAM (Linux VFIO), windows where it cannot (macOS).
pub fn default_dma_mode() -> DmaMode {
    if cfg!(target_os = "macos") {
        DmaMode::Window(DmaWindowLimits::default())
    } else {
        DmaMode::Identity
    }
}

/// A host PCI device assigned to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Its host address.
    pub address: passthrough::PciAddress,
    /// How its DMA is mapped.
    pub dma: DmaMode,
    /// `trace-bar=N[:OFFSET+LEN]`: BAR ranges trapped and traced (`None`: the whole BAR),
    /// as `passthrough::assigned::AssignedFunction::set_traced_bar_ranges` takes them. The
    /// ranges are checked against the BARs when the device is opened.
    pub trace_bars: Vec<(usize, Option<Range<u64>>)>,
}

const DEVICE_FORM: &str = "the form is BDF[,dma=identity|window][,dma-limit=SIZE]\
    [,dma-max-maps=N][,dma-align=SIZE][,dma-window=SIZE][,trace-bar=N[:OFFSET+LEN]]..., e.g. \
    0000:01:00.0,dma=window,dma-limit=1536M";

const TRACE_BAR_FORM: &str = "the form is trace-bar=N (the whole BAR) or \
    trace-bar=N:OFFSET+LEN, N a BAR index 0-5, e.g. trace-bar=0:0x100000+0x1000";

/// A byte offset or length: hex with 0x, or decimal with an optional K, M or G suffix.
fn parse_bar_number(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Parses the value of `trace-bar=N[:OFFSET+LEN]`.
fn parse_trace_bar(value: &str) -> Result<(usize, Option<Range<u64>>), String> {
    let (bar, range) = match value.split_once(':') {
        Some((bar, range)) => (bar, Some(range)),
        None => (value, None),
    };
    let bar = bar.parse::<usize>().ok().filter(|&bar| bar < 6).ok_or_else(|| {
        format!("trace-bar={value}: {bar:?} is not a BAR index 0-5; {TRACE_BAR_FORM}")
    })?;
    let Some(range) = range else { return Ok((bar, None)) };
    let (offset, len) = range
        .split_once('+')
        .ok_or_else(|| format!("trace-bar={value}: no +LEN after the offset; {TRACE_BAR_FORM}"))?;
    let number = |what: &str, text: &str| {
        parse_bar_number(text).ok_or_else(|| {
            format!(
                "trace-bar={value}: {what} {text:?} is not a number (hex with 0x, or decimal \
                 with an optional K, M or G); {TRACE_BAR_FORM}"
            )
        })
    };
    let offset = number("OFFSET", offset)?;
    let len = number("LEN", len)?;
    if len == 0 {
        return Err(format!("trace-bar={value}: LEN is 0; trace at least one byte"));
    }
    let end = offset
        .checked_add(len)
        .ok_or_else(|| format!("trace-bar={value}: OFFSET+LEN overflows; {TRACE_BAR_FORM}"))?;
    Ok((bar, Some(offset..end)))
}

impl DeviceConfig {
    /// Parses `BDF[,dma=identity|window][,dma-limit=SIZE][,dma-max-maps=N][,dma-align=SIZE]
    /// [,dma-window=SIZE][,trace-bar=N[:OFFSET+LEN]]...`; the limits imply `dma=window`;
    /// `trace-bar` may be repeated.
    fn parse(text: &str) -> Result<Self, ConfigError> {
        let error = |why: String| ConfigError::Device(text.into(), why);
        let mut parts = text.split(',');
        let address = parts
            .next()
            .unwrap_or_default()
            .parse::<passthrough::PciAddress>()
            .map_err(|e| error(e.to_string()))?;
        let mut mode: Option<&str> = None;
        let mut limits = DmaWindowLimits::default();
        let mut limits_given = false;
        let mut trace_bars = Vec::new();
        for option in parts {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let size = || {
                parse_size(value).filter(|&v| v > 0).ok_or_else(|| {
                    error(format!("{key}={value:?} is not a size like 16K or 1536M"))
                })
            };
            match key {
                "dma" if matches!(value, "identity" | "window") => mode = Some(value),
                "dma" => {
                    return Err(error(format!("dma={value:?}: use dma=identity or dma=window")))
                }
                "dma-limit" => limits.max_bytes = size()?,
                "dma-align" => limits.alignment = size()?,
                "dma-window" => limits.window_size = size()?,
                "dma-max-maps" => {
                    limits.max_mappings =
                        value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                            error(format!("dma-max-maps={value:?} is not a positive count"))
                        })?
                }
                "trace-bar" => trace_bars.push(parse_trace_bar(value).map_err(error)?),
                _ => return Err(error(format!("unknown option {option:?}; {DEVICE_FORM}"))),
            }
            limits_given |= key.starts_with("dma-");
        }
        let dma = match mode {
            Some("identity") if limits_given => {
                return Err(error(
                    "dma-limit, dma-max-maps, dma-align and dma-window apply to \
                                  dma=window, not dma=identity"
                        .into(),
                ))
            }
            Some("identity") => DmaMode::Identity,
            Some(_) => DmaMode::Window(limits),
            None if limits_given => DmaMode::Window(limits),
            None => default_dma_mode(),
        };
        if let DmaMode::Window(l) = dma {
            if !l.alignment.is_power_of_two() || l.alignment < 4096 {
                return Err(error(format!(
                    "dma-align={} must be a power of two of at least 4K",
                    l.alignment
                )));
            }
            if l.max_bytes < l.alignment || l.max_bytes % l.alignment != 0 {
                return Err(error(format!(
                    "dma-limit={} must be a multiple of dma-align ({})",
                    l.max_bytes, l.alignment
                )));
            }
            if !l.window_size.is_power_of_two() || l.window_size < l.alignment {
                return Err(error(format!(
                    "dma-window={} must be a power of two of at least dma-align ({})",
                    l.window_size, l.alignment
                )));
            }
        }
        Ok(Self { address, dma, trace_bars })
    }
}

/// Everything `aperture run` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image path.
    pub kernel: PathBuf,
    /// Initramfs path.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u32,
    /// Guest RAM in bytes, a multiple of 2 MiB.
    pub memory_bytes: u64,
    /// When to give up on the guest.
    pub timeout: Option<Duration>,
    /// `--shutdown-grace`: how long the guest gets after its power key is pressed.
    pub shutdown_grace: Option<Duration>,
    /// Whether a guest reboot boots it again in this process (`--no-reboot` turns it off).
    pub reboot: bool,
    /// virtio-blk disks, in guest order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs, in guest order.
    pub nets: Vec<crate::net::NetConfig>,
    /// Whether the guest gets a virtio-rng device.
    pub rng: bool,
    /// Where to write the PCI access trace, if anywhere.
    pub trace_pci: Option<PathBuf>,
    /// What an assigned device leaving the host does to the VM.
    pub on_device_loss: OnDeviceLoss,
    /// The trace's format.
    pub trace_format: devices::trace::TraceFormat,
    /// Host PCI devices assigned to the guest, in guest order.
    pub devices: Vec<DeviceConfig>,
    /// Whether each thread is confined to its seccomp allowlist once set up (Linux;
    /// `--no-seccomp` turns it off). The thread that calls [`crate::vm::run_on`] is confined
    /// too, for the rest of its life.
    pub seccomp: bool,
    /// Whether the vCPUs run with total store ordering (`--tso`, Hypervisor.framework only).
    pub tso: bool,
    /// When the guest kernel gets a KASLR seed.
    pub kaslr: crate::cli::Kaslr,
}

/// Parses a size: a number with an optional K/M/G/T suffix (optionally followed by "iB" or
/// "B"), in MiB when there is no suffix.
pub fn parse_size(text: &str) -> Option<u64> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let shift = match suffix.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" if suffix.is_empty() => 20,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

fn check_file(what: &'static str, path: &PathBuf) -> Result<(), ConfigError> {
    let error =
        |reason: String| ConfigError::File { what, path: path.display().to_string(), reason };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() || meta.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(error("not a regular file or block device".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(error("no such file; check the path".into()))
        }
        Err(e) => Err(error(e.to_string())),
    }
}

/// Whether this build's hypervisor can run vCPUs with total store ordering.
const TSO_AVAILABLE: bool = cfg!(all(target_os = "macos", target_arch = "aarch64"));

impl VmConfig {
    /// Validates `aperture run` arguments.
    pub fn from_run_args(args: &RunArgs) -> Result<Self, ConfigError> {
        if args.cpus == 0 || args.cpus > MAX_VCPUS {
            return Err(ConfigError::Cpus(args.cpus));
        }
        let memory = parse_size(&args.memory)
            .ok_or_else(|| ConfigError::MemorySyntax(args.memory.clone()))?;
        if memory < MIN_MEMORY_MIB * MIB {
            return Err(ConfigError::MemoryTooSmall(args.memory.clone()));
        }
        // Huge-page friendly, and the 16 KiB granule Hypervisor.framework needs.
        let memory_bytes = memory.div_ceil(2 * MIB) * 2 * MIB;
        if args.tso && !TSO_AVAILABLE {
            return Err(ConfigError::TsoUnavailable);
        }
        if args.timeout == Some(0) {
            return Err(ConfigError::ZeroTimeout);
        }
        check_file("--kernel", &args.kernel)?;
        if let Some(initrd) = &args.initrd {
            check_file("--initrd", initrd)?;
        }
        let mut devices: Vec<DeviceConfig> = Vec::new();
        for text in &args.devices {
            let device = DeviceConfig::parse(text)?;
            if devices.iter().any(|d| d.address == device.address) {
                return Err(ConfigError::DuplicateDevice(device.address.to_string()));
            }
            if !device.trace_bars.is_empty() && args.trace_pci.is_none() {
                return Err(ConfigError::Device(
                    text.clone(),
                    "trace-bar records into the PCI trace: add --trace-pci FILE (or - for \
                     stderr)"
                        .into(),
                ));
            }
            devices.push(device);
        }
        Ok(Self {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            vcpus: args.cpus,
            memory_bytes,
            timeout: args.timeout.map(Duration::from_secs),
            shutdown_grace: args.shutdown_grace.map(Duration::from_secs),
            reboot: !args.no_reboot,
            disks: args.disk.iter().map(|d| DiskConfig::parse(d)).collect::<Result<_, _>>()?,
            nets: (args.net.iter().enumerate())
                .map(|(i, text)| {
                    crate::net::NetConfig::parse(text, i)
                        .map_err(|why| ConfigError::Net(text.clone(), why))
                })
                .collect::<Result<_, _>>()?,
            rng: !args.no_rng,
            trace_pci: args.trace_pci.clone(),
            on_device_loss: args.on_device_loss,
            trace_format: match args.trace_format {
                TraceFormatArg::Text => devices::trace::TraceFormat::Text,
                TraceFormatArg::Json => devices::trace::TraceFormat::JsonLines,
            },
            devices,
            seccomp: !args.no_seccomp,
            tso: args.tso,
            kaslr: args.kaslr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kernel: &str) -> RunArgs {
        RunArgs {
            kernel: kernel.into(),
            initrd: None,
            cmdline: "console=ttyAMA0".into(),
            cpus: 1,
            memory: "256M".into(),
            timeout: None,
            shutdown_grace: None,
            no_reboot: false,
            disk: Vec::new(),
            net: Vec::new(),
            no_rng: false,
            trace_pci: None,
            trace_format: TraceFormatArg::Text,
            devices: Vec::new(),
            no_seccomp: false,
            tso: false,
            on_device_loss: OnDeviceLoss::Continue,
            kaslr: crate::cli::Kaslr::Auto,
        }
    }

    fn existing_file() -> String {
        std::env::current_exe().unwrap().display().to_string()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512 * MIB));
        assert_eq!(parse_size("512M"), Some(512 * MIB));
        assert_eq!(parse_size("512MiB"), Some(512 * MIB));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("2gb"), Some(2 << 30));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        for bad in ["", "M", "12X", "-1", "1.5G", "99999999999999999999G", "12 M"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn valid_config() {
        let mut a = args(&existing_file());
        a.memory = "255M".into();
        a.timeout = Some(5);
        let c = VmConfig::from_run_args(&a).unwrap();
        assert_eq!(c.memory_bytes, 256 * MIB);
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn tso_is_refused_where_the_hypervisor_lacks_it() {
        let mut a = args(&existing_file());
        assert!(!VmConfig::from_run_args(&a).unwrap().tso, "off by default");
        a.tso = true;
        let result = VmConfig::from_run_args(&a);
        assert_eq!(result.is_ok(), TSO_AVAILABLE, "{result:?}");
        match result {
            Ok(c) => assert!(c.tso),
            Err(e) => {
                assert_eq!(e, ConfigError::TsoUnavailable);
                assert!(e.to_string().contains("run without --tso"), "{e}");
            }
        }
    }

    #[test]
    fn seccomp_is_on_unless_turned_off() {
        let mut a = args(&existing_file());
        assert!(VmConfig::from_run_args(&a).unwrap().seccomp);
        a.no_seccomp = true;
        assert!(!VmConfig::from_run_args(&a).unwrap().seccomp);
    }

    #[test]
    fn bad_values_name_the_option() {
        let file = existing_file();
        let mut a = args(&file);
        a.cpus = 0;
        assert!(VmConfig::from_run_args(&a).unwrap_err().to_string().starts_with("--cpus 0"));
        a.cpus = MAX_VCPUS + 1;
        assert!(matches!(VmConfig::from_run_args(&a), Err(ConfigError::Cpus(_))));
        let mut a = args(&file);
        a.memory = "lots".into();
        assert!(VmConfig::from_run_args(&a).unwrap_err().to_string().contains("--memory lots"));
        a.memory = "8M".into();
        assert!(matches!(VmConfig::from_run_args(&a), Err(ConfigError::MemoryTooSmall(_))));
        let mut a = args(&file);
        a.timeout = Some(0);
        assert_eq!(VmConfig::from_run_args(&a), Err(ConfigError::ZeroTimeout));
    }

    #[test]
    fn disks() {
        let file = existing_file();
        let mut a = args(&file);
        a.disk = vec![file.clone(), format!("{file},readonly"), format!("{file},ro")];
        let c = VmConfig::from_run_args(&a).unwrap();
        let ro: Vec<bool> = c.disks.iter().map(|d| d.readonly).collect();
        assert_eq!(ro, [false, true, true]);
        assert_eq!(c.disks[0].path, PathBuf::from(&file));
        a.disk = vec![format!("{file},cache=none")];
        let err = VmConfig::from_run_args(&a).unwrap_err().to_string();
        assert!(err.contains("unknown option \"cache=none\""), "{err}");
        a.disk = vec!["/nonexistent.img,readonly".into()];
        let err = VmConfig::from_run_args(&a).unwrap_err().to_string();
        assert!(err.starts_with("--disk /nonexistent.img: no such file"), "{err}");
    }

    #[test]
    fn devices() {
        let mut a = args(&existing_file());
        a.devices = vec!["0000:01:00.0".into(), "02:00.1".into()];
        let c = VmConfig::from_run_args(&a).unwrap();
        assert_eq!(c.devices[1].address.to_string(), "0000:02:00.1");
        a.devices = vec!["01:00".into()];
        let err = VmConfig::from_run_args(&a).unwrap_err().to_string();
        assert!(err.starts_with("--device 01:00: ") && err.contains("0000:01:00.0"), "{err}");
        a.devices = vec!["0000:01:00.0".into(), "01:00.0".into()];
        let err = VmConfig::from_run_args(&a).unwrap_err().to_string();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn device_dma_options() {
        let parse = |text: &str| DeviceConfig::parse(text);
        assert_eq!(parse("01:00.0").unwrap().dma, default_dma_mode());
        assert_eq!(parse("01:00.0,dma=identity").unwrap().dma, DmaMode::Identity);
        assert_eq!(
            parse("01:00.0,dma=window").unwrap().dma,
            DmaMode::Window(DmaWindowLimits::default())
        );
        let DmaMode::Window(limits) =
            parse("01:00.0,dma-limit=8M,dma-max-maps=100,dma-align=4K,dma-window=64K").unwrap().dma
        else {
            panic!("limits imply dma=window");
        };
        assert_eq!(
            limits,
            DmaWindowLimits {
                max_bytes: 8 << 20,
                max_mappings: 100,
                alignment: 4096,
                window_size: 64 << 10
            }
        );
        for (bad, needle) in [
            ("01:00.0,dma=iommu", "dma=identity or dma=window"),
            ("01:00.0,dma=identity,dma-limit=8M", "apply to dma=window"),
            ("01:00.0,dma-limit=lots", "not a size"),
            ("01:00.0,dma-max-maps=0", "positive count"),
            ("01:00.0,dma-align=12K", "power of two"),
            ("01:00.0,dma-limit=20K", "multiple of dma-align"),
            ("01:00.0,dma-window=8K", "at least dma-align"),
            ("01:00.0,rombar=0", "unknown option"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--device {bad}: ")) && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn device_trace_bar() {
        let parse = |text: &str| DeviceConfig::parse(text).map(|d| d.trace_bars);
        assert_eq!(parse("01:00.0").unwrap(), vec![]);
        assert_eq!(
            parse("01:00.0,trace-bar=0,trace-bar=1:0x88000+0x1000,trace-bar=5:16K+4").unwrap(),
            vec![(0, None), (1, Some(0x88000..0x89000)), (5, Some(0x4000..0x4004))]
        );
        assert_eq!(
            parse("01:00.0,dma=window,trace-bar=3:0+1M").unwrap(),
            vec![(3, Some(0..1 << 20))]
        );
        for (bad, needle) in [
            ("01:00.0,trace-bar=6", "not a BAR index 0-5"),
            ("01:00.0,trace-bar=", "not a BAR index 0-5"),
            ("01:00.0,trace-bar=rom", "not a BAR index 0-5"),
            ("01:00.0,trace-bar=0:0x100", "no +LEN"),
            ("01:00.0,trace-bar=0:0x100+0", "LEN is 0"),
            ("01:00.0,trace-bar=0:zz+4", "OFFSET \"zz\" is not a number"),
            ("01:00.0,trace-bar=0:0+4X", "LEN \"4X\" is not a number"),
            ("01:00.0,trace-bar=0:0xffffffffffffffff+2", "overflows"),
        ] {
            let err = DeviceConfig::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--device {bad}: ")) && err.contains(needle), "{err}");
            assert!(err.contains("trace-bar"), "{err}");
        }
        // Tracing needs a trace to write to.
        let mut a = args(&existing_file());
        a.devices = vec!["01:00.0,trace-bar=0".into()];
        let err = VmConfig::from_run_args(&a).unwrap_err().to_string();
        assert!(err.contains("add --trace-pci"), "{err}");
        a.trace_pci = Some("-".into());
        assert_eq!(VmConfig::from_run_args(&a).unwrap().devices[0].trace_bars, vec![(0, None)]);
    }

    #[test]
    fn missing_files_are_named() {
        let err = VmConfig::from_run_args(&args("/nonexistent/Image")).unwrap_err();
        assert_eq!(err.to_string(), "--kernel /nonexistent/Image: no such file; check the path");
        let mut a = args(&existing_file());
        a.initrd = Some("/nonexistent/initrd".into());
        assert!(VmConfig::from_run_args(&a)
            .unwrap_err()
            .to_string()
            .starts_with("--initrd /nonexistent/initrd"));
        let err = VmConfig::from_run_args(&args("/")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"));
    }
}
