//! QEMU's stream-socket framing (`-netdev stream`, passt, gvproxy `-listen-qemu`): each
//! Ethernet frame is sent as a 4-byte big-endian length and then the frame. No OS calls: the
//! socket backend reads into [`StreamFramer::space`] and takes frames out.

/// Largest frame accepted from a peer (QEMU's own limit is 4 KiB + 64 KiB).
pub const MAX_STREAM_FRAME: usize = 69_632;
const LEN_PREFIX: usize = 4;

/// A peer sent a length no frame can have: the stream is out of step.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the peer announced a {0}-byte frame (at most {MAX_STREAM_FRAME}); the stream is corrupt or \
     not QEMU's stream framing"
)]
pub struct FrameTooLong(pub usize);

/// The 4-byte prefix of a `len`-byte frame.
pub fn length_prefix(len: usize) -> [u8; 4] {
    // Frames are far below 4 GiB (the tx path caps them).
    (len as u32).to_be_bytes()
}

/// Splits a byte stream into frames.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self { buf: vec![0; 2 * (MAX_STREAM_FRAME + LEN_PREFIX)], start: 0, end: 0 }
    }
}

impl StreamFramer {
    /// Free space to read stream bytes into (compacts first); then call [`Self::filled`].
    pub fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Self::space`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies the next complete frame into `out` and returns its length (a frame longer than
    /// `out` is cut to fit); `Ok(None)` when no whole frame is buffered yet.
    pub fn next_frame(&mut self, out: &mut [u8]) -> Result<Option<usize>, FrameTooLong> {
        let buffered = &self.buf[self.start..self.end];
        let Some(prefix) = buffered.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX_STREAM_FRAME {
            return Err(FrameTooLong(len));
        }
        let Some(frame) = buffered.get(LEN_PREFIX..LEN_PREFIX + len) else {
            return Ok(None);
        };
        let n = len.min(out.len());
        out[..n].copy_from_slice(&frame[..n]);
        self.start += LEN_PREFIX + len;
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(framer: &mut StreamFramer, bytes: &[u8]) {
        let space = framer.space();
        space[..bytes.len()].copy_from_slice(bytes);
        framer.filled(bytes.len());
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = Vec::new();
        for frame in [&b"hello"[..], b"", b"world!"] {
            stream.extend_from_slice(&length_prefix(frame.len()));
            stream.extend_from_slice(frame);
        }
        for split in 0..stream.len() {
            let mut framer = StreamFramer::default();
            let mut out = [0u8; 64];
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                feed(&mut framer, part);
                while let Some(n) = framer.next_frame(&mut out).unwrap() {
                    got.push(out[..n].to_vec());
                }
            }
            assert_eq!(got, [b"hello".to_vec(), vec![], b"world!".to_vec()], "split {split}");
        }
    }

    #[test]
    fn oversized_lengths_are_errors_and_long_frames_are_cut() {
        let mut framer = StreamFramer::default();
        feed(&mut framer, &length_prefix(MAX_STREAM_FRAME + 1));
        assert_eq!(framer.next_frame(&mut [0; 8]), Err(FrameTooLong(MAX_STREAM_FRAME + 1)));
        let mut framer = StreamFramer::default();
        feed(&mut framer, &[0, 0, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0, 1, 9]);
        let mut out = [0u8; 4];
        assert_eq!(framer.next_frame(&mut out), Ok(Some(4)));
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(framer.next_frame(&mut out), Ok(Some(1)));
        assert_eq!(out[0], 9);
        assert_eq!(framer.next_frame(&mut out), Ok(None));
    }

    #[test]
    fn a_full_buffer_still_holds_a_largest_frame() {
        let mut framer = StreamFramer::default();
        let mut out = vec![0u8; MAX_STREAM_FRAME];
        for round in 0..5u8 {
            let mut bytes = length_prefix(MAX_STREAM_FRAME).to_vec();
            bytes.resize(LEN_PREFIX + MAX_STREAM_FRAME, round);
            // Leave a partial prefix of the next frame behind.
            bytes.extend_from_slice(&[0, 0]);
            let space = framer.space();
            assert!(space.len() >= bytes.len());
            feed(&mut framer, &bytes);
            assert_eq!(framer.next_frame(&mut out), Ok(Some(MAX_STREAM_FRAME)));
            assert!(out.iter().all(|&b| b == round));
            assert_eq!(framer.next_frame(&mut out), Ok(None));
            // Drop the partial prefix again for the next round.
            framer.start = framer.end;
        }
    }
}
