//! macOS: the OS calls of DriverKit passthrough. Each function is reached through its own
//! IOKit connection to the VFIOUserPCIDriver extension, and the interrupts its wait thread
//! sees are injected as guest MSIs through Hypervisor.framework. Everything else is the
//! portable pipeline over [`passthrough::driverkit::DextBackend`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::pci::MsiMessage;
use devices::trace::TraceSink;
use log::{debug, warn};
use passthrough::driverkit::{
    ConnectionOpener, DextBackend, DextConnection, IoKitConnection, MsiSink, MsiSinkFactory,
};

use crate::assign::pipeline::{HostPlatform, PlatformParts};
use crate::hypervisor::Vm;

/// The dext offers no INTx, so no assigned function shows a pin.
pub use passthrough::host::NoIntx as IntxHandle;

/// Injects the dext's interrupts as guest MSIs while the VM runs.
fn msi_sink(vm: &Arc<dyn Vm>, live: &Arc<AtomicBool>, name: &str) -> MsiSink {
    let vm = vm.clone();
    let live = live.clone();
    let name = name.to_string();
    let warned = AtomicBool::new(false);
    Arc::new(move |message: MsiMessage, requester_id: u16| {
        if !live.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = vm.signal_msi(message.address, message.data, u32::from(requester_id)) {
            let text = format!(
                "{name}: MSI {:#x}/{:#x} from {requester_id:#06x} not delivered: {e}",
                message.address, message.data
            );
            if warned.swap(true, Ordering::Relaxed) {
                debug!("{text}");
            } else {
                warn!("{text}");
            }
        }
    })
}

/// Hypervisor.framework's side of the VM's dext devices.
#[derive(Debug)]
pub(crate) struct Platform {
    /// Cleared at shutdown: interrupts after that are not injected.
    live: Arc<AtomicBool>,
}

impl HostPlatform for Platform {
    type Backend = DextBackend;

    /// The dext over IOKit, with interrupts injected into `vm`.
    fn new(vm: &Arc<dyn Vm>, _trace: Option<&Arc<dyn TraceSink>>) -> PlatformParts<Self> {
        let live = Arc::new(AtomicBool::new(true));
        let connect: ConnectionOpener = Box::new(|address| {
            let connection: Arc<dyn DextConnection> = Arc::new(IoKitConnection::open(address)?);
            Ok(connection)
        });
        let (vm, sink_live) = (vm.clone(), live.clone());
        let sinks: MsiSinkFactory = Box::new(move |name| msi_sink(&vm, &sink_live, name));
        Ok((Self { live }, DextBackend::new(connect, sinks)))
    }

    /// Opening a terminated dext device again needs its matching to run again first.
    fn replug_backend(&self) -> Result<DextBackend, crate::assign::AssignError> {
        Err(crate::assign::AssignError::ReplugUnsupported { os: "macOS" })
    }

    /// Stops injecting interrupts; the dext releases the rest when the connections close.
    fn stop(&mut self) {
        self.live.store(false, Ordering::Release);
    }
}
