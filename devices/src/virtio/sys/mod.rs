//! The per-OS halves of the virtio worker: the queue doorbell and the loop that waits on it.

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(not(target_os = "linux"))]
pub mod portable;

#[cfg(target_os = "linux")]
pub(crate) use linux::run_event_loop;
#[cfg(target_os = "linux")]
pub use linux::QueueEvent;
#[cfg(not(target_os = "linux"))]
pub(crate) use portable::run_event_loop;
#[cfg(not(target_os = "linux"))]
pub use portable::QueueEvent;
