//! Hosts without a passthrough backend in this build.

use std::sync::Arc;

use super::{AssignError, AssignedIntx, AssignedParts};
use crate::config::DeviceConfig;
use crate::hypervisor::Vm;
use crate::memory::GuestRam;

/// Nothing to hold.
#[derive(Debug)]
pub struct HostDevices;

/// No assigned function exists, so neither does its INTx.
#[derive(Debug, Clone)]
pub enum IntxHandle {}

impl HostDevices {
    pub fn open(
        _vm: &Arc<dyn Vm>,
        _ram: &GuestRam,
        _devices: &[DeviceConfig],
        _trace: Option<&Arc<dyn devices::trace::TraceSink>>,
    ) -> Result<(Self, AssignedParts), AssignError> {
        Err(AssignError::Unsupported(format!(
            "--device: PCI passthrough is not available on {} in this build",
            std::env::consts::OS
        )))
    }

    pub fn connect_intx(&mut self, _vm: &Arc<dyn Vm>, _lines: &[AssignedIntx]) {}

    pub fn shutdown(&mut self) {}
}
