//! Receive path: puts one frame (header included) into the driver's receive chains, merged
//! across several chains when VIRTIO_NET_F_MRG_RXBUF is negotiated. No OS calls.

use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::header::{set_num_buffers, HDR_LEN};

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into this many chains (returned on the used ring).
    Delivered(u16),
    /// The driver has not posted enough buffers; nothing was consumed, try again later.
    NoBuffers,
    /// The frame cannot fit the driver's buffers (no merging and a chain too small) or is
    /// malformed: dropped, no buffer consumed.
    Dropped,
}

/// A chain popped for a frame: its head and the guest-writable pieces (checked against RAM).
#[derive(Debug, Default)]
struct RxChain {
    head: u16,
    segments: Vec<(GuestAddress, usize)>,
    capacity: usize,
}

/// Reusable scratch space of the receive path, so a frame costs no allocation.
#[derive(Debug, Default)]
pub struct RxScratch {
    chains: Vec<RxChain>,
    used: usize,
    /// Where the available ring ran dry in the last [`RxOutcome::NoBuffers`].
    pub(crate) ran_dry_at: u16,
}

impl RxScratch {
    fn next_slot(&mut self) -> &mut RxChain {
        if self.used == self.chains.len() {
            self.chains.push(RxChain::default());
        }
        let slot = &mut self.chains[self.used];
        self.used += 1;
        slot.segments.clear();
        slot.capacity = 0;
        slot
    }
}

/// Pops the next chain's writable pieces into `slot`; false when the ring is empty.
fn pop_chain(queue: &mut Queue, mem: &GuestMemoryMmap, slot: &mut RxChain) -> bool {
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        return false;
    };
    slot.head = chain.head_index();
    for desc in chain {
        let len = desc.len() as usize;
        // A readable piece, or one outside guest RAM, cannot take data: skipped.
        if !desc.is_write_only()
            || len == 0
            || !mem.check_range(desc.addr(), len, Permissions::Write)
        {
            continue;
        }
        slot.segments.push((desc.addr(), len));
        slot.capacity += len;
    }
    true
}

/// Delivers `frame` (a `virtio_net_hdr_v1` then the Ethernet frame) into `queue`. Its
/// `num_buffers` is set here. With `mergeable` the frame may span chains; without, it must
/// fit one. The caller raises the interrupt (see `Queue::needs_notification`).
pub fn deliver_frame(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    mergeable: bool,
    scratch: &mut RxScratch,
) -> RxOutcome {
    if frame.len() < HDR_LEN {
        return RxOutcome::Dropped;
    }
    let start = queue.next_avail();
    scratch.used = 0;
    let mut capacity = 0usize;
    while capacity < frame.len() {
        if !mergeable && scratch.used == 1 {
            // One chain only, and it is too small: keep it for a smaller frame.
            queue.set_next_avail(start);
            return RxOutcome::Dropped;
        }
        // Bounded by the ring size: more than that cannot be outstanding.
        if scratch.used >= usize::from(queue.size()) {
            queue.set_next_avail(start);
            return RxOutcome::Dropped;
        }
        let slot = scratch.next_slot();
        if !pop_chain(queue, mem, slot) {
            scratch.used -= 1;
            scratch.ran_dry_at = queue.next_avail();
            queue.set_next_avail(start);
            return RxOutcome::NoBuffers;
        }
        let (chain_capacity, head) = (slot.capacity, slot.head);
        // A merged frame's first chain must hold the whole header.
        if chain_capacity == 0 || (scratch.used == 1 && chain_capacity < HDR_LEN) {
            // Useless to any frame (a broken driver): return it empty and go on.
            scratch.used -= 1;
            if let Err(e) = queue.add_used(mem, head, 0) {
                warn!("virtio-net: cannot return rx chain {head}: {e}");
            }
            continue;
        }
        capacity += chain_capacity;
    }
    let count = scratch.used as u16;
    set_num_buffers(frame, count);
    let mut at = 0usize;
    for chain in &scratch.chains[..scratch.used] {
        let mut written = 0usize;
        for &(addr, len) in &chain.segments {
            if at >= frame.len() {
                break;
            }
            let n = len.min(frame.len() - at);
            if let Err(e) = mem.write_slice(&frame[at..at + n], addr) {
                warn!(
                    "virtio-net: rx chain {}: cannot write guest address {:#x}: {e}",
                    chain.head,
                    addr.raw_value()
                );
            }
            at += n;
            written += n;
        }
        // At most the frame length, which fits u32.
        if let Err(e) = queue.add_used(mem, chain.head, written as u32) {
            warn!("virtio-net: cannot return rx chain {}: {e}", chain.head);
        }
    }
    RxOutcome::Delivered(count)
}
