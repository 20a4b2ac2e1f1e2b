//! Aperture's VMM: command line, VM lifecycle, hypervisor backends, vCPU loop and device bus.
//! The `aperture` binary (`main.rs`) is a thin shell around it.

pub mod assign;
pub mod boot_phases;
pub mod bus;
pub mod check;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod devices_list;
pub mod docs;
pub mod host;
pub mod hypervisor;
pub mod memory;
pub mod net;
pub mod pci;
mod readonly;
pub mod report;
pub mod seccomp;
pub mod signals;
mod uart_page;
pub mod vcpu_thread;
pub mod vm;
