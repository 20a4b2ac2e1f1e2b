//! Reboot in place: a guest reboot (PSCI SYSTEM_RESET) boots the VM again in this process.
//!
//! The hypervisor VM is kept, not recreated: its memory slots, irqfds and ioeventfds, the
//! VFIO container with guest RAM pinned and mapped for DMA, and the assigned devices' open
//! files all stay, so the next boot starts at once and nothing has to be registered twice
//! (recreating the VM would mean redoing every memory slot and irqfd route, and with the
//! process confined by seccomp, creating a VM is not even allowed any more). What a power
//! cycle resets is reset instead: every vCPU (`KVM_ARM_VCPU_INIT` again, or on
//! Hypervisor.framework a new vCPU in place of the old: all registers and the timer back to
//! boot state), the interrupt controller (KVM's ITS, Hypervisor.framework's whole GIC), the
//! emulated devices and PCI hierarchy
//! ([`devices::pci::PciRoot::system_reset`]: virtio back to power-on, BARs unplaced, buses
//! unnumbered; assigned functions reset through the host, traced `when=reboot`), and guest
//! RAM (zeroed), into which the kernel, initrd and a new device tree (new seeds) are loaded.
//!
//! A guest that reboots again and again (a kernel panicking during boot with the default
//! `panic=-1`) would spin forever: [`RebootGuard`] ends the VM with exit status 3 after
//! [`MAX_QUICK_REBOOTS`] reboots within [`QUICK_REBOOT_WINDOW`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch::loader::BootPlan;
use arch::regs::boot_cpu_regs;
use devices::pci::PciRoot;
use devices::Pl061;
use firmware::FdtConfig;
use log::{info, warn};

use super::power::{self, PowerKey, StopWaiter};
use super::vcpus::RunningVcpus;
use super::{host_random, VmError};
use crate::control::{StopReason, VmControl};
use crate::hypervisor::Vm;
use crate::memory::GuestRam;

/// More reboots than this within [`QUICK_REBOOT_WINDOW`] end the VM.
pub const MAX_QUICK_REBOOTS: usize = 5;
/// See [`MAX_QUICK_REBOOTS`].
pub const QUICK_REBOOT_WINDOW: Duration = Duration::from_secs(120);

/// Counts recent reboots to stop a reboot loop.
#[derive(Debug, Default)]
pub struct RebootGuard {
    recent: VecDeque<Instant>,
}

impl RebootGuard {
    /// Records a reboot at `now`; the stop reason if it is one too many.
    pub fn record(&mut self, now: Instant) -> Option<StopReason> {
        while self.recent.front().is_some_and(|&t| now.duration_since(t) > QUICK_REBOOT_WINDOW) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let reboots = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        (self.recent.len() > MAX_QUICK_REBOOTS)
            .then_some(StopReason::RebootLoop { reboots, within: QUICK_REBOOT_WINDOW })
    }
}

/// What each boot loads into RAM: the kernel, the initrd and a device tree.
pub(super) struct BootPayload {
    pub(super) kernel: super::images::KernelFile,
    pub(super) initrd: Option<super::images::InitrdFile>,
    pub(super) plan: BootPlan,
    /// The device tree's contents; its seeds are renewed for every boot.
    pub(super) fdt: FdtConfig,
}

impl BootPayload {
    /// Writes the kernel, initrd and a fresh device tree into RAM.
    pub(super) fn load(&mut self, ram: &GuestRam) -> Result<(), VmError> {
        super::images::load_images(ram, &self.plan, &mut self.kernel, self.initrd.as_mut())?;
        self.load_device_tree(ram)
    }

    /// Writes a fresh device tree (new seeds) into RAM.
    pub(super) fn load_device_tree(&mut self, ram: &GuestRam) -> Result<(), VmError> {
        self.fdt.rng_seed = host_random::<64>();
        if self.fdt.kaslr_seed.is_some() {
            self.fdt.kaslr_seed = Some(u64::from_le_bytes(host_random::<8>()));
        }
        let fdt = firmware::create_fdt(&self.fdt)?;
        ram.write("device tree", self.plan.fdt.base, &fdt)?;
        Ok(())
    }
}

/// What a reboot in place resets and reloads.
pub(super) struct Machine<'a> {
    pub(super) vm: &'a Arc<dyn Vm>,
    pub(super) ram: &'a GuestRam,
    pub(super) pci: &'a PciRoot,
    pub(super) gpio: &'a Arc<Mutex<Pl061>>,
    /// Whether RAM is pinned for device DMA (assigned devices).
    pub(super) pinned: bool,
    pub(super) payload: BootPayload,
}

impl Machine<'_> {
    /// Resets the stopped machine and loads the next boot.
    fn reset(&mut self) -> Result<(), VmError> {
        let ms = |since: Instant| since.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        self.pci.system_reset();
        self.gpio.lock().unwrap_or_else(|e| e.into_inner()).reset();
        self.vm.reset_gic()?;
        let devices = ms(start);
        let start = Instant::now();
        self.ram.clear(self.pinned);
        let ram = ms(start);
        let start = Instant::now();
        self.payload.load(self.ram)?;
        info!(
            "reboot: devices reset in {devices:.1} ms, RAM cleared in {ram:.1} ms ({}), payloads \
             loaded in {:.1} ms",
            if self.pinned { "zeroed in place: pinned for DMA" } else { "pages dropped" },
            ms(start)
        );
        Ok(())
    }
}

/// Runs boots until the VM stops for good: a stop other than a reset, a reset with
/// `--no-reboot` (`reboot` false), a reboot loop, or a reboot that cannot be done.
pub(super) fn run_boots(
    machine: &mut Machine<'_>,
    vcpus: &RunningVcpus,
    control: &VmControl,
    waiter: &mut StopWaiter,
    key: &PowerKey,
    reboot: bool,
    every_tick: &mut dyn FnMut(),
) -> StopReason {
    let mut guard = RebootGuard::default();
    loop {
        let reason = power::wait_for_stop(control, waiter, key, every_tick);
        if reason != StopReason::Reset || !reboot {
            return reason;
        }
        let since = Instant::now();
        if let Some(stop) = guard.record(since) {
            return stop;
        }
        info!("the guest rebooted: booting it again in place (--no-reboot ends the VM instead)");
        if !vcpus.pause() {
            return StopReason::Error("a vCPU did not stop for the guest's reboot".into());
        }
        if let Err(e) = machine.reset() {
            warn!("could not reboot in place ({e}); ending the VM as --no-reboot would");
            return StopReason::Reset;
        }
        info!("reset and reloaded for the reboot in {:.1} ms", since.elapsed().as_secs_f64() * 1e3);
        control.rearm();
        vcpus.start(boot_cpu_regs(&machine.payload.plan), Some(since));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_loop_is_stopped_and_slow_reboots_are_not() {
        let t0 = Instant::now();
        let mut guard = RebootGuard::default();
        for i in 0..MAX_QUICK_REBOOTS as u64 {
            assert_eq!(guard.record(t0 + Duration::from_secs(i)), None);
        }
        let stop = guard.record(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(stop, StopReason::RebootLoop { reboots: 6, within: QUICK_REBOOT_WINDOW });
        assert_eq!(stop.exit_status(), 3);
        // One reboot every few minutes goes on for ever.
        let mut guard = RebootGuard::default();
        for i in 0..20u64 {
            assert_eq!(guard.record(t0 + QUICK_REBOOT_WINDOW * 2 / 5 * i as u32), None, "{i}");
        }
    }
}
