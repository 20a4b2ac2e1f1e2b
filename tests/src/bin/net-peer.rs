//! `net-peer SOCKET TAP`: the e2e rig's stand-in for passt: listens on the UNIX stream socket
//! SOCKET, accepts one connection (Aperture's `--net socket=SOCKET`) and bridges it, in QEMU's
//! stream framing (4-byte big-endian length, then the frame), to the existing tap TAP, where
//! L1's DHCP and HTTP servers answer. Ends when the connection closes. Runs inside the
//! emulated arm64 host (a static binary packed by tests/rig/build-rig.sh).

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, tap] = args.as_slice() else {
        eprintln!("usage: net-peer SOCKET TAP");
        return std::process::ExitCode::from(2);
    };
    match linux::bridge(socket, tap) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("net-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("net-peer: taps exist on Linux only");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    const TUNSETIFF: u64 = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;

    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }

    fn open_tap(name: &str) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        let mut req =
            IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        for (dst, src) in req.name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }

    /// Socket to tap: length-prefixed frames out of the stream, one write each.
    fn socket_to_tap(mut stream: UnixStream, mut tap: File) -> io::Result<()> {
        let mut frame = vec![0u8; 70_000];
        loop {
            let mut len = [0u8; 4];
            if stream.read_exact(&mut len).is_err() {
                return Ok(());
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > frame.len() {
                return Err(io::Error::other(format!("a {len}-byte frame: not QEMU framing")));
            }
            stream.read_exact(&mut frame[..len])?;
            // A full tap queue drops the frame, as a switch would.
            let _ = tap.write(&frame[..len]);
        }
    }

    pub fn bridge(socket: &str, tap: &str) -> io::Result<()> {
        let tap_rx =
            open_tap(tap).map_err(|e| io::Error::other(format!("cannot open tap {tap}: {e}")))?;
        let tap_tx = tap_rx.try_clone()?;
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        eprintln!("net-peer: listening on {socket}, bridged to {tap}");
        let (stream, _) = listener.accept()?;
        let reader = stream.try_clone()?;
        let inbound = std::thread::spawn(move || socket_to_tap(reader, tap_tx));
        // Tap to socket: one read is one frame.
        let mut tap = tap_rx;
        let mut out = stream;
        let mut frame = vec![0u8; 70_000];
        let result = loop {
            let n = match tap.read(&mut frame[4..]) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            frame[..4].copy_from_slice(&(n as u32).to_be_bytes());
            if out.write_all(&frame[..4 + n]).is_err() {
                break Ok(());
            }
            if inbound.is_finished() {
                break Ok(());
            }
        };
        eprintln!("net-peer: connection closed");
        result
    }
}
