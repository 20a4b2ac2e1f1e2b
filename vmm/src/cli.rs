//! The command line, parsed with clap into [`Cli`]; [`crate::config`] turns it into typed
//! configuration once.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Default kernel command line: console on the PL011, and a panic resets at once instead of
/// hanging: the guest boots again in place, or with `--no-reboot` the run ends (exit status 3).
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0 panic=-1";

const RUN_EXAMPLES: &str = "\
Examples:
  # Boot a kernel with an initramfs; the guest console is this terminal (Ctrl-A x quits).
  aperture run --kernel Image --initrd rootfs.cpio.gz

  # A root disk (virtio-blk, /dev/vda) and a read-only data disk (/dev/vdb).
  aperture run --kernel Image --disk rootfs.img --disk data.img,readonly \\
      --cmdline 'console=ttyAMA0 root=/dev/vda rw'

  # Networking: a user-mode NIC through passt (Linux) or gvproxy (macOS), ssh on host port
  # 2222; or a tap the host set up (ip tuntap add tap0 mode tap user $USER), its queues in
  # the host kernel when /dev/vhost-net is usable (vhost=on: required, vhost=off: never).
  aperture run --kernel Image --disk rootfs.img --net user,hostfwd=tcp:2222-:22 \\
      --cmdline 'console=ttyAMA0 root=/dev/vda rw'
  aperture run --kernel Image --initrd rootfs.cpio.gz --net tap=tap0,mac=52:54:00:12:34:56
  aperture run --kernel Image --initrd rootfs.cpio.gz --net tap=tap0,vhost=on

  # Assign a host GPU (bound to vfio-pci) to the guest.
  aperture run --kernel Image --initrd rootfs.cpio.gz --memory 4G --device 0000:01:00.0

  # The assigned eGPU was unplugged (the guest saw it leave; the VM kept running). Plug it
  # back in and bind it to vfio-pci again, then tell Aperture to hand it to the guest again
  # (a PCIe hot-add):
  echo vfio-pci > /sys/bus/pci/devices/0000:01:00.0/driver_override
  echo 0000:01:00.0 > /sys/bus/pci/drivers_probe
  kill -USR1 <aperture's pid>

  # A scripted test: 2 vCPUs, 512 MiB, give up after 60 s, a panic ends the run (exit 3)
  # instead of rebooting in place; the exit status tells the outcome.
  aperture run --kernel Image --initrd test.cpio --cpus 2 --memory 512M --timeout 60 \\
      --no-reboot --cmdline 'console=ttyAMA0 panic=-1 rdinit=/init'

  # Under a service manager: SIGTERM (or Ctrl-A p) presses the guest's power key and gives
  # it 60 s to shut down cleanly before it is stopped hard (exit status 4).
  aperture run --kernel Image --disk rootfs.img --shutdown-grace 60 \\
      --cmdline 'console=ttyAMA0 root=/dev/vda rw'

Exit statuses:
  0    the guest powered off (or Ctrl-A x)
  N    the guest wrote N to the test-exit device (devmem 0x09020000 32 N)
  1    Aperture failed; the reason is on stderr
  3    the guest reset and --no-reboot was given (or it rebooted too often, see --help)
  4    the power key was pressed (SIGTERM, Ctrl-A p) but the guest did not power off
       within --shutdown-grace: stopped hard
  5    an assigned device left the host and --on-device-loss stop ended the VM
  124  --timeout elapsed
  128+N  signal N (SIGINT, SIGHUP; SIGTERM with --shutdown-grace 0) stopped the VM";

/// Aperture: boot an arm64 Linux guest on KVM or Hypervisor.framework, with a PCI device
/// (an eGPU) assigned to it.
///
/// One VM per process. Each subcommand has its own help (`aperture run --help`) and manual
/// page (aperture-run(1)). Errors end with `aperture: error: <what and how to fix it>` and
/// exit status 1.
#[derive(Debug, Parser)]
#[command(name = "aperture", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides it.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest and attach its console to this terminal.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Check that this host has what Aperture needs (each line OK, WARN or FAIL, with the fix).
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// List the host's PCI devices and whether each can be assigned now.
    #[command(after_help = DEVICES_EXAMPLES)]
    Devices(DevicesArgs),
    /// Write Aperture's manual pages (aperture.1 and one page per subcommand).
    #[command(after_help = MAN_EXAMPLES, display_order = 900)]
    Man(ManArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    #[command(after_help = COMPLETIONS_EXAMPLES, display_order = 901)]
    Completions(CompletionsArgs),
}

/// `aperture run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The guest kernel: an arm64 Image, raw (Debian), gzip-compressed (Ubuntu) or EFI zboot (Fedora).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// An initramfs (cpio, optionally compressed: the guest kernel unpacks it).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// The kernel command line; replaces the default.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,

    /// Guest RAM: a number with a K, M or G suffix (MiB when there is none), e.g. 512M, 2G.
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,

    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,

    /// How long the guest gets to power off after its power key is pressed (SIGTERM,
    /// Ctrl-A p, and with this option also --timeout) before it is stopped hard (exit status
    /// 4); default 30 s. 0 makes SIGTERM stop at once.
    #[arg(long, value_name = "SECS")]
    pub shutdown_grace: Option<u64>,

    /// End Aperture when the guest reboots (exit status 3) instead of booting it again in
    /// place; for scripted runs where a panic (panic=-1) must end the run.
    #[arg(long)]
    pub no_reboot: bool,

    /// A raw disk image as a virtio-blk device (`/dev/vda`, `/dev/vdb`, ... in order);
    /// add `,readonly` to refuse guest writes. Repeat for more disks.
    #[arg(long, value_name = "PATH[,readonly]")]
    pub disk: Vec<String>,

    /// A virtio-net NIC (eth0, eth1, ... in order): `tap=NAME` (Linux; created when absent
    /// and Aperture may; its queues in the host kernel when /dev/vhost-net is usable,
    /// `vhost=on` requires that, `vhost=off` serves them in Aperture), `socket=PATH` (a UNIX stream socket in QEMU's framing: passt,
    /// gvproxy -listen-qemu), or `user` (Aperture starts passt, or gvproxy on macOS;
    /// `hostfwd=tcp:HOSTPORT-:GUESTPORT` forwards a host port, repeatable). `mac=MAC` sets
    /// the MAC (default: derived from the option and its position, the same every run).
    /// Repeat for more NICs.
    #[arg(long, value_name = "tap=NAME[,vhost=on|off]|socket=PATH|user[,hostfwd=...][,mac=MAC]")]
    pub net: Vec<String>,

    /// Do not give the guest a virtio-rng device (it gets one by default).
    #[arg(long)]
    pub no_rng: bool,

    /// A host PCI device to assign to the guest (VFIO), as `lspci -D` shows it, e.g.
    /// 0000:01:00.0. The device must be bound to vfio-pci; repeat for more devices (the
    /// functions of one host device stay one multi-function device in the guest).
    /// `dma=window` maps its DMA on request through the aperture-dma device and the guest's
    /// aperture_dma module, within `dma-limit` (1536M), `dma-max-maps` (65536), `dma-align`
    /// (16K) and a `dma-window` (256K) coalescing window; `dma=identity` (default on Linux)
    /// maps all guest RAM at guest physical addresses. `trace-bar=N[:OFFSET+LEN]` (repeatable;
    /// N alone: the whole BAR, e.g. trace-bar=0:0x100000+0x1000) traps that BAR range instead
    /// of mapping it and records every read and write in the --trace-pci output (needs
    /// --trace-pci); slow by design.
    #[arg(
        long = "device",
        value_name = "BDF[,dma=identity|window][,dma-limit=SIZE,...][,trace-bar=N[:OFFSET+LEN]]"
    )]
    pub devices: Vec<String>,

    /// Trace PCI bring-up to this file (`-` for stderr), with timestamps: every
    /// configuration-space access, trapped BAR access, and for assigned devices MSI-X
    /// programming, resets, BAR and DMA mappings.
    #[arg(long, value_name = "FILE")]
    pub trace_pci: Option<PathBuf>,

    /// Format of --trace-pci: aligned text for people, or JSON lines for scripts.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = TraceFormatArg::Text)]
    pub trace_format: TraceFormatArg,

    /// Turn off the seccomp sandbox (Linux), for debugging: by default each Aperture thread
    /// may make only the system calls it needs, and a refused call ends Aperture with a
    /// message naming it ("seccomp refused syscall ..."); rerun with this option to go on.
    #[arg(long)]
    pub no_seccomp: bool,

    /// Run the vCPUs with x86-style total store ordering, for x86 emulators such as FEX-Emu
    /// in the guest (macOS on Apple Silicon only; refused elsewhere).
    #[arg(long)]
    pub tso: bool,

    /// What to do when an assigned device leaves the host while the guest runs (unplugged,
    /// unbound, a fatal error): `continue` hot-removes it from the guest and keeps the VM
    /// running; `stop` also ends the VM, with exit status 5.
    #[arg(long, value_name = "ACTION", value_enum, default_value_t = OnDeviceLoss::Continue)]
    pub on_device_loss: OnDeviceLoss,

    /// Whether the guest kernel gets a KASLR seed (randomizes where it runs). `auto` gives
    /// one when the guest's CPU has E0PD (Armv8.5); on an older CPU (Neoverse N1, Ampere
    /// Altra, Graviton 2...) a seed would make Linux unmap itself from user space (KPTI):
    /// every system call, fault and interrupt from guest user space then switches page
    /// tables. `on` gives one anyway, `off` never (`nokaslr` on the command line also
    /// turns it off in the guest).
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = Kaslr::Auto)]
    pub kaslr: Kaslr,
}

/// `--kaslr` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Kaslr {
    /// A seed when it costs the guest no page-table isolation (its CPU has E0PD).
    #[default]
    Auto,
    /// Always a seed.
    On,
    /// Never a seed.
    Off,
}

impl Kaslr {
    /// Whether the guest gets a seed on a CPU with this ID_AA64MMFR2_EL1, and why, for the log.
    pub fn seed_for(self, id_aa64mmfr2: u64) -> (bool, &'static str) {
        match self {
            Self::On => (true, "--kaslr on"),
            Self::Off => (false, "--kaslr off"),
            Self::Auto if arch::idregs::kaslr_forces_kpti(id_aa64mmfr2) => (
                false,
                "the guest CPU has no E0PD, so a seed would force KPTI on every guest kernel \
                 entry from user space; --kaslr on gives one anyway",
            ),
            Self::Auto => (true, "the guest CPU has E0PD, so KASLR costs no KPTI"),
        }
    }
}

/// `--on-device-loss` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnDeviceLoss {
    /// Remove the device from the guest (PCIe hot-plug) and keep the VM running.
    #[default]
    Continue,
    /// Remove the device, then end the VM (exit status 5).
    Stop,
}

const CHECK_EXAMPLES: &str = "\
Examples:
  aperture check                                # KVM, IOMMU and VFIO on this host
  aperture check --device 0000:01:00.0 --memory 4G   # and what assigning this device needs

Exit status: 1 when a line says FAIL, else 0.";

/// `aperture check` options.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A host PCI device to be assigned, as `lspci -D` shows it (e.g. 0000:01:00.0): checks
    /// its driver, IOMMU group, reset and VFIO group file. Repeat for more devices.
    #[arg(long = "device", value_name = "BDF")]
    pub devices: Vec<String>,

    /// The guest RAM to plan for (passthrough pins all of it: RLIMIT_MEMLOCK must allow it).
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,
}

const DEVICES_EXAMPLES: &str = "\
Examples:
  aperture devices          # a table; names come from pci.ids when the host has it
  aperture devices --json   # a JSON array, for scripts";

/// `aperture devices` options.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// A JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

const MAN_EXAMPLES: &str = "\
Examples:
  aperture man | man -l -                      # read it now
  aperture man --out /usr/local/share/man/man1 # install aperture.1, aperture-run.1, ...";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  aperture completions bash > ~/.local/share/bash-completion/completions/aperture
  aperture completions zsh > ~/.zfunc/_aperture     # with fpath+=(~/.zfunc) in ~/.zshrc
  aperture completions fish > ~/.config/fish/completions/aperture.fish";

/// `aperture man` options.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write aperture.1 and aperture-SUBCOMMAND.1 into this directory (created if needed)
    /// instead of printing aperture.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `aperture completions` options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: clap_complete::Shell,
}

/// `--trace-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormatArg {
    /// `seconds source event key=value...`
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["aperture", "run", "--kernel", "Image"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not run: {:?}", cli.command) };
        assert_eq!(args.cpus, 1);
        assert_eq!(args.memory, "512M");
        assert_eq!(args.cmdline, DEFAULT_CMDLINE);
        assert!(args.initrd.is_none() && args.timeout.is_none());
        assert!(args.disk.is_empty() && !args.no_rng && args.trace_pci.is_none());
        assert!(!args.no_seccomp, "the seccomp sandbox is on by default");
        assert!(args.devices.is_empty());
    }

    #[test]
    fn kaslr_option() {
        let parse = |extra: &[&str]| {
            let argv = [&["aperture", "run", "--kernel", "Image"][..], extra].concat();
            let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not run")
            };
            args.kaslr
        };
        assert_eq!(parse(&[]), Kaslr::Auto);
        assert_eq!(parse(&["--kaslr", "off"]), Kaslr::Off);
        assert_eq!(parse(&["--kaslr=on"]), Kaslr::On);
        assert!(Cli::try_parse_from(["aperture", "run", "--kernel", "I", "--kaslr", "x"]).is_err());
        assert!(!Kaslr::Auto.seed_for(0).0);
        assert!(Kaslr::Auto.seed_for(1 << 60).0);
        assert!(Kaslr::Auto.seed_for(0).1.contains("--kaslr on"));
    }

    #[test]
    fn man_and_completions() {
        let cli = Cli::try_parse_from(["aperture", "man"]).unwrap();
        assert!(matches!(cli.command, Command::Man(ManArgs { out: None })));
        let cli = Cli::try_parse_from(["aperture", "man", "--out", "/tmp/m"]).unwrap();
        let Command::Man(args) = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!(args.out, Some(PathBuf::from("/tmp/m")));
        let cli = Cli::try_parse_from(["aperture", "completions", "zsh"]).unwrap();
        let Command::Completions(args) = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!(args.shell, clap_complete::Shell::Zsh);
        assert!(Cli::try_parse_from(["aperture", "completions", "tcsh"]).is_err());
    }

    #[test]
    fn check_and_devices() {
        let cli = Cli::try_parse_from(["aperture", "check"]).unwrap();
        let Command::Check(args) = cli.command else { panic!("{:?}", cli.command) };
        assert!(args.devices.is_empty());
        assert_eq!(args.memory, "512M");
        let argv =
            ["aperture", "check", "--device", "01:00.0", "--device", "02:00.0", "--memory", "4G"];
        let Command::Check(args) = Cli::try_parse_from(argv).unwrap().command else { panic!() };
        assert_eq!(
            (args.devices.as_slice(), args.memory.as_str()),
            (&["01:00.0".to_string(), "02:00.0".to_string()][..], "4G")
        );
        let cli = Cli::try_parse_from(["aperture", "devices", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Devices(DevicesArgs { json: true })));
        let cli = Cli::try_parse_from(["aperture", "devices"]).unwrap();
        assert!(matches!(cli.command, Command::Devices(DevicesArgs { json: false })));
    }
}
