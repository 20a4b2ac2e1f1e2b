//! The `SIGSYS` handler: a refused system call ends Aperture with one line that names the call
//! and the thread. Everything here is async-signal-safe: no allocation, no locks it could
//! wait on, only `write`, `ioctl(TCSETS)` and `_exit`.

use std::cell::Cell;
use std::sync::Once;

/// The exit status after a refused call: Aperture failed (README, "Exit statuses").
pub(super) const EXIT_STATUS: i32 = crate::control::exit_status::VMM_ERROR;

const LABEL_LEN: usize = 32;

thread_local! {
    /// The confined thread's name, for the message (const-initialized plain data: readable
    /// from a signal handler).
    static LABEL: Cell<([u8; LABEL_LEN], usize)> = const { Cell::new(([0; LABEL_LEN], 0)) };
}

/// Records the calling thread's name for the message.
pub(super) fn set_thread_label(label: &str) {
    let mut bytes = [0u8; LABEL_LEN];
    let len = label.len().min(LABEL_LEN);
    bytes[..len].copy_from_slice(&label.as_bytes()[..len]);
    LABEL.with(|cell| cell.set((bytes, len)));
}

/// The SIGSYS part of `siginfo_t` (`_sigsys` in the kernel's union; the same layout on the
/// 64-bit targets): after signo, errno, code and padding, the call address, the system call
/// number and the audit architecture.
#[repr(C)]
#[allow(dead_code)] // Read through a pointer cast; only `syscall` is used.
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A message assembled on the stack.
struct Message {
    bytes: [u8; 512],
    len: usize,
}

impl Message {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_number(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

/// Formats the line the handler prints (without the trailing newline's terminal fix-ups).
fn format_refusal(nr: i64, thread: &[u8]) -> Message {
    let mut message = Message { bytes: [0; 512], len: 0 };
    message.push(b"aperture: seccomp refused syscall ");
    message.push_number(nr);
    if let Some(name) = syscall_name(nr) {
        message.push(b" (");
        message.push(name.as_bytes());
        message.push(b")");
    }
    message.push(b" on thread ");
    message.push(if thread.is_empty() { b"?" } else { thread });
    message.push(b"; rerun with --no-seccomp and report it\n");
    message
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, and for a seccomp SIGSYS
    // its union holds the _sigsys fields that SigsysInfo lays out.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let (label, len) = LABEL.try_with(Cell::get).unwrap_or(([0; LABEL_LEN], 0));
    let message = format_refusal(i64::from(nr), &label[..len]);
    crate::console::restore_terminal_from_signal_handler();
    // SAFETY: write and _exit are async-signal-safe; the buffer lives across the call.
    unsafe {
        libc::write(libc::STDERR_FILENO, message.bytes.as_ptr().cast(), message.len);
        libc::_exit(EXIT_STATUS);
    }
}

/// Installs the process's SIGSYS handler, once.
pub(super) fn install_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: sigaction is plain data; zeroed means an empty mask and no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialized and the handler is async-signal-safe.
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            result = Err(std::io::Error::last_os_error());
        }
    });
    result
}

macro_rules! syscall_names {
    ($($name:ident),* $(,)?) => {
        &[$((libc::$name, stringify!($name)),)*]
    };
}

/// System calls by number, for the message: those in the allowlists and those a compromised
/// or buggy thread is likely to try.
const NAMES: &[(libc::c_long, &str)] = syscall_names![
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_close,
    SYS_close_range,
    SYS_lseek,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_statfs,
    SYS_fstatfs,
    SYS_openat,
    SYS_openat2,
    SYS_mmap,
    SYS_mprotect,
    SYS_munmap,
    SYS_mremap,
    SYS_madvise,
    SYS_brk,
    SYS_msync,
    SYS_mincore,
    SYS_mlock,
    SYS_munlock,
    SYS_mlockall,
    SYS_munlockall,
    SYS_mlock2,
    SYS_memfd_create,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_rt_sigtimedwait,
    SYS_rt_sigqueueinfo,
    SYS_sigaltstack,
    SYS_ioctl,
    SYS_fcntl,
    SYS_flock,
    SYS_dup,
    SYS_dup3,
    SYS_pipe2,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_sched_setaffinity,
    SYS_sched_setscheduler,
    SYS_sched_getscheduler,
    SYS_sched_setattr,
    SYS_getcpu,
    SYS_nanosleep,
    SYS_clock_gettime,
    SYS_clock_getres,
    SYS_clock_nanosleep,
    SYS_clock_settime,
    SYS_gettimeofday,
    SYS_settimeofday,
    SYS_getitimer,
    SYS_setitimer,
    SYS_timer_create,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_getpid,
    SYS_getppid,
    SYS_gettid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_setuid,
    SYS_setgid,
    SYS_setreuid,
    SYS_setregid,
    SYS_setresuid,
    SYS_setresgid,
    SYS_setgroups,
    SYS_getgroups,
    SYS_setsid,
    SYS_setpgid,
    SYS_getpgid,
    SYS_capget,
    SYS_capset,
    SYS_prctl,
    SYS_seccomp,
    SYS_personality,
    SYS_getrlimit,
    SYS_setrlimit,
    SYS_prlimit64,
    SYS_getrusage,
    SYS_sysinfo,
    SYS_times,
    SYS_uname,
    SYS_umask,
    SYS_getcwd,
    SYS_chdir,
    SYS_fchdir,
    SYS_chroot,
    SYS_pivot_root,
    SYS_mount,
    SYS_umount2,
    SYS_unshare,
    SYS_setns,
    SYS_clone,
    SYS_clone3,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_wait4,
    SYS_waitid,
    SYS_kill,
    SYS_tkill,
    SYS_tgkill,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pidfd_getfd,
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_kcmp,
    SYS_futex,
    SYS_set_robust_list,
    SYS_get_robust_list,
    SYS_set_tid_address,
    SYS_rseq,
    SYS_membarrier,
    SYS_restart_syscall,
    SYS_getrandom,
    SYS_eventfd2,
    SYS_signalfd4,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_ppoll,
    SYS_pselect6,
    SYS_io_setup,
    SYS_io_submit,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_socket,
    SYS_socketpair,
    SYS_connect,
    SYS_accept,
    SYS_accept4,
    SYS_bind,
    SYS_listen,
    SYS_getsockname,
    SYS_getpeername,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_sendmmsg,
    SYS_recvmmsg,
    SYS_shutdown,
    SYS_setsockopt,
    SYS_getsockopt,
    SYS_fsync,
    SYS_fdatasync,
    SYS_sync,
    SYS_syncfs,
    SYS_sync_file_range,
    SYS_truncate,
    SYS_ftruncate,
    SYS_fallocate,
    SYS_fadvise64,
    SYS_getdents64,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_unlinkat,
    SYS_renameat2,
    SYS_linkat,
    SYS_symlinkat,
    SYS_readlinkat,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_utimensat,
    SYS_splice,
    SYS_tee,
    SYS_vmsplice,
    SYS_sendfile,
    SYS_copy_file_range,
    SYS_inotify_init1,
    SYS_fanotify_init,
    SYS_name_to_handle_at,
    SYS_open_by_handle_at,
    SYS_perf_event_open,
    SYS_bpf,
    SYS_userfaultfd,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_kexec_load,
    SYS_reboot,
    SYS_swapon,
    SYS_swapoff,
    SYS_sethostname,
    SYS_setdomainname,
    SYS_syslog,
    SYS_acct,
    SYS_quotactl,
    SYS_add_key,
    SYS_request_key,
    SYS_keyctl,
    SYS_landlock_create_ruleset,
    SYS_move_pages,
    SYS_mbind,
    SYS_set_mempolicy,
    SYS_get_mempolicy,
    SYS_migrate_pages,
    SYS_process_madvise,
    SYS_shmget,
    SYS_shmat,
    SYS_shmdt,
    SYS_shmctl,
    SYS_semget,
    SYS_semop,
    SYS_semctl,
    SYS_msgget,
    SYS_msgsnd,
    SYS_msgrcv,
    SYS_msgctl,
    SYS_mq_open,
    SYS_getpriority,
    SYS_setpriority,
];

/// Calls only x86_64 has (arm64 uses the *at and generic forms).
#[cfg(target_arch = "x86_64")]
const ARCH_NAMES: &[(libc::c_long, &str)] = syscall_names![
    SYS_open,
    SYS_creat,
    SYS_stat,
    SYS_lstat,
    SYS_access,
    SYS_poll,
    SYS_select,
    SYS_pipe,
    SYS_dup2,
    SYS_fork,
    SYS_vfork,
    SYS_mkdir,
    SYS_rmdir,
    SYS_unlink,
    SYS_rename,
    SYS_readlink,
    SYS_chmod,
    SYS_chown,
    SYS_epoll_create,
    SYS_epoll_wait,
    SYS_eventfd,
    SYS_signalfd,
    SYS_inotify_init,
    SYS_arch_prctl,
    SYS_iopl,
    SYS_ioperm,
    SYS_alarm,
    SYS_pause,
    SYS_time,
    SYS_getdents,
    SYS_utimes,
    SYS_modify_ldt,
];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_NAMES: &[(libc::c_long, &str)] = &[];

/// The name of system call `nr` on this architecture, without the `SYS_` prefix.
pub(super) fn syscall_name(nr: i64) -> Option<&'static str> {
    NAMES
        .iter()
        .chain(ARCH_NAMES)
        .find(|(number, _)| *number == nr)
        .map(|(_, name)| name.trim_start_matches("SYS_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_call_and_the_thread() {
        let message = format_refusal(libc::SYS_socket, b"vcpu0");
        let text = std::str::from_utf8(&message.bytes[..message.len]).unwrap();
        assert_eq!(
            text,
            format!(
                "aperture: seccomp refused syscall {} (socket) on thread vcpu0; rerun with \
                 --no-seccomp and report it\n",
                libc::SYS_socket
            )
        );
        let unknown = format_refusal(100_000, b"");
        let text = std::str::from_utf8(&unknown.bytes[..unknown.len]).unwrap();
        assert!(
            text.starts_with("aperture: seccomp refused syscall 100000 on thread ?;"),
            "{text}"
        );
    }

    #[test]
    fn names_are_unique_per_number() {
        let all: Vec<_> = NAMES.iter().chain(ARCH_NAMES).collect();
        for (i, (nr, name)) in all.iter().enumerate() {
            assert!(
                all[i + 1..].iter().all(|(other, _)| other != nr),
                "{name} ({nr}) is listed twice"
            );
        }
        assert_eq!(syscall_name(libc::SYS_ioctl), Some("ioctl"));
    }
}
