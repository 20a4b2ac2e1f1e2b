//! The doorbell of one virtqueue: the driver's notify for that queue wakes the device's
//! worker through a [`QueueEvent`].
//!
//! Two ways ring it, one device path serves it:
//! - on Linux/KVM the event is an eventfd (`vmm_sys_util::eventfd::EventFd`, see
//!   [`QueueEvent::eventfd`]) that KVM can signal itself (`KVM_IOEVENTFD` on the queue's notify
//!   address), with no exit to the VMM; until that is registered, or for a notify that still
//!   traps, the transport calls [`QueueEvent::notify`] from the vCPU thread, which signals the
//!   same eventfd;
//! - where there is no ioeventfd (Hypervisor.framework) the MMIO exit calls
//!   [`QueueEvent::notify`] and the event is a counter with a condition variable.
//!
//! The transport creates one per queue when it is built and keeps it across resets, so a
//! registration with the hypervisor stays valid for the life of the function.

pub use super::sys::QueueEvent;
