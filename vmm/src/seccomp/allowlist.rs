//! The allowlists: which system calls each kind of thread may make, and why.
//!
//! Numbers come from `libc::SYS_*` of the target, so the same table builds the arm64 filters
//! Aperture runs with and the x86_64 ones its unit tests run with. Where it is unclear whether
//! a call can happen at run time, it is allowed and the comment says so: a missing entry stops
//! the VM (with a message naming the call), an extra one only widens the sandbox a little.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::requests::*;
use super::ThreadKind;

/// The system calls a thread may make: each either always, or when one of its rules holds.
#[derive(Debug, Default)]
pub(super) struct Allowlist {
    calls: BTreeMap<i64, Option<Vec<SeccompRule>>>,
}

type Result<T> = std::result::Result<T, BackendError>;

/// Argument `index` (as a 32-bit value) equals `value`.
fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// Argument `index` (64-bit) equals `value`.
fn arg_eq64(index: u8, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
}

/// The bits `mask` of argument `index` (32-bit) equal `value`.
fn arg_masked(index: u8, mask: u64, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(mask), value)
}

impl Allowlist {
    /// Allows `nr` with any arguments.
    fn always(&mut self, nr: libc::c_long) {
        self.calls.insert(nr, None);
    }

    /// Allows `nr` when `condition` holds (or any other rule given for it).
    fn when(&mut self, nr: libc::c_long, condition: SeccompCondition) -> Result<()> {
        let rule = SeccompRule::new(vec![condition])?;
        // None: already allowed with any arguments.
        if let Some(rules) = self.calls.entry(nr).or_insert_with(|| Some(Vec::new())) {
            rules.push(rule);
        }
        Ok(())
    }

    /// Allows these ioctl requests (on any descriptor).
    fn ioctls(&mut self, requests: &[u64]) -> Result<()> {
        for &request in requests {
            self.when(libc::SYS_ioctl, arg_eq(1, request)?)?;
        }
        Ok(())
    }

    /// Whether `nr` is allowed in some form.
    #[cfg(test)]
    pub(super) fn allows(&self, nr: libc::c_long) -> bool {
        self.calls.contains_key(&nr)
    }

    /// The rules in seccompiler's form (an empty rule list matches always).
    pub(super) fn into_rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.calls.into_iter().map(|(nr, rules)| (nr, rules.unwrap_or_default())).collect()
    }
}

/// How `clone3` is answered on a thread of `kind`: on a vCPU thread ENOSYS, so that glibc's
/// pthread_create falls back to `clone`, whose flags the filter checks (threads yes,
/// processes no); elsewhere EPERM, so that starting a thread fails with an error Aperture
/// reports. (Refusing it would kill the process without the message: glibc blocks all
/// signals, SIGSYS included, around the call.)
pub(super) fn clone3_errno(kind: ThreadKind) -> i32 {
    match kind {
        ThreadKind::Vcpu => libc::ENOSYS,
        ThreadKind::DeviceWorker
        | ThreadKind::VhostNet
        | ThreadKind::Stdin
        | ThreadKind::Control
        | ThreadKind::Replug => libc::EPERM,
    }
}

/// Opening a file is answered with this error: glibc opens files lazily on its own (e.g.
/// `/proc/sys/vm/overcommit_memory` when a thread's malloc heap shrinks) and copes with a
/// failure; Aperture's own code reports it as an ordinary error.
pub(super) const OPEN_ERRNO: i32 = libc::EACCES;

/// The calls that open files.
pub(super) const OPEN_CALLS: &[libc::c_long] = &[
    libc::SYS_openat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
];

/// What every thread needs: the Rust runtime and glibc (memory, locks, time, signals,
/// thread exit), logging to stderr, and putting the terminal back.
fn common(list: &mut Allowlist, pid: u32) -> Result<()> {
    // malloc (brk for the main arena, mmap/munmap/mremap/madvise for the others and for
    // large blocks), thread stacks and their guard pages. Never executable memory: nothing
    // in Aperture maps code at run time.
    list.always(libc::SYS_brk);
    let not_exec = || arg_masked(2, libc::PROT_EXEC as u64, 0);
    list.when(libc::SYS_mmap, not_exec()?)?;
    list.when(libc::SYS_mprotect, not_exec()?)?;
    list.always(libc::SYS_munmap);
    list.always(libc::SYS_mremap);
    list.always(libc::SYS_madvise);
    // Mutexes, condition variables, channels, joins.
    list.always(libc::SYS_futex);
    list.always(libc::SYS_sched_yield);
    // glibc's malloc sizes its arena count by the CPUs the process may use.
    list.always(libc::SYS_sched_getaffinity);
    // Instant/SystemTime (the vDSO falls back to the call), sleeps and timed waits.
    list.always(libc::SYS_clock_gettime);
    list.always(libc::SYS_clock_nanosleep);
    list.always(libc::SYS_nanosleep);
    // A signal interrupted a sleep: the kernel restarts it through this call.
    list.always(libc::SYS_restart_syscall);
    // Signal handlers (SIGINT/SIGTERM/SIGHUP recorders, the vCPU kick, SIGSYS) return
    // through rt_sigreturn; glibc blocks signals around thread creation, exit and
    // pthread_kill; std's stack-overflow handler uses an alternate stack, set up and torn
    // down per thread, and resets SIGSEGV to the default on a real fault (as abort does).
    list.always(libc::SYS_rt_sigreturn);
    list.always(libc::SYS_rt_sigprocmask);
    list.always(libc::SYS_rt_sigaction);
    list.always(libc::SYS_sigaltstack);
    // Logging (env_logger to stderr), the console (stdout), the PCI trace, eventfd signals.
    list.always(libc::SYS_write);
    list.always(libc::SYS_writev);
    // Reads on descriptors the VMM opened (stdin, /dev/urandom, eventfds).
    list.always(libc::SYS_read);
    list.always(libc::SYS_readv);
    // Dropping files, eventfds and device descriptors; debug builds of std first check
    // that the descriptor is open (F_GETFD).
    list.always(libc::SYS_close);
    list.when(libc::SYS_fcntl, arg_eq(1, libc::F_GETFD as u64)?)?;
    // std's File::metadata and read_to_end size hints (not seen at run time; stat reveals
    // no more than the descriptors already do).
    list.always(libc::SYS_fstat);
    list.always(libc::SYS_newfstatat);
    list.always(libc::SYS_statx);
    // HashMap seeds (std, per thread, on first use) and glibc's malloc.
    list.always(libc::SYS_getrandom);
    // pthread_kill and abort (a panic with panic=abort) signal threads of this process
    // only: the vCPU kick, SIGABRT.
    list.always(libc::SYS_getpid);
    list.always(libc::SYS_gettid);
    list.when(libc::SYS_tgkill, arg_eq64(0, u64::from(pid))?)?;
    // A thread returns (exit) or the process ends (exit_group, also from the SIGSYS handler).
    list.always(libc::SYS_exit);
    list.always(libc::SYS_exit_group);
    // Answered OPEN_ERRNO by the errno filter installed with this one: nothing is opened.
    for &nr in OPEN_CALLS {
        list.always(nr);
    }
    // Answered by `clone3_errno` (a vCPU thread then creates threads with clone).
    list.always(libc::SYS_clone3);
    // isatty, and putting the terminal back from the panic hook or the SIGSYS handler on
    // whichever thread that runs.
    list.ioctls(&[TCGETS, TCSETS])?;
    Ok(())
}

/// What a vCPU thread needs on top of [`common`].
fn vcpu(list: &mut Allowlist) -> Result<()> {
    // The virtio workers a vCPU thread starts inherit its filter (their own only narrows
    // it): everything they do must pass here too.
    vhost_net(list)?;
    list.ioctls(&[
        // Running the guest.
        KVM_RUN(),
        // The PC of a vCPU stopped by a timeout or a signal, for the log.
        KVM_GET_ONE_REG(),
        // The UART's and the RTC's SPIs.
        KVM_IRQ_LINE(),
        // virtio MSI-X sent from the vCPU thread (config changes, a pending vector unmasked).
        KVM_SIGNAL_MSI(),
        // The guest programs an assigned device's MSI-X, MSI or INTx, or a virtio device's
        // MSI-X: irqfds and their GSI routes, and the eventfds VFIO signals.
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        VFIO_DEVICE_SET_IRQS(),
        // The guest moves an assigned device's BAR: its mmapped pieces move with it.
        KVM_SET_USER_MEMORY_REGION(),
        // The guest moves a virtio device's BAR: its queues' notify ioeventfds move with it.
        KVM_IOEVENTFD(),
        // The aperture-dma device maps and unmaps the guest's DMA buffers.
        VFIO_IOMMU_MAP_DMA(),
        VFIO_IOMMU_UNMAP_DMA(),
        // A guest FLR or secondary bus reset resets the device through the host: its own
        // reset, else a hot reset of its slot (all functions on it are the VM's own).
        VFIO_DEVICE_RESET(),
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
        VFIO_DEVICE_PCI_HOT_RESET(),
        // A reboot in place: the vCPU reset to its boot state, and the boot registers.
        KVM_ARM_VCPU_INIT(),
        KVM_SET_ONE_REG(),
    ])?;
    // An assigned device's configuration space and trapped BAR pages (MSI-X table, PBA):
    // reads and writes at offsets of the VFIO device file (pread64/pwrite64, listed with
    // the workers' calls above).
    // New irqfds when the guest enables more MSI-X vectors.
    list.always(libc::SYS_eventfd2);
    // virtio devices start their worker threads when the driver sets DRIVER_OK, on the vCPU
    // thread: thread creation (clone3 is answered ENOSYS, see `clone3_errno`; clone must
    // make a thread, not a process), the new thread's setup before it confines itself
    // (robust futex list, restartable sequences, its name), and the worker confining itself
    // (no_new_privs, a seccomp filter on top of this one).
    list.when(
        libc::SYS_clone,
        arg_masked(0, libc::CLONE_THREAD as u64, libc::CLONE_THREAD as u64)?,
    )?;
    list.always(libc::SYS_set_robust_list);
    list.always(libc::SYS_rseq);
    list.when(libc::SYS_prctl, arg_eq(0, libc::PR_SET_NAME as u64)?)?;
    list.when(libc::SYS_prctl, arg_eq(0, libc::PR_SET_NO_NEW_PRIVS as u64)?)?;
    list.when(libc::SYS_seccomp, arg_eq(0, u64::from(libc::SECCOMP_SET_MODE_FILTER))?)?;
    Ok(())
}

/// What a device worker needs on top of [`common`] (and within the vCPU filter it inherits).
fn device_worker(list: &mut Allowlist) -> Result<()> {
    // Used-buffer notifications: a write to the vector's irqfd (`write`, in `common`), or
    // KVM_SIGNAL_MSI for a vector whose irqfd route could not be set.
    list.ioctls(&[KVM_SIGNAL_MSI()])?;
    // virtio-blk: the image at request offsets, and flushes. virtio-rng reads /dev/urandom
    // (read, in `common`).
    list.always(libc::SYS_pread64);
    list.always(libc::SYS_pwrite64);
    list.always(libc::SYS_preadv);
    list.always(libc::SYS_pwritev);
    list.always(libc::SYS_fdatasync);
    list.always(libc::SYS_fsync);
    // virtio-blk DISCARD and WRITE_ZEROES: punching holes and zeroing ranges of the image.
    list.always(libc::SYS_fallocate);
    // virtio-net: a tap takes the receive offloads the guest accepted when the worker
    // starts; the socket backend waits for a peer that is slow to read (poll).
    list.ioctls(&[crate::net::TUNSETOFFLOAD])?;
    list.always(libc::SYS_ppoll);
    #[cfg(target_arch = "x86_64")]
    list.always(libc::SYS_poll);
    // The worker's event loop (event-manager on epoll), waiting on its queue's eventfd;
    // created and filled on the vCPU thread that starts the worker or on the worker itself.
    list.always(libc::SYS_epoll_create1);
    list.always(libc::SYS_epoll_ctl);
    list.always(libc::SYS_epoll_pwait);
    #[cfg(target_arch = "x86_64")]
    list.always(libc::SYS_epoll_wait);
    Ok(())
}

/// What a vhost-net worker needs on top of a device worker's calls: handing its NIC's queues
/// to the host kernel at DRIVER_OK (features, guest RAM, rings, the tap) and taking them back
/// at reset (detaching the tap, reading where the rings stopped). `/dev/vhost-net` was opened
/// and owned (VHOST_SET_OWNER, VHOST_GET_FEATURES) before the sandbox.
fn vhost_net(list: &mut Allowlist) -> Result<()> {
    device_worker(list)?;
    list.ioctls(&devices::virtio::net::vhost::VHOST_IOCTLS)
}

/// What the stdin thread needs on top of [`common`] (read on stdin, write for `Ctrl-A h`).
fn stdin(list: &mut Allowlist) -> Result<()> {
    // Input raises the UART's SPI, after unmapping the UART's register page (read without
    // exits while nothing is received, see `crate::uart_page`).
    list.ioctls(&[KVM_IRQ_LINE(), KVM_SET_USER_MEMORY_REGION()])
}

/// What the control (main) thread needs on top of [`common`]: waiting, stopping the vCPUs
/// (tgkill, in `common`), taking away assigned devices the host removed (the same calls as
/// the teardown, and the hot-plug MSI), tearing down the VM and exiting.
fn control(list: &mut Allowlist) -> Result<()> {
    list.ioctls(&[
        // Assigned devices at exit: interrupts off, reset (of the function, or a hot reset of
        // its slot where it has none), guest RAM and DMA windows unmapped.
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_RESET(),
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
        VFIO_DEVICE_PCI_HOT_RESET(),
        VFIO_IOMMU_UNMAP_DMA(),
        // Their irqfds disconnected and GSI routes released as they are dropped.
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        // Not seen at teardown today (memory slots go with the VM descriptor); allowed in
        // case a BAR mapping is removed as the devices are dropped.
        KVM_SET_USER_MEMORY_REGION(),
        // A device lowering its interrupt line as it is dropped (not seen; harmless).
        KVM_IRQ_LINE(),
        // A reboot in place: the ITS reset, and the virtio doorbells' ioeventfds removed as
        // the devices' BARs go back to unplaced.
        KVM_SET_DEVICE_ATTR(),
        KVM_IOEVENTFD(),
        // An assigned device the host took away: its root port's hot-plug interrupt tells
        // the guest (sent from this thread, which handles the loss).
        KVM_SIGNAL_MSI(),
    ])?;
    // A reboot in place loads the kernel and initrd from their files again, from the start.
    list.always(libc::SYS_lseek);
    // The peak-RSS log line at exit.
    list.always(libc::SYS_getrusage);
    Ok(())
}

/// What the re-plug thread needs on top of [`common`]: opening an assigned device again
/// through the start's pipeline (sysfs checks, the VFIO container, group and device, reset,
/// guest RAM mapped for DMA, BAR pieces mmapped, the loss eventfds, INTx irqfds) and putting
/// it behind its root port (the hot-plug MSI); what the control thread does with devices
/// too, for a re-plug that fails half-way and lets go of them.
fn replug(list: &mut Allowlist) -> Result<()> {
    control(list)?;
    // Every VFIO ioctl (type ';'): the container (API version, extensions, IOMMU type, DMA
    // map and unmap, IOMMU info), the group (status, set container, get device fd) and the
    // device (info, regions, interrupts, resets). Only this thread opens VFIO files, and
    // VFIO is what it is for.
    list.when(libc::SYS_ioctl, arg_masked(1, 0xff00, u64::from(b';') << 8)?)?;
    // The device's configuration space through its VFIO file.
    list.always(libc::SYS_pread64);
    list.always(libc::SYS_pwrite64);
    // sysfs: the driver and IOMMU group links, the group's member directory.
    list.always(libc::SYS_readlinkat);
    #[cfg(target_arch = "x86_64")]
    list.always(libc::SYS_readlink);
    list.always(libc::SYS_getdents64);
    // RLIMIT_MEMLOCK against the RAM the DMA mapping pins.
    list.always(libc::SYS_prlimit64);
    // The device request and error eventfds, and the INTx level irqfd.
    list.always(libc::SYS_eventfd2);
    // Opening files (sysfs, /proc/self/status, /dev/vfio/*) is allowed by `common` and not
    // answered EACCES on this thread (see `super::linux::programs`).
    Ok(())
}

/// The allowlist of `kind`, for the process `pid` (the only one its threads may signal).
pub(super) fn allowlist(kind: ThreadKind, pid: u32) -> Result<Allowlist> {
    let mut list = Allowlist::default();
    common(&mut list, pid)?;
    match kind {
        ThreadKind::Vcpu => vcpu(&mut list)?,
        ThreadKind::DeviceWorker => device_worker(&mut list)?,
        ThreadKind::VhostNet => vhost_net(&mut list)?,
        ThreadKind::Stdin => stdin(&mut list)?,
        ThreadKind::Control => control(&mut list)?,
        ThreadKind::Replug => replug(&mut list)?,
    }
    Ok(list)
}
