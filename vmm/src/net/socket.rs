//! `--net socket=PATH`: a UNIX stream socket speaking QEMU's stream framing (4-byte
//! big-endian length, then the frame), as passt and gvproxy `-listen-qemu` do. The
//! connected socket is used as a plain descriptor (read/write, not recv/send), so the
//! worker's sandbox needs no socket calls.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use devices::virtio::net::framing::{length_prefix, StreamFramer};
use devices::virtio::net::NetBackend;

use super::NetError;

/// How long a send waits for a peer that stopped reading before giving up on the stream.
const SEND_STALL: Duration = Duration::from_secs(2);

/// A connected stream socket.
#[derive(Debug)]
pub struct SocketBackend {
    path: String,
    stream: File,
    framer: StreamFramer,
    out: Vec<u8>,
}

impl SocketBackend {
    /// Connects to the peer listening at `path`.
    pub fn connect(path: &Path) -> Result<Self, NetError> {
        let shown = path.display().to_string();
        let stream = UnixStream::connect(path)
            .map_err(|source| NetError::SocketConnect { path: shown.clone(), source })?;
        Self::from_stream(shown, stream)
    }

    /// Wraps an already connected stream.
    pub fn from_stream(path: String, stream: UnixStream) -> Result<Self, NetError> {
        stream
            .set_nonblocking(true)
            .map_err(|source| NetError::SocketConnect { path: path.clone(), source })?;
        let stream = File::from(OwnedFd::from(stream));
        Ok(Self { path, stream, framer: StreamFramer::default(), out: Vec::new() })
    }

    /// Waits until the socket takes more bytes; false on timeout.
    fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
        let mut poll =
            libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `poll` points at one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        match ready {
            -1 => Err(io::Error::last_os_error()),
            0 => Ok(false),
            _ => Ok(true),
        }
    }
}

impl NetBackend for SocketBackend {
    fn describe(&self) -> String {
        format!("socket {}", self.path)
    }

    fn vnet_hdr(&self) -> bool {
        false
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            if let Some(n) = self.framer.next_frame(buf).map_err(io::Error::other)? {
                return Ok(Some(n));
            }
            match self.stream.read(self.framer.space()) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the socket",
                    ))
                }
                Ok(n) => self.framer.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(&length_prefix(frame.len()));
        self.out.extend_from_slice(frame);
        let mut at = 0;
        while at < self.out.len() {
            match self.stream.write(&self.out[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A frame half sent must be finished, or the stream is out of step.
                    if !self.wait_writable(SEND_STALL)? {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer stopped reading the socket",
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn readable_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_a_socket_pair_in_qemu_framing() {
        let (device_end, mut peer) = UnixStream::pair().unwrap();
        let mut backend = SocketBackend::from_stream("pair".into(), device_end).unwrap();
        let mut buf = vec![0u8; 2048];
        assert_eq!(backend.recv(&mut buf).unwrap(), None);
        peer.write_all(&[0, 0, 0, 3, 7, 8, 9, 0, 0, 0, 1]).unwrap();
        assert_eq!(backend.recv(&mut buf).unwrap(), Some(3));
        assert_eq!(&buf[..3], [7, 8, 9]);
        assert_eq!(backend.recv(&mut buf).unwrap(), None, "half a frame waits");
        peer.write_all(&[5]).unwrap();
        assert_eq!(backend.recv(&mut buf).unwrap(), Some(1));
        backend.send(&[1, 2, 3, 4, 5]).unwrap();
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 5, 1, 2, 3, 4, 5]);
        drop(peer);
        let err = backend.recv(&mut buf).unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
    }

    #[test]
    fn a_refused_socket_names_the_path() {
        let err = SocketBackend::connect(Path::new("/nonexistent/aperture.sock")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("--net socket=/nonexistent/aperture.sock: "), "{text}");
    }
}
