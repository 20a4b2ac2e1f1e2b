//! Serving a split virtqueue: pop the driver's chains, hand each to the device, return it on
//! the used ring, and decide whether the driver wants an interrupt.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use log::warn;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Most chains served in one pass, so a driver that keeps the ring full cannot keep the
/// worker from seeing a reset.
const MAX_CHAINS_PER_PASS: usize = 1024;

/// A descriptor chain as the device sees it.
pub(crate) type GuestChain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Serves every available chain with `serve`, which returns the number of bytes it wrote into
/// the chain's buffers (the used length). Returns whether the driver needs an interrupt.
pub(crate) fn drain_queue<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut serve: F) -> bool
where
    F: FnMut(GuestChain<'_>) -> u32,
{
    let mut served = 0usize;
    let mut used = 0usize;
    loop {
        // Ask the driver not to notify while we are draining anyway.
        if let Err(e) = queue.disable_notification(mem) {
            warn!("virtio queue: cannot update the notification flags: {e}");
        }
        let mut served_this_round = 0usize;
        while served < MAX_CHAINS_PER_PASS {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = serve(chain);
            match queue.add_used(mem, head, len) {
                Ok(()) => used += 1,
                Err(e) => warn!("virtio queue: cannot return chain {head} to the driver: {e}"),
            }
            served += 1;
            served_this_round += 1;
        }
        // Re-enabling tells us whether the driver added chains meanwhile (it may not notify).
        let more = queue.enable_notification(mem).unwrap_or_else(|e| {
            warn!("virtio queue: cannot update the notification flags: {e}");
            false
        });
        // A ring that claims chains but yields none is broken: do not spin on it.
        if !more || served_this_round == 0 || served >= MAX_CHAINS_PER_PASS {
            break;
        }
    }
    used > 0
        && queue.needs_notification(mem).unwrap_or_else(|e| {
            warn!("virtio queue: cannot read the driver's used_event: {e}");
            true
        })
}

/// Whether the driver has made chains available that the device has not popped yet. A broken
/// available index (more than a ring's worth ahead) counts as nothing pending.
pub(crate) fn has_pending(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(avail) => {
            let pending = (avail - Wrapping(queue.next_avail())).0;
            pending != 0 && pending <= queue.size()
        }
        Err(_) => false,
    }
}
