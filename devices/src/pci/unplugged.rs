//! What stands in for a function after its device left (surprise removal): guest accesses
//! that were already on their way, or that hit its old BAR addresses, read all-ones and
//! writes are dropped, with one warning.

use std::ops::RangeInclusive;

use log::{debug, warn};

use super::config::BarRegion;
use super::PciFunction;

/// A removed function.
#[derive(Debug)]
pub(crate) struct Unplugged {
    name: String,
    /// The BARs it decoded when it left: accesses there still reach it (and are dropped)
    /// until a new device takes its place.
    regions: Vec<BarRegion>,
    warned: bool,
}

impl Unplugged {
    pub(crate) fn new(name: &str, regions: Vec<BarRegion>) -> Self {
        Self { name: name.to_string(), regions, warned: false }
    }

    fn dropped(&mut self, what: &str, bar: usize, offset: u64) {
        if std::mem::replace(&mut self.warned, true) {
            debug!("{}: {what} of BAR {bar} at {offset:#x} after removal", self.name);
        } else {
            warn!(
                "{}: the guest accessed BAR {bar} at {offset:#x} after the device was removed; \
                 reads return all-ones and writes are dropped (warned once)",
                self.name
            );
        }
    }
}

impl PciFunction for Unplugged {
    fn name(&self) -> &str {
        &self.name
    }

    fn config_read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn config_write(&mut self, _offset: u16, _data: &[u8]) {}

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.dropped("read", bar, offset);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, _data: &[u8]) {
        self.dropped("write", bar, offset);
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.regions.clone()
    }

    fn bridge_buses(&self) -> Option<RangeInclusive<u8>> {
        None
    }
}
