//! The per-OS event loop of the virtio-net worker: epoll on Linux (the doorbells are
//! eventfds KVM rings), poll with a short timeout elsewhere.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(not(target_os = "linux"))]
mod portable;

#[cfg(target_os = "linux")]
pub(crate) use linux::run_net_loop;
#[cfg(not(target_os = "linux"))]
pub(crate) use portable::run_net_loop;
