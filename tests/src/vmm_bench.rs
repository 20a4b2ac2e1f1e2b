//! The VMM benchmark (`vmm-bench`): the same tiny guest under Aperture and, when a binary is
//! given, kvmtool, in one boot of the emulated host (L1). Per VMM: boot-to-poweroff wall
//! time and the VMM's share of it (wall minus the guest's uptime at power-off), virtio-blk
//! `dd iflag=direct` reads at 1 MiB and 4 KiB, VMM exits per MiB read (KVM's
//! `mmio_exit_user` in L1's debugfs, sampled around the reads), every exit of the VM to L1's
//! KVM per boot (`exits`), and the VMM's peak RSS (and how much of it is its mapped binary).
//!
//! The guest is the test guest (its `/init` is `images/guest-init.sh`, run with
//! `aperture.check=bench` or `bench-read`), on the 6.1 and the 6.12 kernel, so every VMM
//! boots the same kernel and files. Figures for notes, not pass/fail.

use std::fmt::Write as _;

use crate::case::CaseOutput;

/// A guest kernel series of the rig, with its initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// Debian's 6.1 (`/guest`).
    Linux61,
    /// The 6.12 series (`/guest/6.12`).
    Linux612,
}

impl Guest {
    /// Every series, in table order.
    pub const ALL: [Guest; 2] = [Guest::Linux61, Guest::Linux612];

    /// Its name in case names and the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linux61 => "6.1",
            Self::Linux612 => "6.12",
        }
    }

    /// The series named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Linux61 => "/guest",
            Self::Linux612 => "/guest/6.12",
        }
    }
}

/// Guest RAM and vCPUs of every run (the same for both VMMs).
pub const GUEST_MEMORY_MIB: u32 = 256;
/// vCPUs of every run.
pub const GUEST_CPUS: u32 = 2;
/// The disk read in L1's tmpfs, in MiB (the reads cover 128 MiB and 8 MiB of it).
pub const DISK_MIB: u32 = 160;
/// What a case's guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchRun {
    /// Boots with `quiet` and powers off.
    Boot,
    /// The same boot with the kernel's whole log on the console (how people boot while
    /// bringing a driver up): ~16 KiB of console output.
    VerboseBoot,
    /// Boots with the disk and reads it (`bench-read`).
    Read,
}

/// Which VMM a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// `/aperture` of the rig.
    Aperture,
    /// Another `aperture` binary (e.g. an older build), copied into L1 from a disk.
    ApertureBaseline,
    /// kvmtool's `lkvm`, copied into L1 from a disk.
    Kvmtool,
}

impl Vmm {
    /// Its name in case names, the table, and the serial of the disk that carries it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aperture => "aperture",
            Self::ApertureBaseline => "aperture-base",
            Self::Kvmtool => "kvmtool",
        }
    }

    /// Where its binary is in L1.
    pub fn binary(self) -> String {
        match self {
            Self::Aperture => "/aperture".into(),
            other => format!("/tmp/bin-{}", other.name()),
        }
    }

    /// The shell command that runs the bench guest for `run`.
    fn command(self, guest: Guest, run: BenchRun) -> String {
        let read = run == BenchRun::Read;
        let check = if read { "bench-read" } else { "bench" };
        let quiet = if run == BenchRun::VerboseBoot { "" } else { "quiet " };
        let dir = guest.dir();
        match self {
            Self::Aperture | Self::ApertureBaseline => format!(
                "{} run --kernel {dir}/Image --initrd {dir}/guest.cpio --cpus {GUEST_CPUS} \
                 --memory {GUEST_MEMORY_MIB} --timeout 300 --cmdline 'console=ttyAMA0 panic=-1 \
                 {quiet}aperture.check={check}'{}",
                self.binary(),
                if read { " --disk /tmp/bench-disk.img" } else { "" }
            ),
            // No network (Aperture has none); its serial console, as Aperture's PL011.
            Self::Kvmtool => format!(
                "{} run -k {dir}/Image -i {dir}/guest.cpio -c {GUEST_CPUS} -m \
                 {GUEST_MEMORY_MIB} -n mode=none --console serial -p '{quiet}\
                 aperture.check={check}'{}",
                self.binary(),
                if read { " -d /tmp/bench-disk.img" } else { "" }
            ),
        }
    }
}

/// L1 script lines that prepare the bench guest, the disk and the binaries brought on L1's
/// virtio disks (`(vmm, length)`: the disk whose serial is the VMM's name).
fn prelude(binaries: &[(Vmm, u64)]) -> String {
    let mut text = format!(
        r#"mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
kvm_stat() {{ cat "/sys/kernel/debug/kvm/$1" 2>/dev/null || echo 0; }}
[ -f /tmp/bench-disk.img ] || dd if=/dev/zero of=/tmp/bench-disk.img bs=1M count={DISK_MIB} 2>/dev/null
"#
    );
    for &(vmm, bytes) in binaries {
        let _ = write!(
            text,
            r#"if [ ! -x {path} ]; then
    modprobe -a virtio_pci virtio_blk 2>/dev/null
    n=0
    while [ ! -e /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    sleep 1
    for d in /sys/block/vd*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = {serial} ] && head -c {bytes} "/dev/${{d##*/}}" > {path}
    done
    chmod 755 {path}
fi
"#,
            path = vmm.binary(),
            serial = vmm.name(),
        );
    }
    text
}

/// The L1 script of one run: the VMM's output through a loop that samples KVM's exit
/// counters at the guest's read markers, a watcher that keeps the VMM's VmHWM and the resident
/// part of its guest RAM mapping (the smallest mapping at least as large as guest RAM), and a
/// summary line with L1's clock around the run. KVM's exit counter is sampled when the guest
/// prints its uptime (the VM is the only one, and still exists).
pub fn case_script(vmm: Vmm, guest: Guest, run: BenchRun, binaries: &[(Vmm, u64)]) -> String {
    let mut text = prelude(binaries);
    let guest_kib = GUEST_MEMORY_MIB * 1024;
    let _ = write!(
        text,
        r#"up() {{ cut -d' ' -f1 /proc/uptime; }}
fifo=/tmp/bench-out.$$
rm -f "$fifo" /tmp/bench-mem
mkfifo "$fifo"
t0=$(up)
{command} > "$fifo" 2>&1 &
pid=$!
( while kill -0 "$pid" 2>/dev/null; do
      awk -v min={guest_kib} '/^VmHWM:/ {{ hwm = $2 }}
          /^Size:/ {{ size = $2 }}
          /^Rss:/ {{ if (size >= min && (best == 0 || size < best)) {{ best = size; ram = $2 }} }}
          /^VmRSS:/ {{ rss = $2 }}
          /^RssFile:/ {{ file += $2 }}
          /^RssShmem:/ {{ file += $2 }}
          END {{ if (hwm && ram) print "hwm_kib=" hwm " rss_kib=" rss " guest_rss_kib=" ram " file_rss_kib=" file }}' \
          "/proc/$pid/status" "/proc/$pid/smaps" > /tmp/bench-mem.new 2>/dev/null \
          && [ -s /tmp/bench-mem.new ] && mv /tmp/bench-mem.new /tmp/bench-mem
      usleep 100000
  done ) &
watcher=$!
while IFS= read -r line; do
    case "$line" in
        *BENCH-READ-START*|*BENCH-READ-END*)
            echo "L1-EXITS mmio_user=$(kvm_stat mmio_exit_user) exits=$(kvm_stat exits)" ;;
        # KVM's debugfs sums the VMs that exist: sample while this one still does.
        *BENCH-UPTIME*) echo "L1-BOOT-EXITS mmio_user=$(kvm_stat mmio_exit_user) exits=$(kvm_stat exits)" ;;
    esac
    echo "$line"
done < "$fifo"
wait "$pid"
status=$?
t1=$(up)
wait "$watcher"
echo "L1-BENCH vmm={name} guest={guest} start=$t0 end=$t1 status=$status $(cat /tmp/bench-mem 2>/dev/null)"
rm -f "$fifo"
exit $status
"#,
        command = vmm.command(guest, run),
        name = vmm.name(),
        guest = guest.name(),
    );
    text
}

/// `key=value` from a line of `key=value` words.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.trim_end_matches(['M', 'K']).parse().ok())
}

/// One boot's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootFigures {
    /// L1 seconds from starting the VMM to its exit.
    pub wall: f64,
    /// The guest's uptime when it powered off.
    pub guest_uptime: f64,
    /// The VMM's peak RSS in KiB.
    pub peak_rss_kib: f64,
    /// The VMM's RSS at its last sample, in KiB.
    pub rss_kib: f64,
    /// The resident part of guest RAM at the same sample, in KiB (the guest's own footprint).
    pub guest_rss_kib: f64,
    /// Of `rss_kib`, the pages mapped from files (`RssFile` + `RssShmem`): the VMM's binary,
    /// shared and clean (in L1 it lives on a tmpfs, hence shmem).
    pub file_rss_kib: f64,
    /// Exits to the VMM (KVM `mmio_exit_user`) over the whole run.
    pub vmm_exits: f64,
    /// Every exit of the VM to L1's KVM (`exits`: MMIO, WFI, interrupts, stage-2 faults,
    /// system registers) up to the guest's uptime line.
    pub all_exits: f64,
}

impl BootFigures {
    /// The VMM's share of the wall time.
    pub fn vmm_overhead(&self) -> f64 {
        self.wall - self.guest_uptime
    }

    /// The VMM's own memory: its RSS minus the guest RAM the guest touched (one sample, the
    /// last before it exited), in KiB.
    pub fn vmm_rss_kib(&self) -> f64 {
        self.rss_kib - self.guest_rss_kib
    }
}

/// One read series' figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadFigures {
    /// Block size as dd got it ("1M", "4K").
    pub block: String,
    /// MiB read.
    pub mib: f64,
    /// Guest seconds the dd took.
    pub seconds: f64,
    /// Exits to the VMM (KVM `mmio_exit_user`) during the read, with a second either side.
    pub vmm_exits: f64,
    /// All KVM exits in the same window.
    pub all_exits: f64,
}

impl ReadFigures {
    /// MiB/s.
    pub fn speed(&self) -> f64 {
        self.mib / self.seconds.max(0.01)
    }

    /// VMM exits per MiB read.
    pub fn vmm_exits_per_mib(&self) -> f64 {
        self.vmm_exits / self.mib.max(1.0 / 1024.0)
    }
}

/// The boot figures of a finished run, if it printed them.
pub fn boot_figures(case: &CaseOutput) -> Option<BootFigures> {
    let summary = case.line_with("L1-BENCH ")?;
    let uptime = case.line_with("BENCH-UPTIME ")?;
    // The kernel's last words may follow on the same line ("12.24[   14.46] reboot: ...").
    let figure = uptime.split("BENCH-UPTIME ").nth(1)?;
    let end = figure.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(figure.len());
    let guest_uptime = figure[..end].parse().ok()?;
    Some(BootFigures {
        wall: field(summary, "end")? - field(summary, "start")?,
        guest_uptime,
        peak_rss_kib: field(summary, "hwm_kib")?,
        rss_kib: field(summary, "rss_kib").unwrap_or(0.0),
        guest_rss_kib: field(summary, "guest_rss_kib").unwrap_or(0.0),
        file_rss_kib: field(summary, "file_rss_kib").unwrap_or(0.0),
        vmm_exits: case
            .line_with("L1-BOOT-EXITS ")
            .and_then(|line| field(line, "mmio_user"))
            .unwrap_or(0.0),
        all_exits: case
            .line_with("L1-BOOT-EXITS ")
            .and_then(|line| field(line, "exits"))
            .unwrap_or(0.0),
    })
}

/// The read figures of a finished run, in the order the guest read: the exits between each
/// pair of START / END markers, and the figures of the `BENCH-READ` line after them.
pub fn read_figures(case: &CaseOutput) -> Vec<ReadFigures> {
    let mut figures = Vec::new();
    let mut start_exits: Option<(f64, f64)> = None;
    let mut window: Option<(f64, f64)> = None;
    let mut last_exits = (0.0, 0.0);
    for (_, line) in &case.lines {
        if line.contains("L1-EXITS ") {
            last_exits =
                (field(line, "mmio_user").unwrap_or(0.0), field(line, "exits").unwrap_or(0.0));
        } else if line.contains("BENCH-READ-START") {
            start_exits = Some(last_exits);
        } else if line.contains("BENCH-READ-END") {
            window =
                start_exits.take().map(|(user0, all0)| (last_exits.0 - user0, last_exits.1 - all0));
        } else if line.contains("BENCH-READ ") {
            let (Some((vmm_exits, all_exits)), Some(count), Some(start), Some(end)) =
                (window.take(), field(line, "count"), field(line, "start"), field(line, "end"))
            else {
                continue;
            };
            let block = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bs="))
                .unwrap_or("?")
                .to_string();
            let block_kib = match block.as_str() {
                "1M" => 1024.0,
                "4K" => 4.0,
                _ => continue,
            };
            figures.push(ReadFigures {
                block,
                mib: count * block_kib / 1024.0,
                seconds: end - start,
                vmm_exits,
                all_exits,
            });
        }
    }
    figures
}

/// The median of `values` (None when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn output(lines: &[&str]) -> CaseOutput {
        CaseOutput {
            lines: lines.iter().map(|l| (Duration::ZERO, l.to_string())).collect(),
            ..CaseOutput::default()
        }
    }

    #[test]
    fn boot_figures_come_from_the_summary_and_the_guest_uptime() {
        let case = output(&[
            "APERTURE-GUEST-INIT-OK",
            "L1-BOOT-EXITS mmio_user=812 exits=5900",
            "BENCH-UPTIME 1.38[    1.40] reboot: Power down",
            "L1-BENCH vmm=aperture guest=6.1 start=100.50 end=102.95 status=0 hwm_kib=40960 \
             rss_kib=38912 guest_rss_kib=30720 file_rss_kib=2048",
        ]);
        let boot = boot_figures(&case).unwrap();
        assert!((boot.wall - 2.45).abs() < 1e-9);
        assert!((boot.vmm_overhead() - 1.07).abs() < 1e-9);
        assert_eq!(boot.peak_rss_kib, 40960.0);
        assert_eq!(boot.vmm_rss_kib(), 8192.0);
        assert_eq!(boot.vmm_exits, 812.0);
        assert_eq!(boot.all_exits, 5900.0);
        assert_eq!(boot.file_rss_kib, 2048.0);
        assert_eq!(boot_figures(&output(&["BENCH-UPTIME 1.0"])), None);
    }

    #[test]
    fn read_figures_pair_the_exit_samples_with_each_read() {
        let case = output(&[
            "L1-EXITS mmio_user=1000 exits=5000",
            "BENCH-READ-START",
            "L1-EXITS mmio_user=1256 exits=9000",
            "BENCH-READ-END",
            "BENCH-READ round=1 bs=1M count=128 start=3.00 end=3.25 status=0",
            "L1-EXITS mmio_user=1300 exits=9100",
            "BENCH-READ-START",
            "L1-EXITS mmio_user=9492 exits=20000",
            "BENCH-READ-END",
            "BENCH-READ round=1 bs=4K count=8192 start=5.00 end=8.00 status=0",
            // An END without its START (a lost line) gives no figure.
            "BENCH-READ-END",
            "BENCH-READ round=2 bs=4K count=8192 start=9.00 end=12.00 status=0",
        ]);
        let reads = read_figures(&case);
        assert_eq!(reads.len(), 2);
        assert_eq!(reads[0].block, "1M");
        assert_eq!(reads[0].mib, 128.0);
        assert!((reads[0].speed() - 512.0).abs() < 1e-6);
        assert_eq!(reads[0].vmm_exits_per_mib(), 2.0);
        assert_eq!(reads[0].all_exits, 4000.0);
        assert_eq!(reads[1].mib, 32.0);
        assert_eq!(reads[1].vmm_exits, 8192.0);
        assert_eq!(reads[1].vmm_exits_per_mib(), 256.0);
    }

    #[test]
    fn scripts_run_the_right_command_on_the_right_guest() {
        let aperture = case_script(Vmm::Aperture, Guest::Linux61, BenchRun::Read, &[]);
        assert!(aperture.contains("/aperture run --kernel /guest/Image --initrd /guest/guest.cpio"));
        assert!(aperture.contains("--disk /tmp/bench-disk.img"));
        assert!(aperture.contains("quiet aperture.check=bench-read'"));
        assert!(aperture.contains("guest=6.1 "));
        assert!(!aperture.contains("/tmp/bin-"));
        let binaries = [(Vmm::Kvmtool, 1234), (Vmm::ApertureBaseline, 99)];
        let kvmtool = case_script(Vmm::Kvmtool, Guest::Linux612, BenchRun::Boot, &binaries);
        assert!(
            kvmtool.contains(r#"= kvmtool ] && head -c 1234 "/dev/${d##*/}" > /tmp/bin-kvmtool"#)
        );
        assert!(kvmtool.contains(r#"= aperture-base ] && head -c 99 "#));
        assert!(
            kvmtool.contains("/tmp/bin-kvmtool run -k /guest/6.12/Image -i /guest/6.12/guest.cpio")
        );
        assert!(kvmtool.contains("quiet aperture.check=bench'"));
        assert!(!kvmtool.contains(" -d /tmp/bench-disk.img"));
        assert!(kvmtool.contains("L1-BENCH vmm=kvmtool guest=6.12 "));
        let verbose = case_script(Vmm::Kvmtool, Guest::Linux61, BenchRun::VerboseBoot, &[]);
        assert!(verbose.contains("-p 'aperture.check=bench'"), "{verbose}");
        let verbose = case_script(Vmm::Aperture, Guest::Linux61, BenchRun::VerboseBoot, &[]);
        assert!(verbose.contains("'console=ttyAMA0 panic=-1 aperture.check=bench'"), "{verbose}");
        assert_eq!(Guest::parse("6.12"), Some(Guest::Linux612));
        assert_eq!(Guest::parse("5.10"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
