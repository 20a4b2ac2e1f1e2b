//! Transmit path: gathers one driver chain (header and frame, device-readable) into a
//! contiguous buffer for the backend. No OS calls.

use vm_memory::{Bytes, GuestMemoryMmap};

use super::header::HDR_LEN;
use crate::virtio::queue_service::GuestChain;

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    /// The chain has a device-writable piece.
    #[error("the tx chain has a device-writable descriptor; tx buffers must be device-readable")]
    Writable,
    /// The chain is longer than the largest frame.
    #[error("the tx chain holds more than {0} bytes")]
    TooLong(usize),
    /// Shorter than the header.
    #[error("the tx chain holds {0} bytes, less than the {HDR_LEN}-byte header")]
    TooShort(usize),
    /// A piece lies outside guest RAM.
    #[error("a tx buffer at guest address {0:#x} is outside guest RAM")]
    OutsideMemory(u64),
}

/// Gathers `chain` into `buf` (cleared first), at most `max` bytes.
pub fn gather(
    chain: GuestChain<'_>,
    mem: &GuestMemoryMmap,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), TxError> {
    buf.clear();
    for desc in chain {
        if desc.is_write_only() {
            return Err(TxError::Writable);
        }
        let len = desc.len() as usize;
        let at = buf.len();
        if len > max - at {
            return Err(TxError::TooLong(max));
        }
        buf.resize(at + len, 0);
        mem.read_slice(&mut buf[at..], desc.addr())
            .map_err(|_| TxError::OutsideMemory(desc.addr().0))?;
    }
    if buf.len() < HDR_LEN {
        return Err(TxError::TooShort(buf.len()));
    }
    Ok(())
}
