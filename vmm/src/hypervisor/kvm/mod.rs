//! The KVM backend (arm64 Linux hosts): the portable bookkeeping in front, unit-tested on any
//! host, and the ioctls behind it in [`sys`] (compiled on arm64 Linux only).

pub mod routing;
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
mod sys;

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
pub use sys::{Kvm, KvmVm};
