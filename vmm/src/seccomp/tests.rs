//! The filters, built for this host's architecture, and run: a confined thread cannot be set
//! free, so each case runs in a child process (this test binary again, running only
//! `child_entry` with the case in the environment) and the parent checks how it ended.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::{Command, Output};
use std::time::Duration;

use super::allowlist::allowlist;
use super::linux::programs;
use super::requests::*;
use super::sigsys::EXIT_STATUS;
use super::{confine, ThreadKind};

const CASE_VAR: &str = "APERTURE_SECCOMP_CASE";

/// Runs `case` in a child process and returns how it ended.
fn run_case(case: &str) -> Output {
    let test = format!("{}::child_entry", module_path!().trim_start_matches("vmm::"));
    Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, case)
        .output()
        .unwrap()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Checks that `case` was ended by the SIGSYS handler for `call` on a thread named `thread`
/// (any thread when None).
fn assert_refused(case: &str, call: libc::c_long, name: &str, thread: Option<&str>) -> String {
    let output = run_case(case);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(EXIT_STATUS), "{case}: {stderr}");
    let expected = format!("aperture: seccomp refused syscall {call} ({name}) on thread ");
    let line = stderr.lines().find(|l| l.starts_with(&expected));
    let line = line.unwrap_or_else(|| panic!("{case}: no `{expected}` line in:\n{stderr}"));
    assert!(line.ends_with("; rerun with --no-seccomp and report it"), "{line}");
    if let Some(thread) = thread {
        assert!(line.contains(&format!("on thread {thread};")), "{line}");
    }
    stderr
}

fn assert_ran_clean(case: &str) -> String {
    let output = run_case(case);
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{case} failed ({:?}):\n{stderr}", output.status);
    assert!(!stderr.contains("seccomp refused"), "{stderr}");
    stderr
}

/// Checks an OS call's result inside a child: on a mismatch the child exits with status 3
/// (not the handler's 1), saying what went wrong.
fn expect(what: &str, ok: bool) {
    if !ok {
        eprintln!("child check failed: {what} ({})", std::io::Error::last_os_error());
        std::process::exit(3);
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An ioctl with a bad descriptor: EBADF when the request is allowed, SIGSYS otherwise.
fn ioctl_ebadf(request: u64) -> bool {
    // SAFETY: the descriptor is invalid, so the kernel touches no memory.
    let rc = unsafe { libc::ioctl(-1, request as _, 0) };
    rc == -1 && errno() == libc::EBADF
}

fn confined(kind: ThreadKind) {
    expect("confining the thread", confine(kind).is_ok());
}

/// What a device worker does: locks, timed waits, sleeps, allocations of every size, a
/// HashMap (random seeds), logging, disk I/O, an MSI, then the thread ends.
fn worker_body(disk: &std::fs::File) {
    let pair = std::sync::Arc::new((std::sync::Mutex::new(0u32), std::sync::Condvar::new()));
    let guard = pair.0.lock().unwrap();
    let (guard, _) = pair.1.wait_timeout(guard, Duration::from_millis(5)).unwrap();
    drop(guard);
    std::thread::sleep(Duration::from_millis(1));
    let mut big = vec![1u8; 1 << 20];
    big.resize(8 << 20, 2);
    drop(big);
    let map: std::collections::HashMap<u32, u32> = (0..100).map(|i| (i, i)).collect();
    expect("hash map", map.len() == 100);
    eprintln!("worker {:?} logging", std::thread::current().name());
    let mut sector = [0u8; 512];
    expect("disk read", disk.read_exact_at(&mut sector, 0).is_ok());
    expect("disk write", disk.write_all_at(&sector, 512).is_ok());
    expect("disk flush", disk.sync_data().is_ok());
    let mut pieces = [[0u8; 256]; 2];
    let mut iovecs = pieces.each_mut().map(|p| std::io::IoSliceMut::new(p));
    // SAFETY: the iovecs describe live buffers (IoSliceMut is ABI-compatible with iovec).
    let read = unsafe { libc::preadv(disk.as_raw_fd(), iovecs.as_mut_ptr().cast(), 2, 0) };
    expect("vectored disk read", read == 512);
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain integers on a descriptor the test owns.
    let punched = unsafe { libc::fallocate(disk.as_raw_fd(), mode, 1024, 512) };
    expect("punching a hole (virtio-blk discard)", punched == 0 || errno() == libc::EOPNOTSUPP);
    // The event loop of a virtio worker: epoll, waiting on its queue's eventfd.
    let epoll = vmm_sys_util::epoll::Epoll::new();
    expect("creating an epoll", epoll.is_ok());
    if let Ok(epoll) = epoll {
        let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 1];
        expect("waiting on an epoll", epoll.wait(0, &mut events).is_ok());
    }
    expect("KVM_SIGNAL_MSI is allowed", ioctl_ebadf(KVM_SIGNAL_MSI()));
}

fn temp_disk() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("aperture-seccomp-{}.img", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(&[0x5a; 4096]).unwrap();
    let _ = std::fs::remove_file(&path);
    file
}

/// Starts a thread named `name` from the current (confined) thread, as a vCPU starts a virtio
/// worker, and waits for it.
fn spawn_worker(name: &str, body: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new().name(name.into()).spawn(body);
    expect("spawning a thread", spawned.is_ok());
    if let Ok(thread) = spawned {
        expect("joining the thread", thread.join().is_ok());
    }
}

fn child_case(case: &str) {
    match case {
        "vcpu-socket" => {
            confined(ThreadKind::Vcpu);
            // SAFETY: plain call; the filter refuses it.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        "vcpu-execve" => {
            confined(ThreadKind::Vcpu);
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path and argument/environment arrays.
            unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        }
        "vcpu-fork" => {
            confined(ThreadKind::Vcpu);
            // SAFETY: the filter refuses the clone without CLONE_THREAD.
            unsafe { libc::fork() };
        }
        "vcpu-exec-memory" => {
            confined(ThreadKind::Vcpu);
            // SAFETY: a new anonymous mapping; the filter refuses it.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        }
        "vcpu-other-ioctl" => {
            confined(ThreadKind::Vcpu);
            expect("KVM_RUN is allowed", ioctl_ebadf(KVM_RUN()));
            eprintln!("KVM_RUN allowed");
            // TIOCSTI (pushing input into a terminal) is not on the list.
            ioctl_ebadf(libc::TIOCSTI);
        }
        "vcpu-allowed" => {
            let disk = temp_disk();
            confined(ThreadKind::Vcpu);
            // Opening a file fails cleanly.
            let opened = std::fs::File::open("/proc/self/status");
            expect(
                "open answers EACCES",
                opened.is_err_and(|e| e.raw_os_error() == Some(libc::EACCES)),
            );
            for request in [
                KVM_RUN(),
                KVM_GET_ONE_REG(),
                KVM_IRQ_LINE(),
                KVM_SIGNAL_MSI(),
                KVM_IRQFD(),
                KVM_SET_GSI_ROUTING(),
                KVM_SET_USER_MEMORY_REGION(),
                KVM_IOEVENTFD(),
                VFIO_DEVICE_SET_IRQS(),
                VFIO_DEVICE_RESET(),
                VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
                VFIO_DEVICE_PCI_HOT_RESET(),
                VFIO_IOMMU_MAP_DMA(),
                VFIO_IOMMU_UNMAP_DMA(),
            ] {
                expect("a vCPU ioctl is allowed", ioctl_ebadf(request));
            }
            // An irqfd's eventfd, signalled and dropped.
            // SAFETY: plain calls on the new descriptor.
            unsafe {
                let fd = libc::eventfd(0, libc::EFD_NONBLOCK);
                expect("eventfd", fd >= 0);
                expect(
                    "eventfd write",
                    libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) == 8,
                );
                expect("close", libc::close(fd) == 0);
            }
            // The vCPU kick path: pthread_kill within the process (signal 0 only checks).
            // SAFETY: signalling this very thread with the null signal.
            expect("pthread_kill", unsafe { libc::pthread_kill(libc::pthread_self(), 0) } == 0);
            // A virtio worker starts here and confines itself further.
            spawn_worker("virtio-blk", move || {
                confined(ThreadKind::DeviceWorker);
                worker_body(&disk);
            });
            eprintln!("vcpu case done");
            std::process::exit(0);
        }
        "worker-kvm-run" => {
            confined(ThreadKind::Vcpu);
            spawn_worker("virtio-rng", || {
                confined(ThreadKind::DeviceWorker);
                ioctl_ebadf(KVM_RUN());
            });
        }
        "stdin-allowed" => {
            let mut fds = [0; 2];
            // SAFETY: pipe writes two descriptors into `fds`; one byte goes in.
            unsafe {
                expect("pipe", libc::pipe(fds.as_mut_ptr()) == 0);
                expect("pipe write", libc::write(fds[1], b"x".as_ptr().cast(), 1) == 1);
            }
            confined(ThreadKind::Stdin);
            let mut byte = 0u8;
            // SAFETY: reads one byte into `byte`.
            let n = unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
            expect("stdin read", n == 1 && byte == b'x');
            expect("KVM_IRQ_LINE is allowed", ioctl_ebadf(KVM_IRQ_LINE()));
            expect(
                "KVM_SET_USER_MEMORY_REGION is allowed",
                ioctl_ebadf(KVM_SET_USER_MEMORY_REGION()),
            );
            eprintln!("stdin case done");
            std::process::exit(0);
        }
        "stdin-spawn" | "worker-spawn" => {
            confined(if case == "stdin-spawn" {
                ThreadKind::Stdin
            } else {
                ThreadKind::DeviceWorker
            });
            let spawned = std::thread::Builder::new().name("nope".into()).spawn(|| {});
            expect(
                "thread creation fails with EPERM",
                spawned.is_err_and(|e| e.raw_os_error() == Some(libc::EPERM)),
            );
            eprintln!("no thread");
            std::process::exit(0);
        }
        "control-allowed" => {
            confined(ThreadKind::Control);
            for request in [
                VFIO_DEVICE_SET_IRQS(),
                VFIO_DEVICE_RESET(),
                VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
                VFIO_DEVICE_PCI_HOT_RESET(),
                VFIO_IOMMU_UNMAP_DMA(),
                KVM_IRQFD(),
                KVM_SET_GSI_ROUTING(),
                // A root port's hot-plug MSI when the host takes a device away.
                KVM_SIGNAL_MSI(),
                TCGETS,
            ] {
                expect("a control ioctl is allowed", ioctl_ebadf(request));
            }
            // SAFETY: rusage is plain data that getrusage fills.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: a valid out pointer.
            expect("getrusage", unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0);
            std::thread::sleep(Duration::from_millis(1));
            expect("open answers EACCES", std::fs::read_to_string("/proc/self/status").is_err());
            eprintln!("control case done");
            std::process::exit(0);
        }
        "control-kvm-run" => {
            confined(ThreadKind::Control);
            ioctl_ebadf(KVM_RUN());
        }
        "replug-allowed" => {
            confined(ThreadKind::Replug);
            // What opening an assigned device again does: sysfs and /proc files opened for
            // real, links and directories read, the memlock limit, eventfds, every VFIO
            // ioctl and the hot-plug MSI.
            expect("open works", std::fs::read_to_string("/proc/self/status").is_ok());
            expect("readlink", std::fs::read_link("/proc/self/exe").is_ok());
            expect("read_dir", std::fs::read_dir("/proc/self/fd").is_ok_and(|d| d.count() > 0));
            expect("path exists", std::path::Path::new("/proc/self").exists());
            // SAFETY: rlimit is plain data that getrlimit fills.
            let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
            // SAFETY: a valid out pointer.
            expect("getrlimit", unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0);
            expect("eventfd", vmm_sys_util::eventfd::EventFd::new(0).is_ok());
            let file = std::fs::File::open("/proc/self/stat");
            let mut byte = [0u8; 1];
            expect("pread", file.is_ok_and(|f| f.read_exact_at(&mut byte, 0).is_ok()));
            // VFIO_GET_API_VERSION, VFIO_GROUP_GET_DEVICE_FD, VFIO_DEVICE_GET_REGION_INFO.
            for request in [0x3b64, 0x3b6a, 0x3b6c, VFIO_IOMMU_MAP_DMA(), KVM_SIGNAL_MSI()] {
                expect("a re-plug ioctl is allowed", ioctl_ebadf(request));
            }
            eprintln!("replug case done");
            std::process::exit(0);
        }
        "replug-kvm-run" => {
            confined(ThreadKind::Replug);
            ioctl_ebadf(KVM_RUN());
        }
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(4);
        }
    }
    eprintln!("case {case}: the call was not refused");
    std::process::exit(2);
}

/// Not a test of its own: the entry point of the child processes.
#[test]
fn child_entry() {
    if let Ok(case) = std::env::var(CASE_VAR) {
        child_case(&case);
    }
}

#[test]
fn every_filter_builds_within_the_kernel_limit() {
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::DeviceWorker,
        ThreadKind::VhostNet,
        ThreadKind::Stdin,
        ThreadKind::Control,
        ThreadKind::Replug,
    ] {
        let programs = programs(kind, 4242).unwrap();
        // The re-plug thread's opens are not answered EACCES.
        assert_eq!(programs.len(), if kind == ThreadKind::Replug { 2 } else { 3 });
        let total: usize = programs.iter().map(Vec::len).sum();
        assert!(total < 1024, "{kind:?}: {total} instructions");
    }
}

#[test]
fn only_vcpu_threads_run_guests_and_start_threads() {
    let list = |kind| allowlist(kind, 1).unwrap();
    let (vcpu, worker, stdin, control) = (
        list(ThreadKind::Vcpu),
        list(ThreadKind::DeviceWorker),
        list(ThreadKind::Stdin),
        list(ThreadKind::Control),
    );
    let replug = list(ThreadKind::Replug);
    for call in [libc::SYS_clone, libc::SYS_eventfd2, libc::SYS_seccomp] {
        assert!(vcpu.allows(call));
        for other in [&worker, &stdin, &control] {
            assert!(!other.allows(call), "{call}");
        }
    }
    assert!(!replug.allows(libc::SYS_clone) && !replug.allows(libc::SYS_seccomp));
    for call in [
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_kill,
        libc::SYS_mount,
        libc::SYS_pipe2,
        libc::SYS_memfd_create,
    ] {
        for kind in [&vcpu, &worker, &stdin, &control, &replug] {
            assert!(!kind.allows(call), "{call}");
        }
    }
    // Workers start on vCPU threads and keep their filter under their own.
    assert!(worker.allows(libc::SYS_fdatasync) && vcpu.allows(libc::SYS_fdatasync));
    assert!(!stdin.allows(libc::SYS_fdatasync) && !control.allows(libc::SYS_fdatasync));
}

#[test]
fn only_vhost_net_workers_drive_vhost_net() {
    let list = |kind| allowlist(kind, 1).unwrap().into_rules();
    let ioctl_rules = |kind| list(kind).remove(&libc::SYS_ioctl).unwrap_or_default().len();
    let vhost = devices::virtio::net::vhost::VHOST_IOCTLS.len();
    assert_eq!(
        ioctl_rules(ThreadKind::VhostNet),
        ioctl_rules(ThreadKind::DeviceWorker) + vhost,
        "a vhost-net worker is a device worker plus exactly the vhost-net calls"
    );
    assert!(list(ThreadKind::VhostNet).keys().eq(list(ThreadKind::DeviceWorker).keys()));
}

#[test]
fn a_vcpu_thread_is_refused_a_socket() {
    assert_refused("vcpu-socket", libc::SYS_socket, "socket", None);
}

#[test]
fn a_vcpu_thread_is_refused_execve() {
    assert_refused("vcpu-execve", libc::SYS_execve, "execve", None);
}

#[test]
fn a_vcpu_thread_is_refused_a_process() {
    assert_refused("vcpu-fork", libc::SYS_clone, "clone", None);
}

#[test]
fn a_vcpu_thread_is_refused_executable_memory() {
    assert_refused("vcpu-exec-memory", libc::SYS_mmap, "mmap", None);
}

#[test]
fn a_vcpu_thread_is_refused_other_ioctls() {
    let stderr = assert_refused("vcpu-other-ioctl", libc::SYS_ioctl, "ioctl", None);
    assert!(stderr.contains("KVM_RUN allowed"), "{stderr}");
}

#[test]
fn a_vcpu_thread_does_its_work_and_starts_a_confined_worker() {
    let stderr = assert_ran_clean("vcpu-allowed");
    assert!(stderr.contains("worker Some(\"virtio-blk\") logging"), "{stderr}");
    assert!(stderr.contains("vcpu case done"), "{stderr}");
}

#[test]
fn a_worker_is_refused_what_only_vcpus_do() {
    assert_refused("worker-kvm-run", libc::SYS_ioctl, "ioctl", Some("virtio-rng"));
}

#[test]
fn the_stdin_thread_reads_unmaps_the_uart_page_and_raises_its_interrupt() {
    let stderr = assert_ran_clean("stdin-allowed");
    assert!(stderr.contains("stdin case done"), "{stderr}");
}

#[test]
fn only_vcpu_threads_can_start_threads() {
    for case in ["stdin-spawn", "worker-spawn"] {
        let stderr = assert_ran_clean(case);
        assert!(stderr.contains("no thread"), "{stderr}");
    }
}

#[test]
fn the_control_thread_tears_down_and_exits() {
    let stderr = assert_ran_clean("control-allowed");
    assert!(stderr.contains("control case done"), "{stderr}");
}

#[test]
fn the_replug_thread_opens_files_and_sets_up_vfio() {
    let stderr = assert_ran_clean("replug-allowed");
    assert!(stderr.contains("replug case done"), "{stderr}");
}

#[test]
fn the_replug_thread_cannot_run_a_vcpu() {
    assert_refused("replug-kvm-run", libc::SYS_ioctl, "ioctl", None);
}

#[test]
fn the_control_thread_cannot_run_a_vcpu() {
    assert_refused("control-kvm-run", libc::SYS_ioctl, "ioctl", None);
}
