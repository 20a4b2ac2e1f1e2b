//! `--net user`: Aperture starts the user-mode network helper itself — passt on Linux,
//! gvproxy on macOS — and connects the NIC to it as for `--net socket`. passt gets one end of
//! a socket pair as an inherited fd (`--fd`): no socket file, and no window in which a
//! connection to a forwarded port reaches passt before the NIC has (passt `--one-off` quits
//! on that). gvproxy listens on a socket of its own, which Aperture connects to. The helper
//! leaves with the VM: passt when its fd closes, both on SIGTERM when Aperture's main thread
//! ends (Linux: PR_SET_PDEATHSIG).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use log::info;

use super::socket::SocketBackend;
use super::spec::PortForward;
use super::NetBackend;
use super::NetError;

/// How long the helper gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The fd number passt finds its end of the socket pair at.
const PASST_FD: RawFd = 3;

/// How the helper reaches the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperLink<'a> {
    /// An inherited, connected socket at this fd number (passt `--fd`).
    Inherited(RawFd),
    /// A socket the helper listens on (passt `--socket`, gvproxy `-listen-qemu`).
    Listening(&'a Path),
}

/// Which helper this host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    /// passt (Linux): `passt -f -1 -s SOCKET -t HOST:GUEST ...`.
    Passt,
    /// gvproxy (macOS): `gvproxy -listen-qemu unix://SOCKET -ssh-port HOST`.
    Gvproxy,
}

impl Helper {
    /// This host's helper.
    pub fn for_host() -> Self {
        if cfg!(target_os = "macos") {
            Self::Gvproxy
        } else {
            Self::Passt
        }
    }

    /// The program name looked up in PATH (and, for gvproxy, where podman installs it).
    pub fn program(self) -> &'static str {
        match self {
            Self::Passt => "passt",
            Self::Gvproxy => "gvproxy",
        }
    }

    fn extra_dirs(self) -> &'static [&'static str] {
        match self {
            Self::Passt => &["/usr/bin", "/usr/local/bin"],
            Self::Gvproxy => &[
                "/opt/homebrew/opt/podman/libexec/podman",
                "/usr/local/opt/podman/libexec/podman",
                "/opt/podman/bin",
                "/opt/homebrew/bin",
                "/usr/local/bin",
            ],
        }
    }

    /// How to install it, for the error when it is missing.
    pub fn install_hint(self) -> &'static str {
        match self {
            Self::Passt => "install the passt package (Debian/Ubuntu: apt install passt; Fedora: dnf install passt)",
            Self::Gvproxy => "install gvproxy (brew install podman ships it; or brew install gvproxy)",
        }
    }

    /// The helper's arguments for this link and these forwards.
    pub fn args(self, link: HelperLink, forwards: &[PortForward]) -> Result<Vec<String>, NetError> {
        match self {
            Self::Passt => {
                let mut args: Vec<String> =
                    ["--foreground", "--one-off", "--quiet"].map(String::from).to_vec();
                match link {
                    HelperLink::Inherited(fd) => args.extend(["--fd".into(), fd.to_string()]),
                    HelperLink::Listening(socket) => {
                        args.extend(["--socket".into(), socket.display().to_string()]);
                    }
                }
                for f in forwards {
                    args.push(if f.udp { "-u" } else { "-t" }.into());
                    let host = match &f.host_addr {
                        Some(addr) => format!("{addr}/{}", f.host_port),
                        None => f.host_port.to_string(),
                    };
                    args.push(format!("{host}:{}", f.guest_port));
                }
                Ok(args)
            }
            Self::Gvproxy => {
                let HelperLink::Listening(socket) = link else {
                    return Err(NetError::HelperExited {
                        program: self.program().into(),
                        status: "gvproxy takes no inherited socket".into(),
                    });
                };
                let mut args =
                    vec!["-listen-qemu".to_string(), format!("unix://{}", socket.display())];
                // gvproxy forwards other ports only through its HTTP API; its command line
                // has the ssh port alone.
                match forwards {
                    [] => args.extend(["-ssh-port".into(), "-1".into()]),
                    [PortForward { udp: false, host_addr: None, host_port, guest_port: 22 }] => {
                        args.extend(["-ssh-port".into(), host_port.to_string()]);
                    }
                    _ => return Err(NetError::GvproxyForwards),
                }
                Ok(args)
            }
        }
    }

    fn find(self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(self.extra_dirs().iter().map(PathBuf::from))
            .map(|dir| dir.join(self.program()))
            .find(|candidate| candidate.is_file())
    }
}

/// Starts the helper for NIC `index` and connects to it. The helper is not waited for: it
/// ends by itself with the VM.
pub fn start(index: usize, forwards: &[PortForward]) -> Result<SocketBackend, NetError> {
    let helper = Helper::for_host();
    let program = helper.find().ok_or(NetError::HelperMissing(helper))?;
    let backend = match helper {
        Helper::Passt => start_on_pair(helper, &program, forwards)?,
        Helper::Gvproxy => start_listening(helper, &program, index, forwards)?,
    };
    info!("net{index}: {} started for --net user", backend.describe());
    Ok(backend)
}

/// passt: one end of a socket pair is its fd PASST_FD; Aperture keeps the other.
fn start_on_pair(
    helper: Helper,
    program: &Path,
    forwards: &[PortForward],
) -> Result<SocketBackend, NetError> {
    let shown = program.display().to_string();
    let start_error = |source| NetError::HelperStart { program: shown.clone(), source };
    let (ours, theirs) = UnixStream::pair().map_err(start_error)?;
    let mut command = Command::new(program);
    command.args(helper.args(HelperLink::Inherited(PASST_FD), forwards)?);
    inherit_at(&mut command, theirs.as_raw_fd(), PASST_FD);
    die_with_parent(&mut command);
    let child = command.spawn().map_err(start_error)?;
    drop(theirs);
    SocketBackend::from_stream(
        format!("pair with {} (pid {})", program.display(), child.id()),
        ours,
    )
}

/// The child started by `command` finds `fd` (open in this process) at fd number `at`.
fn inherit_at(command: &mut Command, fd: RawFd, at: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and only calls dup2 and
    // fcntl, which are async-signal-safe, on an fd the child inherited open.
    unsafe {
        command.pre_exec(move || {
            // dup2 clears close-on-exec on the copy; an fd already at `at` keeps it.
            let result =
                if fd == at { libc::fcntl(at, libc::F_SETFD, 0) } else { libc::dup2(fd, at) };
            if result < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// gvproxy: it listens on a socket of Aperture's naming, which Aperture connects to.
fn start_listening(
    helper: Helper,
    program: &Path,
    index: usize,
    forwards: &[PortForward],
) -> Result<SocketBackend, NetError> {
    let shown = program.display().to_string();
    let socket =
        std::env::temp_dir().join(format!("aperture-{}-net{index}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let mut command = Command::new(program);
    command.args(helper.args(HelperLink::Listening(&socket), forwards)?);
    die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .map_err(|source| NetError::HelperStart { program: shown.clone(), source })?;
    let started = Instant::now();
    let backend = loop {
        if let Ok(backend) = SocketBackend::connect(&socket) {
            break backend;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NetError::HelperExited { program: shown, status: status.to_string() });
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            return Err(NetError::HelperExited {
                program: shown,
                status: format!("did not listen on {} within {START_TIMEOUT:?}", socket.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Connected: the name is no longer needed.
    let _ = std::fs::remove_file(&socket);
    Ok(backend)
}

/// Linux: the helper gets SIGTERM when the thread that started it (Aperture's main thread,
/// which lives as long as the VM) ends, even if Aperture is killed.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Elsewhere gvproxy ends when its QEMU connection closes.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(udp: bool, addr: Option<&str>, host: u16, guest: u16) -> PortForward {
        PortForward { udp, host_addr: addr.map(String::from), host_port: host, guest_port: guest }
    }

    #[test]
    fn passt_arguments() {
        let args = Helper::Passt
            .args(
                HelperLink::Inherited(3),
                &[forward(false, None, 2222, 22), forward(true, Some("127.0.0.1"), 5353, 53)],
            )
            .unwrap();
        assert_eq!(
            args,
            [
                "--foreground",
                "--one-off",
                "--quiet",
                "--fd",
                "3",
                "-t",
                "2222:22",
                "-u",
                "127.0.0.1/5353:53"
            ]
        );
    }

    #[test]
    fn gvproxy_arguments() {
        let sock = HelperLink::Listening(Path::new("/tmp/n.sock"));
        assert_eq!(
            Helper::Gvproxy.args(sock, &[]).unwrap(),
            ["-listen-qemu", "unix:///tmp/n.sock", "-ssh-port", "-1"]
        );
        assert_eq!(
            Helper::Gvproxy.args(sock, &[forward(false, None, 2222, 22)]).unwrap()[3],
            "2222"
        );
        let err = Helper::Gvproxy.args(sock, &[forward(false, None, 8080, 80)]).unwrap_err();
        assert!(err.to_string().contains("gvproxy"), "{err}");
        assert!(Helper::Gvproxy.args(HelperLink::Inherited(3), &[]).is_err());
        assert_eq!(
            Helper::Passt.args(sock, &[]).unwrap(),
            ["--foreground", "--one-off", "--quiet", "--socket", "/tmp/n.sock"]
        );
    }

    /// A stand-in helper (sh) finds its end of the pair at fd 3: what it writes there
    /// arrives framed at the backend.
    #[test]
    fn the_helper_inherits_its_end_of_the_pair_at_fd_3() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut command = Command::new("sh");
        // A frame of 2 bytes, "hi", in QEMU's stream framing.
        command.args(["-c", "printf '\\000\\000\\000\\002hi' >&3"]);
        inherit_at(&mut command, theirs.as_raw_fd(), PASST_FD);
        let status = command.status().unwrap();
        drop(theirs);
        assert!(status.success());
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 6];
        std::io::Read::read_exact(&mut &ours, &mut got).unwrap();
        assert_eq!(&got, b"\0\0\0\x02hi");
    }

    #[test]
    fn a_missing_helper_names_the_package() {
        let err = NetError::HelperMissing(Helper::Passt).to_string();
        assert!(err.contains("apt install passt"), "{err}");
    }
}
