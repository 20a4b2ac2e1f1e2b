//! The VM lifecycle on the scripted fake hypervisor: boot payload placement, device wiring,
//! every way a VM stops, and that all vCPU threads are stopped and joined.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch::layout;

use super::*;
use crate::cli::Kaslr;
use crate::hypervisor::fake::{FakeHypervisor, Step};

/// A minimal raw arm64 Image: the 64-byte header and some padding.
fn fake_kernel() -> PathBuf {
    let mut image = vec![0u8; 4096];
    image[16..24].copy_from_slice(&(2u64 << 20).to_le_bytes()); // image_size
    image[24..32].copy_from_slice(&0b1010u64.to_le_bytes()); // LE, 4K pages, anywhere
    image[0x38..0x3c].copy_from_slice(b"ARM\x64");
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("aperture-vm-test-{}-{n}.img", std::process::id());
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, image).unwrap();
    path
}

fn config(vcpus: u32) -> VmConfig {
    VmConfig {
        kernel: fake_kernel(),
        initrd: None,
        cmdline: "console=ttyAMA0".into(),
        vcpus,
        memory_bytes: 64 << 20,
        timeout: Some(Duration::from_secs(20)),
        shutdown_grace: None,
        reboot: false,
        disks: Vec::new(),
        nets: Vec::new(),
        rng: false,
        trace_pci: None,
        on_device_loss: crate::cli::OnDeviceLoss::Continue,
        trace_format: devices::trace::TraceFormat::Text,
        devices: Vec::new(),
        // It would confine the test threads.
        seccomp: false,
        tso: false,
        kaslr: crate::cli::Kaslr::Auto,
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run_script(
    vcpus: u32,
    scripts: Vec<(u32, Vec<Step>)>,
    timeout: Option<u64>,
) -> (StopReason, String, FakeHypervisor) {
    run_script_with(vcpus, scripts, |cfg| cfg.timeout = timeout.map(Duration::from_secs))
}

fn run_script_with(
    vcpus: u32,
    scripts: Vec<(u32, Vec<Step>)>,
    configure: impl FnOnce(&mut VmConfig),
) -> (StopReason, String, FakeHypervisor) {
    let hv = FakeHypervisor::default();
    hv.scripts.lock().unwrap().extend(scripts);
    let capture = Capture::default();
    let mut cfg = config(vcpus);
    configure(&mut cfg);
    let reason = run_on(&hv, &cfg, Console::Capture(Box::new(capture.clone()))).unwrap();
    let output = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    (reason, output, hv)
}

fn uart_write(text: &str) -> Vec<Step> {
    text.bytes().map(|b| Step::Write(layout::UART_BASE, vec![b, 0, 0, 0])).collect()
}

#[test]
fn console_output_then_power_off() {
    let mut steps = uart_write("hello\n");
    steps.push(Step::PowerOff);
    let (reason, output, hv) = run_script(1, vec![(0, steps)], Some(20));
    assert_eq!(reason, StopReason::PowerOff);
    assert_eq!(output, "hello\n");
    let observed = hv.observed.lock().unwrap();
    let regs = observed.boot_regs.unwrap();
    // Kernel at the 2 MiB-aligned start of RAM, device tree in the last 2 MiB.
    assert_eq!(regs.pc, layout::RAM_BASE);
    assert_eq!(regs.x0, layout::RAM_BASE + (64 << 20) - (2 << 20));
    assert_eq!(regs.pstate, 0x3c5);
    assert_eq!(&observed.kernel_header[0x38..0x3c], b"ARM\x64");
    assert_eq!(observed.fdt_header[..4], [0xd0, 0x0d, 0xfe, 0xed]);
    let gic = observed.gic.unwrap();
    assert_eq!(gic.dist_base, layout::GIC_DIST_BASE);
    assert_eq!(gic.its_base, Some(layout::GIC_ITS_BASE));
}

#[test]
fn an_msi_frame_replaces_the_its() {
    let frame = MsiController::SpiFrame {
        base: layout::GIC_MSI_FRAME_BASE,
        spi_base: layout::GIC_MSI_FRAME_FIRST_INTID,
        spi_count: layout::GIC_MSI_FRAME_INTIDS,
    };
    let memory = MemoryLayout::new(64 << 20, 2, 40).unwrap();
    let gic = gic_config(&memory, frame);
    assert_eq!(gic.its, None);
    assert_eq!(
        gic.msi_frame,
        Some((layout::GIC_MSI_FRAME_BASE, layout::GIC_MSI_FRAME_SIZE, 96, 128))
    );
    assert_eq!(gic.redists, (layout::GIC_REDIST_BASE, 2 * layout::GIC_REDIST_SIZE_PER_CPU));
    let its = gic_config(&memory, MsiController::Its);
    assert_eq!(its.its, Some((layout::GIC_ITS_BASE, layout::GIC_ITS_SIZE)));
    assert_eq!(its.msi_frame, None);

    // A backend with an MSI frame is asked for a GIC without an ITS.
    let hv = FakeHypervisor { msi: Some(frame), ..Default::default() };
    hv.scripts.lock().unwrap().insert(0, vec![Step::PowerOff]);
    let reason = run_on(&hv, &config(1), Console::Capture(Box::new(Capture::default()))).unwrap();
    assert_eq!(reason, StopReason::PowerOff);
    assert_eq!(hv.observed.lock().unwrap().gic.unwrap().its_base, None);
}

#[test]
fn test_exit_device_stops_all_vcpus_with_the_guests_status() {
    // vCPU 1 idles: the stop must kick it out and join its thread.
    let exit = vec![Step::Write(layout::TEST_EXIT_BASE, 42u32.to_le_bytes().to_vec())];
    let (reason, _, _) = run_script(2, vec![(0, exit)], Some(20));
    assert_eq!(reason, StopReason::TestExit(42));
    assert_eq!(reason.exit_status(), 42);
}

#[test]
fn reset_and_errors() {
    let (reason, _, _) = run_script(1, vec![(0, vec![Step::Reset])], Some(20));
    assert_eq!(reason, StopReason::Reset);
    let (reason, _, _) = run_script(3, vec![(2, vec![Step::Fail])], Some(20));
    match reason {
        StopReason::Error(message) => assert!(message.contains("vCPU 2"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failing_vcpu_stops_the_vm_naming_the_vcpu_its_pc_and_the_reason() {
    // vCPU 0 fails after some console output; vCPU 1 idles and must be kicked out and joined.
    let mut steps = uart_write("booting\n");
    steps.push(Step::Fail);
    let started = std::time::Instant::now();
    let (reason, output, _) = run_script(2, vec![(0, steps)], Some(20));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(output, "booting\n");
    let expected = format!(
        "vCPU 0 at PC {:#x}: stopped with an exit Aperture cannot handle: scripted failure",
        layout::RAM_BASE
    );
    assert_eq!(reason, StopReason::Error(expected));
    assert_eq!(reason.exit_status(), 1);
}

#[test]
fn a_vcpu_thread_that_panics_stops_the_vm_instead_of_hanging() {
    let started = std::time::Instant::now();
    let (reason, _, _) = run_script(2, vec![(1, vec![Step::Panic])], Some(20));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    match reason {
        StopReason::Error(message) => {
            assert!(message.starts_with("vCPU 1: its thread panicked"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn timeout_stops_an_idle_guest() {
    let (reason, _, _) = run_script(2, vec![], Some(1));
    assert_eq!(reason, StopReason::Timeout(Duration::from_secs(1)));
}

#[test]
fn devices_are_on_the_bus() {
    let steps = vec![
        Step::Read(layout::TEST_EXIT_BASE + 4, 4),     // magic
        Step::Read(layout::UART_BASE + 0xfe0, 4),      // PL011 periph id 0
        Step::Read(layout::RTC_BASE + 0xfe0, 4),       // PL031 periph id 0
        Step::Read(layout::GIC_DIST_BASE - 0x1000, 4), // nothing there
        Step::PowerOff,
    ];
    let (_, _, hv) = run_script(1, vec![(0, steps)], Some(20));
    let reads: Vec<Vec<u8>> =
        hv.observed.lock().unwrap().reads.iter().map(|r| r.1.clone()).collect();
    assert_eq!(reads[0], 0x4150_5458u32.to_le_bytes());
    assert_eq!(reads[1][0], 0x11);
    assert_eq!(reads[2][0], 0x31);
    assert_eq!(reads[3], [0; 4]);
}

/// Whether the device tree the boot vCPU was handed names a property `name`.
fn fdt_names(observed: &crate::hypervisor::fake::Observed, name: &str) -> bool {
    let needle = format!("{name}\0");
    observed.fdt.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn kaslr_seed_follows_e0pd_unless_the_option_says() {
    const E0PD: u64 = 1 << 60;
    for (mmfr2, kaslr, seeded) in [
        (0, Kaslr::Auto, false),
        (E0PD, Kaslr::Auto, true),
        (0, Kaslr::On, true),
        (E0PD, Kaslr::Off, false),
    ] {
        let hv = FakeHypervisor { id_aa64mmfr2: mmfr2, ..FakeHypervisor::default() };
        hv.scripts.lock().unwrap().insert(0, vec![Step::PowerOff]);
        let mut cfg = config(1);
        cfg.kaslr = kaslr;
        let reason = run_on(&hv, &cfg, Console::Capture(Box::new(Capture::default()))).unwrap();
        assert_eq!(reason, StopReason::PowerOff);
        let observed = hv.observed.lock().unwrap();
        assert!(fdt_names(&observed, "rng-seed"), "rng-seed is always given");
        assert_eq!(fdt_names(&observed, "kaslr-seed"), seeded, "{mmfr2:#x} {kaslr:?}");
    }
}

#[test]
fn bad_kernel_is_refused_before_any_vm_exists() {
    let hv = FakeHypervisor::default();
    let mut cfg = config(1);
    let path = std::env::temp_dir().join(format!("aperture-not-kernel-{}", std::process::id()));
    std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
    cfg.kernel = path.clone();
    let err = run_on(&hv, &cfg, Console::Capture(Box::new(Capture::default()))).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(err.to_string().starts_with(&format!("--kernel {}:", path.display())), "{err}");
}

#[test]
fn a_reboot_boots_again_in_the_same_vm_unless_no_reboot() {
    // Boot 1 writes "1" to the console, then resets; boot 2 (the same VM, vCPUs reset and
    // payloads reloaded) writes "2" and powers off. vCPU 1 idles through both.
    let mut steps = uart_write("1");
    steps.push(Step::Reset);
    steps.extend(uart_write("2"));
    steps.push(Step::PowerOff);
    let (reason, output, hv) =
        run_script_with(2, vec![(0, steps.clone())], |cfg| cfg.reboot = true);
    assert_eq!(reason, StopReason::PowerOff);
    assert_eq!(output, "12");
    let observed = hv.observed.lock().unwrap();
    assert_eq!(observed.vcpu_resets, 2, "both vCPUs reset once");
    assert_eq!(observed.gic_resets, 1);
    // The VM-wide reset comes first, with every vCPU stopped: Hypervisor.framework's turns
    // every vCPU off there, which after a vCPU had started the new boot would undo its CPU_ON.
    assert_eq!(observed.reset_order[0], "gic", "{:?}", observed.reset_order);
    // The reboot's payloads are in place (the fake samples them at set_boot_regs).
    assert_eq!(&observed.kernel_header[0x38..0x3c], b"ARM\x64");
    assert_eq!(observed.fdt_header[..4], [0xd0, 0x0d, 0xfe, 0xed]);
    drop(observed);

    // --no-reboot: the reset ends the VM.
    let (reason, output, hv) = run_script_with(1, vec![(0, steps)], |cfg| cfg.reboot = false);
    assert_eq!(reason, StopReason::Reset);
    assert_eq!(output, "1");
    assert_eq!(hv.observed.lock().unwrap().vcpu_resets, 0);
}

#[test]
fn a_reboot_loop_ends_the_vm() {
    let steps: Vec<Step> = std::iter::repeat_n(Step::Reset, 20).collect();
    let (reason, _, hv) = run_script_with(1, vec![(0, steps)], |cfg| cfg.reboot = true);
    assert_eq!(
        reason,
        StopReason::RebootLoop {
            reboots: reboot::MAX_QUICK_REBOOTS as u32 + 1,
            within: reboot::QUICK_REBOOT_WINDOW
        }
    );
    assert_eq!(hv.observed.lock().unwrap().vcpu_resets, reboot::MAX_QUICK_REBOOTS);
}
