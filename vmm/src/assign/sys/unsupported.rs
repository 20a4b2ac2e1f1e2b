//! Hosts without a passthrough backend in this build: `--device` is refused.

use std::sync::Arc;

use devices::trace::TraceSink;

use crate::assign::pipeline::HostPlatform;
use crate::assign::AssignError;
use crate::hypervisor::Vm;

/// No assigned function exists, so neither does its INTx.
pub use passthrough::host::NoIntx as IntxHandle;

/// Never made.
#[derive(Debug)]
pub(crate) struct Platform;

impl HostPlatform for Platform {
    // Only names a backend type: `new` refuses before one is needed. The DriverKit client
    // is portable, so it compiles here.
    type Backend = passthrough::driverkit::DextBackend;

    fn new(
        _vm: &Arc<dyn Vm>,
        _trace: Option<&Arc<dyn TraceSink>>,
    ) -> Result<(Self, Self::Backend), AssignError> {
        Err(AssignError::Unsupported { os: std::env::consts::OS })
    }

    fn replug_backend(&self) -> Result<Self::Backend, AssignError> {
        Err(AssignError::Unsupported { os: std::env::consts::OS })
    }
}
