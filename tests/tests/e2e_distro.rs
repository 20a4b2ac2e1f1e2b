//! End-to-end test of a Debian root disk: `aperture` boots the image of
//! `images/build-rootfs.sh` (systemd, sshd, networkd) inside the emulated arm64 KVM host.
//!
//! It has its own boot of the emulated host: L1 gets the root disk as a virtio-blk drive
//! (`/dev/vda` in L1, copy-on-write through QEMU's `snapshot=on`, so the built image stays
//! as built) and the image's kernel and initrd in its initramfs. The nested guest boots
//! with `aperture.distro-check`, which makes the image's `aperture-distro-check.service`
//! report the system state, sshd and the addresses on the console and power the guest off.
//! Run with `tests/run-e2e.sh` (builds the image first, cached).
//!
//! TODO(networking): once `aperture run --net` exists, pass `--net tap=...` here with
//! busybox udhcpd serving the tap in L1, and assert `APERTURE-DISTRO-NET` shows the lease.

// The assertion helpers below panic, as assertions do.
#![allow(clippy::panic)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use aperture_e2e::{run_cases_with, Case, CaseOutput, RigOptions, RigRun};

/// The cases' names (`APERTURE_E2E_CASES=distro` selects both).
const CASE: &str = "distro-boot";
const KEY_CASE: &str = "distro-power-key";
/// Printed by the image's check service (images/build-rootfs.sh).
const REPORT: &str = "APERTURE-DISTRO: ";
/// agetty's prompt on the serial console (it then logs root in by itself).
const LOGIN: &str = " login: ";
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

/// The case: find the drive, boot it, report Aperture's exit status.
fn script() -> String {
    format!(
        r#"{DRIVE}
echo "{START}"
/aperture run --kernel /distro/vmlinuz --initrd /distro/initrd.img --disk /dev/vda \
    --cmdline 'root=/dev/vda console=ttyAMA0 quiet aperture.distro-check' \
    --memory 1G --cpus 2 --timeout {GUEST_TIMEOUT_SECS} -v
echo "aperture-status=$?"
"#
    )
}

/// The second case, in the same emulated host: boot to the login prompt without the check
/// service, then SIGTERM Aperture, which presses the guest's power key; systemd-logind powers
/// off (journald forwards its log to the console to show it). The grace is long: a nested
/// systemd shutdown under TCG takes a while.
fn key_script() -> String {
    format!(
        r#"{DRIVE}
echo "{START}"
/aperture run --kernel /distro/vmlinuz --initrd /distro/initrd.img --disk /dev/vda \
    --cmdline 'root=/dev/vda console=ttyAMA0 quiet systemd.journald.forward_to_console=1' \
    --memory 1G --cpus 2 --timeout {GUEST_TIMEOUT_SECS} --shutdown-grace 600 \
    > /tmp/distro-key.log 2>&1 &
pid=$!
n=0
until grep -q '{LOGIN}' /tmp/distro-key.log; do
    kill -0 $pid 2>/dev/null || break
    [ "$n" -lt {polls} ] || break
    sleep 0.1; n=$((n + 1))
done
# The autologin's session is up; give logind a moment with its input devices.
sleep 5
echo "DISTRO-SIGTERM"
kill -TERM $pid
wait $pid
status=$?
cat /tmp/distro-key.log
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
    assert!(output.contains(LOGIN), "no login prompt on the console\n{}", context(run, output));
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
