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
        Case::new("pci-virtio", PCI_VIRTIO_SCRIPT),
        Case::new("bad-missing-disk", format!("{RUN} --disk /tmp/no-such-disk.img"))
            .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-disk-option", format!("{RUN} --disk /guest/guest.cpio,cache=none"))
            .with_limit(BAD_INPUT_LIMIT),
    ]
}

/// PCI and virtio in one boot: the host writes patterns into two disk images (`A`s in a
/// read-write one, `R`s in a read-only one); the guest lists PCI, reads `vda`'s first MiB,
/// writes `G`s at 1 MiB, tries to write `vdb`, reads the RNG and lists its interrupts. Then
/// the host checks the images. `md5sum` lines let the test compare both sides.
const PCI_VIRTIO_SCRIPT: &str = r#"
dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\000' A > /tmp/rw.img
dd if=/dev/zero bs=1M count=2 2>/dev/null | tr '\000' R > /tmp/ro.img
echo "host: head=$(dd if=/tmp/rw.img bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "host: ro-before=$(md5sum < /tmp/ro.img | cut -d' ' -f1)"
/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 60 \
    --disk /tmp/rw.img --disk /tmp/ro.img,readonly --trace-pci /tmp/pci-trace.log \
    --cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check=pci,blk,rng,irqs'
status=$?
echo "host: written=$(dd if=/tmp/rw.img bs=1M skip=1 count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "host: expected=$(dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\000' G | md5sum | cut -d' ' -f1)"
echo "host: ro-after=$(md5sum < /tmp/ro.img | cut -d' ' -f1)"
echo "host: trace-lines=$(wc -l < /tmp/pci-trace.log)"
grep -m1 'virtio-blk0 .*cfg-write' /tmp/pci-trace.log | sed 's/^/host: trace: /'
grep -m1 'virtio-blk0 .*bar0-write' /tmp/pci-trace.log | sed 's/^/host: trace: /'
exit $status
"#;

/// The value after `prefix` on the line that contains it.
fn value_after<'a>(output: &'a CaseOutput, prefix: &str) -> Option<&'a str> {
    let line = output.line_with(prefix)?;
    let start = line.find(prefix)? + prefix.len();
    line[start..].split_whitespace().next()
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

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn guest_lists_host_bridge_root_port_and_virtio_devices() {
    let (run, output) = case("pci-virtio");
    assert_status(run, output, 0);
    for device in [
        "CHECK pci: 0000:00:00.0 0x1b36:0x0008 class=0x060000",
        "CHECK pci: 0000:00:01.0 0x1b36:0x000c class=0x060400",
        "0x1af4:0x1042 class=0x018000 driver=virtio-pci",
        "0x1af4:0x1044 class=0xff0000 driver=virtio-pci",
    ] {
        assert_contains(run, output, device);
    }
    let blk = output.output.matches("0x1af4:0x1042").count();
    assert_eq!(blk, 2, "two virtio-blk functions expected\n{}", context(run, output));
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_blk_reads_what_the_host_wrote() {
    let (run, output) = case("pci-virtio");
    let host = value_after(output, "host: head=");
    let guest = value_after(output, "CHECK blk: vda-head=");
    assert!(host.is_some() && host == guest, "{host:?} != {guest:?}\n{}", context(run, output));
    assert_contains(run, output, "CHECK blk: vda-sectors=8192 vda-ro=0");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_blk_synced_write_lands_in_the_host_file() {
    let (run, output) = case("pci-virtio");
    assert_contains(run, output, "CHECK blk: vda-write=0");
    let written = value_after(output, "host: written=");
    let expected = value_after(output, "host: expected=");
    assert!(
        written.is_some() && written == expected,
        "{written:?} != {expected:?}\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn readonly_disk_refuses_writes() {
    let (run, output) = case("pci-virtio");
    assert_contains(run, output, "CHECK blk: vdb-ro=1");
    assert_contains(run, output, "CHECK blk: vdb-write=refused");
    let before = value_after(output, "host: ro-before=");
    let after = value_after(output, "host: ro-after=");
    assert!(before.is_some() && before == after, "image changed\n{}", context(run, output));
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_rng_supplies_bytes() {
    let (run, output) = case("pci-virtio");
    assert_contains(run, output, "CHECK rng: current=virtio_rng.0");
    assert_contains(run, output, "CHECK rng: bytes=64");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_interrupts_are_its_msis() {
    let (run, output) = case("pci-virtio");
    // Each virtio device has a config vector and a queue vector on the ITS, and the queue
    // vectors fired (a count above zero in the first CPU column).
    for queue in ["virtio0-req.0", "virtio1-req.0", "virtio2-input"] {
        let line = output.line_with(queue).unwrap_or("");
        assert!(line.contains("ITS-MSI"), "{queue} not on an ITS MSI\n{}", context(run, output));
        // "CHECK irqs: 16:   5   ITS-MSI 32769 Edge   virtio0-req.0": the count follows the
        // IRQ number.
        let is_irq_number =
            |w: &&str| w.strip_suffix(':').is_some_and(|n| n.parse::<u32>().is_ok());
        let count: u64 = line
            .split_whitespace()
            .skip_while(|w| !is_irq_number(w))
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!(count > 0, "{queue} never fired\n{}", context(run, output));
    }
    assert_contains(run, output, "virtio0-config");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn pci_trace_records_config_and_bar_accesses() {
    let (run, output) = case("pci-virtio");
    let lines: u64 =
        value_after(output, "host: trace-lines=").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(lines > 100, "too few trace lines: {lines}\n{}", context(run, output));
    assert_contains(run, output, "host: trace: ");
    let trace: Vec<&str> = output.output.lines().filter(|l| l.contains("host: trace: ")).collect();
    assert!(
        trace.iter().any(|l| l.contains("cfg-write"))
            && trace.iter().any(|l| l.contains("bar0-write")),
        "trace lacks config or BAR writes: {trace:?}\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_missing_disk_naming_it() {
    let (run, output) = assert_rejected("bad-missing-disk");
    assert_contains(run, output, "--disk /tmp/no-such-disk.img: no such file");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_an_unknown_disk_option() {
    let (run, output) = assert_rejected("bad-disk-option");
    assert_contains(run, output, "unknown option \"cache=none\"");
}
