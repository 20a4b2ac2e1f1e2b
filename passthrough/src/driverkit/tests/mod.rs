//! The DriverKit client against a fake dext that behaves as the real one's source does.

mod backend;
mod dart;
mod device;
mod fake;
mod filter;
mod interrupts;

use std::sync::Arc;

use fake::{fake, FakeHandle, ADDRESS};

use crate::driverkit::{DextConnection, DextDevice};

/// A claimed fake device and the handle on its dext.
fn open() -> (Arc<DextDevice>, FakeHandle) {
    let (dext, handle) = fake();
    let connection: Arc<dyn DextConnection> = Arc::new(dext);
    let device = DextDevice::open(ADDRESS.parse().unwrap(), connection).unwrap();
    (Arc::new(device), handle)
}
