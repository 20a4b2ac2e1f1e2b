//! End-to-end test of a Debian root disk: `aperture` boots the image of
//! `images/build-rootfs.sh` (systemd, sshd, networkd) inside the emulated arm64 KVM host.
//!
//! It has its own boot of the emulated host: L1 gets the root disk as a virtio-blk drive
//! (`/dev/vda` in L1, copy-on-write through QEMU's `snapshot=on`, so the built image stays
//! as built) and the image's kernel and initrd in its initramfs. The nested guest boots
//! with `aperture.distro-check`, which makes the image's `aperture-distro-check.service`
//! report the system state, sshd and the addresses on the console and power the guest off.
//! Its NIC is a tap in L1 (`--net tap=`) with busybox udhcpd and httpd on it: the guest's
//! systemd-networkd leases an address, the guest fetches a file from L1 and uploads a few MiB
//! to it, and L1 reads sshd's banner at the leased address while the guest runs.
//! Run with `tests/run-e2e.sh` (builds the image first, cached).

// The assertion helpers below panic, as assertions do.
#![allow(clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use aperture_e2e::{run_cases_with, Case, CaseOutput, RigOptions, RigRun, NET_PRELUDE};

/// The cases' names (`APERTURE_E2E_CASES=distro` selects both).
const CASE: &str = "distro-boot";
const KEY_CASE: &str = "distro-power-key";
/// Printed by the image's check service (images/build-rootfs.sh).
const REPORT: &str = "APERTURE-DISTRO: ";
/// agetty's prompt on the serial console (it then logs root in by itself).
const LOGIN: &str = " login: ";
/// Logged by systemd-logind once it reads the guest's power key (gpio-keys), as a `grep`
/// pattern: the power-key case presses it only then.
const BUTTONS: &str = "Watching system buttons on .*(gpio-keys)";
/// Both cases' kernel command line before what each adds. Device and start jobs get 600 s
/// (not 90): on a loaded machine udev's coldplug alone has taken longer, and the serial getty
/// then failed.
const BASE_CMDLINE: &str =
    "root=/dev/vda console=ttyAMA0 quiet systemd.default_timeout_start_sec=600";
/// Printed by the case just before `aperture run`.
const START: &str = "DISTRO-RUN-START";
/// A systemd boot nested under TCG takes minutes: generous limits, none of them asserted.
const GUEST_TIMEOUT_SECS: u64 = 1500;
const CASE_LIMIT: Duration = Duration::from_secs(GUEST_TIMEOUT_SECS + 120);
const RIG_TIMEOUT: Duration = Duration::from_secs(GUEST_TIMEOUT_SECS + 300);

/// Each case's start: L1's virtio-blk driver, and the drive (either case may run alone).
const DRIVE: &str = r#"modprobe -a virtio_pci virtio_blk
n=0
while [ ! -b /dev/vda ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
ls -l /dev/vda /distro/vmlinuz /distro/initrd.img || exit 90"#;

/// L1's tap for the guest and its /24 (L1 is PREFIX.1, udhcpd leases PREFIX.15-20).
const TAP: &str = "tap0";
const PREFIX: &str = "10.0.2";
/// Printed by the image's check service: the guest's IPv4 addresses (`IFACE=ADDR/LEN ...`).
const NET_REPORT: &str = "APERTURE-DISTRO-NET: ";
/// Printed by the case when L1 read sshd's banner at the guest's leased address.
const SSH_SEEN: &str = "l1: sshd at ";

/// What the guest uploads to L1 (`aperture.distro-send`), timed by the check service.
const SEND_MIB: u32 = 4;
/// Printed by the image's check service: the body of L1's /hello.txt, and the upload.
const HTTP_REPORT: &str = "APERTURE-DISTRO-HTTP: ";
const SEND_REPORT: &str = "APERTURE-DISTRO-SEND: ";

/// Kernel command line: the image's check service, which waits for sshd and a DHCP lease,
/// fetches /hello.txt from its gateway (L1), uploads SEND_MIB MiB to it, then stays up a
/// while so L1 can read sshd's banner.
fn cmdline() -> String {
    format!(
        "{BASE_CMDLINE} aperture.distro-check aperture.distro-send={SEND_MIB} \
         aperture.distro-hold=20"
    )
}

/// The case: find the drive, give the guest a tap with DHCP, an HTTP server and a sink for
/// the upload on port 5001, boot it, and meanwhile read sshd's banner at the leased address
/// from L1; report Aperture's exit status.
fn script() -> String {
    format!(
        r#"{DRIVE}
TOKEN=distro
{NET_PRELUDE}
net_setup {TAP} {PREFIX} || exit 91
nc -l -p 5001 > /dev/null &
ssh_probe() {{
    while [ ! -e /tmp/distro.done ]; do
        ip=$(lease_ip {TAP})
        if [ -n "$ip" ]; then
            banner=$(timeout 10 nc -w 2 "$ip" 22 </dev/null 2>/dev/null | head -n 1 | tr -d '\r')
            case "$banner" in SSH-*) echo "{SSH_SEEN}$ip: $banner"; return 0 ;; esac
        fi
        sleep 1
    done
    echo "l1: no sshd banner at the guest's lease (${{ip:-none}})"
}}
ssh_probe &
probe=$!
echo "{START}"
/aperture run --kernel /distro/vmlinuz --initrd /distro/initrd.img --disk /dev/vda \
    --net tap={TAP} \
    --cmdline '{cmdline}' \
    --memory 1G --cpus 2 --timeout {GUEST_TIMEOUT_SECS} -v
status=$?
touch /tmp/distro.done
wait "$probe"
echo "aperture-status=$status"
"#,
        cmdline = cmdline()
    )
}

/// The second case, in the same emulated host: boot without the check service until logind
/// watches the power key, then SIGTERM Aperture, which presses it; systemd-logind powers
/// off (journald forwards its log to the console to show it). The grace is long: a nested
/// systemd shutdown under TCG takes a while.
fn key_script() -> String {
    format!(
        r#"{DRIVE}
echo "{START}"
/aperture run --kernel /distro/vmlinuz --initrd /distro/initrd.img --disk /dev/vda \
    --cmdline '{BASE_CMDLINE} systemd.journald.forward_to_console=1' \
    --memory 1G --cpus 2 --timeout {GUEST_TIMEOUT_SECS} --shutdown-grace 600 \
    > /tmp/distro-key.log 2>&1 &
pid=$!
# The console as it comes (the loop below also reads the log, for logind's line).
tail -f /tmp/distro-key.log &
tailer=$!
n=0
until grep -q '{BUTTONS}' /tmp/distro-key.log; do
    kill -0 $pid 2>/dev/null || break
    [ "$n" -lt {polls} ] || break
    sleep 0.1; n=$((n + 1))
done
# logind reads the key now; the login prompt can come well before (a press then is lost).
sleep 2
echo "DISTRO-SIGTERM"
kill -TERM $pid
wait $pid
status=$?
sleep 2
kill "$tailer"
echo "aperture-status=$status"
"#,
        polls = GUEST_TIMEOUT_SECS * 10
    )
}

fn rootfs_dir(options: &RigOptions) -> PathBuf {
    options.paths.root.join("build").join("images").join("rootfs")
}

static RUN: OnceLock<Result<RigRun, String>> = OnceLock::new();

fn run() -> &'static Result<RigRun, String> {
    RUN.get_or_init(|| {
        let mut cases = vec![
            Case::new(CASE, script()).with_limit(CASE_LIMIT),
            Case::new(KEY_CASE, key_script()).with_limit(CASE_LIMIT),
        ];
        if let Ok(only) = std::env::var("APERTURE_E2E_CASES") {
            cases.retain(|case| only.split(',').any(|w| !w.is_empty() && case.name.starts_with(w)));
            if cases.is_empty() {
                return Err(format!(
                    "no case named {CASE} or {KEY_CASE}: APERTURE_E2E_CASES={only}"
                ));
            }
        }
        let mut options = RigOptions::new(RIG_TIMEOUT);
        let dir = rootfs_dir(&options);
        let (image, kernel, initrd) =
            (dir.join("rootfs.img"), dir.join("vmlinuz"), dir.join("initrd.img"));
        for path in [&image, &kernel, &initrd] {
            if !path.is_file() {
                return Err(format!("{} is missing: run images/build-rootfs.sh", path.display()));
            }
        }
        // L1 holds the 1 GiB guest, its initramfs and the distro kernel and initrd.
        options.memory_mib = 3072;
        options.log_name = "last-distro-run.log".into();
        options.extra_qemu_args = vec![
            "-drive".into(),
            format!("file={},if=none,id=distro,format=raw,snapshot=on", image.display()),
            "-device".into(),
            "virtio-blk-pci,drive=distro".into(),
        ];
        options.extra_files =
            vec![("distro/vmlinuz".into(), kernel), ("distro/initrd.img".into(), initrd)];
        run_cases_with(&cases, &options).map_err(|error| error.to_string())
    })
}

fn case() -> (&'static RigRun, &'static CaseOutput) {
    named_case(CASE)
}

fn named_case(name: &str) -> (&'static RigRun, &'static CaseOutput) {
    RigRun::expect_case(run(), "distro e2e", name)
}

fn context(run: &RigRun, output: &CaseOutput) -> String {
    format!("{}\n{}", output.describe(), run.summary())
}

/// The value of `key=` in the check service's report.
fn report_value<'a>(output: &'a CaseOutput, key: &str) -> Option<&'a str> {
    let line = output.line_with(REPORT)?;
    let rest = &line[line.find(REPORT)? + REPORT.len()..];
    rest.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

fn seconds_between(output: &CaseOutput, from: &str, to: &str) -> Option<f64> {
    Some(output.time_to(to)?.checked_sub(output.time_to(from)?)?.as_secs_f64())
}

#[test]
#[ignore = "needs the emulated arm64 rig and images/build-rootfs.sh: tests/run-e2e.sh"]
fn debian_root_disk_boots_to_a_running_system() {
    let (run, output) = case();
    eprintln!(
        "Debian root disk, nested: aperture run -> login prompt {:?} s, -> report {:?} s, \
         whole case {:?} s; {}",
        seconds_between(output, START, LOGIN),
        seconds_between(output, START, REPORT),
        output.duration.map(|d| d.as_secs_f64()),
        output.line_with("APERTURE-DISTRO-UPTIME").unwrap_or("no guest uptime")
    );
    assert!(output.contains(LOGIN), "no login prompt on the console\n{}", context(run, output));
    let state = report_value(output, "state");
    assert!(
        matches!(state, Some("running" | "degraded")),
        "systemctl is-system-running gave {state:?}\n{}",
        context(run, output)
    );
    if state == Some("degraded") {
        eprintln!("degraded: {}", output.line_with("APERTURE-DISTRO-FAILED").unwrap_or(""));
    }
}

#[test]
#[ignore = "needs the emulated arm64 rig and images/build-rootfs.sh: tests/run-e2e.sh"]
fn debian_root_disk_runs_sshd() {
    let (run, output) = case();
    let listening = report_value(output, "sshd").and_then(|n| n.parse::<u32>().ok());
    assert!(
        listening.is_some_and(|n| n > 0),
        "sshd is not listening on port 22 ({listening:?} sockets)\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig and images/build-rootfs.sh: tests/run-e2e.sh"]
fn debian_root_disk_powers_off_cleanly() {
    let (run, output) = case();
    // systemd's poweroff reaches PSCI SYSTEM_OFF: Aperture exits 0 (not 124 for its timeout).
    assert!(
        output.contains("aperture-status=0") && output.exit_status == Some(0),
        "aperture did not end with the guest's power-off\n{}",
        context(run, output)
    );
    assert!(
        output.contains("reboot: Power down"),
        "no kernel power-down\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig and images/build-rootfs.sh: tests/run-e2e.sh"]
fn sigterm_powers_the_debian_guest_off_through_its_power_key() {
    let (run, output) = named_case(KEY_CASE);
    eprintln!(
        "Debian power key: SIGTERM -> power-off {:?} s",
        seconds_between(output, "DISTRO-SIGTERM", "reboot: Power down")
    );
    // The case pressed only once logind watched the key (the login prompt may come later).
    assert!(
        output.contains("DISTRO-SIGTERM") && output.contains("(gpio-keys)"),
        "systemd-logind never watched the power key\n{}",
        context(run, output)
    );
    // systemd-logind saw KEY_POWER (journald forwards it to the console).
    assert!(
        output.contains("Power key pressed"),
        "systemd-logind did not log the power key\n{}",
        context(run, output)
    );
    assert!(
        output.contains("aperture: the guest powered off after the power key (SIGTERM)")
            && output.contains("aperture-status=0"),
        "the guest did not power off cleanly after the key\n{}",
        context(run, output)
    );
}

/// The guest's IPv4 addresses (without the prefix length) in the check service's report.
fn guest_addresses(output: &CaseOutput) -> Vec<&str> {
    output.line_with(NET_REPORT).map(addresses_in).unwrap_or_default()
}

/// The addresses in a `APERTURE-DISTRO-NET: IFACE=ADDR/LEN ...` line.
fn addresses_in(line: &str) -> Vec<&str> {
    let Some(start) = line.find(NET_REPORT) else { return Vec::new() };
    line[start + NET_REPORT.len()..]
        .split_whitespace()
        .filter_map(|word| word.split_once('=')?.1.split('/').next())
        .collect()
}

/// Whether `address` is one udhcpd in L1 hands out (PREFIX.15 to PREFIX.20).
fn in_lease_range(address: &str) -> bool {
    address
        .strip_prefix(PREFIX)
        .and_then(|host| host.strip_prefix('.'))
        .and_then(|host| host.parse::<u8>().ok())
        .is_some_and(|host| (15..=20).contains(&host))
}

#[test]
#[ignore = "needs the emulated arm64 rig and images/build-rootfs.sh: tests/run-e2e.sh"]
fn debian_root_disk_leases_an_address_from_l1() {
    let (run, output) = case();
    eprintln!("{}", output.line_with(NET_REPORT).unwrap_or("no APERTURE-DISTRO-NET line"));
    let addresses = guest_addresses(output);
    assert!(
        addresses.iter().any(|address| in_lease_range(address)),
        "the guest has no address from L1's DHCP range {PREFIX}.15-20: {addresses:?}\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig and images/build-rootfs.sh: tests/run-e2e.sh"]
fn debian_root_disk_sshd_answers_l1() {
    let (run, output) = case();
    let seen = output.line_with(SSH_SEEN);
    eprintln!("{}", seen.unwrap_or("no sshd banner seen from L1"));
    // "l1: sshd at ADDR: SSH-2.0-OpenSSH_..."; ADDR is the address the guest reported.
    let (address, banner) = seen
        .and_then(|line| line[line.find(SSH_SEEN)? + SSH_SEEN.len()..].split_once(": "))
        .unwrap_or_default();
    assert!(
        banner.starts_with("SSH-2.0-OpenSSH") && guest_addresses(output).contains(&address),
        "L1 did not read sshd's banner at the guest's address ({address:?}: {banner:?})\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig and images/build-rootfs.sh: tests/run-e2e.sh"]
fn debian_root_disk_fetches_from_l1_and_uploads_to_it() {
    let (run, output) = case();
    let body = output.line_with(HTTP_REPORT).map(|line| after(line, HTTP_REPORT));
    assert_eq!(
        body,
        Some(format!("hello-{TAP}-distro").as_str()),
        "the guest did not fetch L1's /hello.txt over its lease\n{}",
        context(run, output)
    );
    let send = output.line_with(SEND_REPORT).map(|line| after(line, SEND_REPORT));
    let millis = send
        .and_then(|report| report.strip_prefix(&format!("mib={SEND_MIB} ms=")))
        .and_then(|ms| ms.trim().parse::<u64>().ok());
    assert!(
        millis.is_some(),
        "the guest's upload to L1 failed: {send:?}\n{}",
        context(run, output)
    );
    if let Some(ms) = millis.filter(|&ms| ms > 0) {
        eprintln!(
            "Debian guest -> L1 over virtio-net (tap): {SEND_MIB} MiB in {ms} ms, {:.1} Mbit/s",
            f64::from(SEND_MIB) * 8.0 * 1.048_576 * 1000.0 / ms as f64
        );
    }
}

/// The text after `marker` in a console line, without trailing blanks.
fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.find(marker).map_or("", |at| line[at + marker.len()..].trim_end())
}

#[test]
fn lease_range_and_report_parsing() {
    assert!(in_lease_range("10.0.2.15") && in_lease_range("10.0.2.20"));
    assert!(!in_lease_range("10.0.2.1") && !in_lease_range("10.0.2.21"));
    assert!(!in_lease_range("10.0.20.15") && !in_lease_range("10.0.2.x"));
    let line = "[  9.1] APERTURE-DISTRO-NET: enp0s1=10.0.2.17/24 eth1=192.168.1.2/16 ";
    assert_eq!(addresses_in(line), ["10.0.2.17", "192.168.1.2"]);
    assert!(addresses_in("APERTURE-DISTRO-NET: none").is_empty());
}

#[test]
fn script_is_valid_shell() {
    let script = script();
    let status = std::process::Command::new("sh").args(["-n", "-c", &script]).status();
    assert!(status.is_ok_and(|s| s.success()), "sh -n rejects the case script:\n{script}");
}
