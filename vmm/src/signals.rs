//! How the process ends when it is told to or when Aperture itself breaks.
//!
//! The handler only records the signal; the main thread's wait loop acts on it. SIGTERM
//! presses the guest's power key and gives it a grace period to power off (see
//! `vm::power`); SIGINT and SIGHUP (and SIGTERM with `--shutdown-grace 0`) become
//! [`StopReason::Signal`](crate::control::StopReason::Signal) at once. Either way the VM
//! stops through the normal path (vCPUs stopped and joined, assigned devices reset and
//! released, the terminal restored); a hard stop's exit status is 128 + the signal number. A
//! signal that arrives during setup stops the VM as soon as the guest starts.
//!
//! SIGUSR1 asks Aperture to plug assigned devices back in that the host took away and gave
//! back (see `assign::replug`); the VM keeps running. Only the main thread takes it: it is
//! blocked on every thread until the main thread waits for the stop ([`accept_replug`]), so
//! a vCPU or device worker never has a system call cut short by it.
//!
//! A panic is a bug in Aperture: [`install_panic_hook`] restores the terminal, says so on
//! stderr and aborts (release builds abort on panic anyway), so a failed device or vCPU
//! thread never leaves the VM hanging or the terminal raw. The kernel then closes the VFIO
//! files, which releases and resets assigned devices.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);
static REPLUG: AtomicBool = AtomicBool::new(false);

extern "C" fn record_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    PENDING.store(signal, Ordering::SeqCst);
}

extern "C" fn record_replug(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REPLUG.store(true, Ordering::SeqCst);
}

fn handle(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; zeroed means no flags and an empty mask.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    // SAFETY: `action` is initialized and the handler only touches an atomic.
    if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks (`true`) or unblocks SIGUSR1 on the calling thread.
fn mask_replug(block: bool) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; SIGUSR1 is a valid signal number.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
    }
    let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: `set` lives across the call; no old mask is asked for.
    match unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        error => Err(std::io::Error::from_raw_os_error(error)),
    }
}

/// Installs the handlers. Call it on the main thread before any other thread starts: it
/// blocks SIGUSR1 there, and the threads started later inherit that.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        handle(signal, record_signal)?;
    }
    mask_replug(true)?;
    handle(libc::SIGUSR1, record_replug)
}

/// Lets SIGUSR1 reach the calling thread (the main thread, once the VM's threads exist):
/// one that came earlier is taken now.
pub fn accept_replug() -> std::io::Result<()> {
    mask_replug(false)
}

/// Whether SIGUSR1 came since the last call (and forgets it).
pub fn take_replug() -> bool {
    REPLUG.swap(false, Ordering::SeqCst)
}

/// The signal received since the handlers were installed, if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Like [`pending`], and forgets the signal so the next one can be told apart.
pub fn take() -> Option<i32> {
    match PENDING.swap(0, Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// "SIGTERM" for 15 and so on, for the signals Aperture handles.
pub fn name(signal: i32) -> Option<&'static str> {
    match signal {
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => None,
    }
}

/// The stderr report of a panic: `aperture: internal error: ...`, with the thread and
/// source location, and a request to report it.
pub fn internal_error_message(
    payload: &(dyn std::any::Any + Send),
    location: Option<&std::panic::Location<'_>>,
    thread: Option<&str>,
) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    let place = location.map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
    let thread = thread.unwrap_or("an unnamed thread");
    format!(
        "aperture: internal error: {what} (thread {thread}{place}); this is a bug in Aperture, \
         please report it with the command line and the log (-vv); stopping"
    )
}

/// Installs the process's panic hook: restores the terminal, prints
/// [`internal_error_message`] (and a backtrace when `RUST_BACKTRACE` asks for one), then
/// aborts, whichever thread panicked.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        crate::console::restore_terminal();
        let thread = std::thread::current();
        eprintln!("{}", internal_error_message(info.payload(), info.location(), thread.name()));
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("{backtrace}");
        }
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks a child (so the process-wide handlers and pending signal do not touch the other
    /// tests) that installs the handlers and raises each signal; it exits 0 if every one
    /// was recorded instead of killing it.
    #[test]
    fn sigint_sigterm_sighup_and_sigusr1_are_recorded_not_fatal() {
        // SAFETY: the child only calls async-signal-safe functions (sigaction, raise, _exit)
        // and reads an atomic before _exit; it allocates nothing and takes no lock.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let mut code = 0;
            if install().is_err() {
                code = 10;
            }
            for (n, signal) in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT].into_iter().enumerate() {
                // SAFETY: raise delivers to this thread, whose handler only stores an atomic.
                unsafe { libc::raise(signal) };
                if code == 0 && pending() != Some(signal) {
                    code = 11 + n as i32;
                }
            }
            // SIGUSR1 waits, blocked, until the thread accepts it; it never ends the process.
            // SAFETY: as above.
            unsafe { libc::raise(libc::SIGUSR1) };
            if code == 0 && take_replug() {
                code = 20;
            }
            if code == 0 && (accept_replug().is_err() || !take_replug()) {
                code = 21;
            }
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child was killed by a signal or failed: wait status {status:#x}"
        );
    }

    #[test]
    fn names() {
        assert_eq!(name(1), Some("SIGHUP"));
        assert_eq!(name(2), Some("SIGINT"));
        assert_eq!(name(15), Some("SIGTERM"));
        assert_eq!(name(9), None);
    }

    #[test]
    fn internal_errors_say_what_where_and_to_report() {
        let location = std::panic::Location::caller();
        let message = internal_error_message(&"boom", Some(location), Some("virtio-blk0"));
        assert!(message.starts_with("aperture: internal error: boom (thread virtio-blk0 at "));
        assert!(message.contains("signals.rs:"), "{message}");
        assert!(message.contains("please report"), "{message}");
        let owned: Box<dyn std::any::Any + Send> = Box::new(String::from("index out of range"));
        let message = internal_error_message(owned.as_ref(), None, None);
        assert!(message.contains("index out of range (thread an unnamed thread)"), "{message}");
    }
}
