//! End-to-end tests: `aperture` boots the test guest inside an emulated arm64 KVM host.
//!
//! All cases run in ONE boot of the emulated host (shared through a `OnceLock`), so the
//! first test to run pays for the boot and the others read their case's output.
//! Run them with `tests/run-e2e.sh` (builds the guest and the rig first).

// The assertion helpers below panic, as assertions do.
#![allow(clippy::panic)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aperture_e2e::{run_cases, Case, CaseOutput, RigRun};

/// Printed by the test guest's /init (images/guest-init.sh).
const GUEST_MARKER: &str = "APERTURE-GUEST-INIT-OK";
/// QEMU is stopped after this long unless `APERTURE_E2E_TIMEOUT` (seconds) says otherwise.
const DEFAULT_RIG_TIMEOUT: Duration = Duration::from_secs(900);
/// Watchdog inside L1 for cases that must fail fast.
const BAD_INPUT_LIMIT: Duration = Duration::from_secs(60);

/// `aperture run` of the nested guest; every case bounds itself with `--timeout`.
const RUN: &str = "/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 60";

/// A guest command line running `check`. `quiet`: in the nested rig each console byte
/// costs an emulated exit: the ~230 boot lines make a boot ~11 s; quiet, ~5 s.
/// (Kernel panics print at emergency level, so they still show.)
fn with_check(check: &str) -> String {
    format!("--cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check={check}'")
}

struct Shared {
    run: Result<RigRun, String>,
    token: String,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn cases(token: &str) -> Vec<Case> {
    vec![
        // The rig itself: L1 has KVM (holds with or without aperture).
        Case::new(
            "l1-kvm",
            "ls -l /dev/kvm && uname -r && dmesg | grep -i 'kvm \\[' | head -n 3",
        ),
        Case::new("one-vcpu", format!("{RUN} --cpus 1 {}", with_check("cpus"))),
        Case::new("two-vcpus", format!("{RUN} --cpus 2 {}", with_check("cpus"))),
        // The default command line (not quiet): the whole boot log comes out.
        Case::new("default-cmdline", RUN),
        Case::new(
            "cmdline",
            format!(
                "{RUN} --cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check=cmdline aperture.token={token}'"
            ),
        ),
        Case::new("exit-7", format!("{RUN} {}", with_check("exit=7"))),
        Case::new("panic-reset", format!("{RUN} {}", with_check("panic"))),
        Case::new(
            "timeout",
            format!(
                "/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 5 {}",
                with_check("hang")
            ),
        ),
        Case::new(
            "gzip-image",
            format!(
                "/aperture run --kernel /guest/Image.gz --initrd /guest/guest.cpio --timeout 60 {}",
                with_check("cpus")
            ),
        ),
        // The guest's tty drains the UART when it opens, so a line sent before the guest
        // reads would be lost: send it every second until aperture exits (SIGPIPE ends the
        // writer).
        Case::new(
            "stdin",
            format!(
                "(while printf 'ping-42\\n'; do sleep 1; done) | {RUN} {}",
                with_check("stdin")
            ),
        ),
        Case::new(
            "bad-not-a-kernel",
            "/aperture run --kernel /bin/busybox --initrd /guest/guest.cpio --timeout 30",
        )
        .with_limit(BAD_INPUT_LIMIT),
        Case::new(
            "bad-missing-file",
            "/aperture run --kernel /guest/no-such-Image --initrd /guest/guest.cpio --timeout 30",
        )
        .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-small-memory", format!("{RUN} --memory 32M"))
            .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-zero-cpus", format!("{RUN} --cpus 0")).with_limit(BAD_INPUT_LIMIT),
    ]
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let token = format!("e2e-{}-{nanos:x}", std::process::id());
        let limit = std::env::var("APERTURE_E2E_TIMEOUT")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_RIG_TIMEOUT);
        let run = run_cases(&cases(&token), limit).map_err(|error| error.to_string());
        Shared { run, token }
    })
}

/// The shared run and the named case's output; panics with the rig's failure.
fn case(name: &str) -> (&'static RigRun, &'static CaseOutput) {
    let run = match &shared().run {
        Ok(run) => run,
        Err(error) => panic!("the e2e rig failed: {error}"),
    };
    let Some(output) = run.case(name) else {
        panic!("no case named {name} in the rig run");
    };
    (run, output)
}

fn context(run: &RigRun, output: &CaseOutput) -> String {
    format!("{}\n{}", output.describe(), run.summary())
}

/// Asserts the case ran to its end with `status`.
fn assert_status(run: &RigRun, output: &CaseOutput, status: i32) {
    assert_eq!(output.exit_status, Some(status), "wrong exit status\n{}", context(run, output));
}

fn assert_contains(run: &RigRun, output: &CaseOutput, needle: &str) {
    assert!(output.contains(needle), "expected {needle:?} in the output\n{}", context(run, output));
}

/// A bad input: status 1, a clear `aperture: error:` line, no hang.
fn assert_rejected(name: &str) -> (&'static RigRun, &'static CaseOutput) {
    let (run, output) = case(name);
    assert!(!output.watchdog_fired, "aperture hung\n{}", context(run, output));
    assert_status(run, output, 1);
    assert_contains(run, output, "aperture: error: ");
    (run, output)
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rig_host_has_kvm() {
    let (run, output) = case("l1-kvm");
    assert_status(run, output, 0);
    assert_contains(run, output, "/dev/kvm");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn boots_with_one_vcpu() {
    let (run, output) = case("one-vcpu");
    assert_contains(run, output, GUEST_MARKER);
    assert_contains(run, output, "CHECK cpus: online=0 nproc=1");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn boots_with_two_vcpus() {
    let (run, output) = case("two-vcpus");
    assert_contains(run, output, "CHECK cpus: online=0-1 nproc=2");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn initramfs_runs_with_default_cmdline() {
    let (run, output) = case("default-cmdline");
    assert_contains(run, output, GUEST_MARKER);
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn cmdline_reaches_guest() {
    let (run, output) = case("cmdline");
    let token = &shared().token;
    let line = output.line_with("CHECK cmdline:").unwrap_or("");
    assert!(
        line.contains(token.as_str()),
        "expected token {token} in the CHECK cmdline line\n{}",
        context(run, output)
    );
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn test_exit_device_sets_exit_status() {
    let (run, output) = case("exit-7");
    assert!(
        !output.contains("CHECK exit: devmem returned"),
        "the test-exit device did not stop the VM\n{}",
        context(run, output)
    );
    assert_status(run, output, 7);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn guest_panic_resets() {
    let (run, output) = case("panic-reset");
    assert_contains(run, output, "Kernel panic");
    assert_status(run, output, 3);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn timeout_stops_hung_guest() {
    let (run, output) = case("timeout");
    assert!(
        output.output.to_lowercase().contains("timed out"),
        "expected \"timed out\" on stderr\n{}",
        context(run, output)
    );
    assert_status(run, output, 124);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn gzip_image_boots() {
    let (run, output) = case("gzip-image");
    assert_contains(run, output, GUEST_MARKER);
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn stdin_reaches_guest() {
    let (run, output) = case("stdin");
    assert_contains(run, output, "CHECK stdin: got=ping-42");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_file_that_is_not_a_kernel() {
    assert_rejected("bad-not-a-kernel");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_missing_kernel_naming_it() {
    let (run, output) = assert_rejected("bad-missing-file");
    let line = output.line_with("aperture: error: ").unwrap_or("");
    assert!(
        line.contains("/guest/no-such-Image"),
        "the error should name the missing path\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_memory_too_small_for_kernel_and_initrd() {
    assert_rejected("bad-small-memory");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_zero_vcpus() {
    assert_rejected("bad-zero-cpus");
}
