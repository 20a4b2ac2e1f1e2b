//! macOS calls the backend needs besides Hypervisor.framework.

/// Gives the calling thread the user-interactive QoS class: vCPU threads at the default class
/// were seen to run with large performance swings (the scheduler parks them on efficiency
/// cores and lowers their priority).
pub fn set_thread_qos_user_interactive() -> std::io::Result<()> {
    // SAFETY: changes only the calling thread's QoS class; no pointers involved.
    let rc = unsafe {
        libc::pthread_set_qos_class_self_np(libc::qos_class_t::QOS_CLASS_USER_INTERACTIVE, 0)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

// libc deprecates its declaration in favour of the mach2 crate; one function does not warrant
// a dependency.
extern "C" {
    fn mach_absolute_time() -> u64;
}

/// The host's counter (`mach_absolute_time`): CNTVCT_EL0 ticks on Apple Silicon, the clock the
/// guest's virtual counter runs on (minus the vCPU's vtimer offset, which Hypervisor.framework
/// counts from this clock).
pub fn host_counter() -> u64 {
    // SAFETY: no arguments, no side effects.
    unsafe { mach_absolute_time() }
}

/// The counter frequency in Hz (CNTFRQ_EL0, 24 MHz on Apple Silicon); EL0 may read it.
pub fn counter_frequency() -> u64 {
    let freq: u64;
    // SAFETY: reads a system register that EL0 may read; no memory or flags touched.
    unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) freq, options(nomem, nostack)) };
    freq
}
