//! The `virtio_net_hdr_v1` every frame carries between driver and device (virtio 1.2
//! §5.1.6): flags, GSO type, header length, GSO size, checksum start and offset, and
//! `num_buffers`, 12 bytes, little-endian.

/// Length of `virtio_net_hdr_v1` (VIRTIO_F_VERSION_1 always has `num_buffers`).
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;

/// Sets `num_buffers` (how many rx chains a merged frame spans) in the header at the start of
/// `frame`; a frame shorter than a header is left alone.
pub fn set_num_buffers(frame: &mut [u8], count: u16) {
    if let Some(field) = frame.get_mut(NUM_BUFFERS..NUM_BUFFERS + 2) {
        field.copy_from_slice(&count.to_le_bytes());
    }
}

/// Clears the header at the start of `frame` (no checksum to finish, no segmentation): what a
/// frame from a backend without headers gets.
pub fn clear(frame: &mut [u8]) {
    let len = frame.len().min(HDR_LEN);
    frame[..len].fill(0);
}
