//! [`DartMapper`]: guest RAM mapped for device DMA through the dext (RegisterDMARegion), at bus
//! addresses the DART picks, within the DART's limits.
//!
//! Every request is checked against the limits, the guest RAM map and the dext's own bounds
//! before the dext sees it: a bad request reaches the DART mapper in the kernel, which can
//! panic the host. The bus address the dext returns is checked too before anyone uses it.

use std::collections::BTreeMap;
use std::sync::Arc;

use log::{debug, warn};

use super::connection::{call_exact, DextConnection};
use super::protocol::{Selector, DART_PAGE_SIZE, DMA_CHUNK_SIZE, MAX_DMA_REGIONS};
use crate::dma::{AddressPolicy, Bytes, HostMapper, MapperError, MapperLimits};
use crate::host::RamRegion;

/// A live DMA region.
#[derive(Debug, Clone, Copy)]
struct Region {
    len: u64,
    gpa: u64,
    /// The handle the dext knows it by.
    key: u64,
}

/// Maps guest RAM for a device's DMA through the dext's DART mappings.
#[derive(Debug)]
pub struct DartMapper {
    connection: Arc<dyn DextConnection>,
    ram: Vec<RamRegion>,
    limits: MapperLimits,
    /// Live regions by bus address.
    live: BTreeMap<u64, Region>,
    live_bytes: u64,
    next_key: u64,
}

impl DartMapper {
    /// A mapper over `ram` (which must stay mapped while regions live) through `connection`
    /// (a claimed device), with `limits` ([`MapperLimits::APPLE_DART`] normally; `policy` is
    /// ignored: the DART always picks). Limits beyond the DART's are refused: the host may
    /// panic past them.
    pub fn new(
        connection: Arc<dyn DextConnection>,
        ram: Vec<RamRegion>,
        limits: MapperLimits,
    ) -> Result<Self, MapperError> {
        let limits = MapperLimits { policy: AddressPolicy::HostPicks, ..limits };
        limits.validate()?;
        let dart = MapperLimits::APPLE_DART;
        let invalid = |why: String| Err(MapperError::InvalidLimits(why));
        if limits.alignment < DART_PAGE_SIZE {
            return invalid(format!(
                "the DART maps {} pages; set dma-align to at least 16K",
                Bytes(DART_PAGE_SIZE)
            ));
        }
        if limits.max_mapped_bytes > dart.max_mapped_bytes {
            return invalid(format!(
                "dma-limit {} is more than the {} the DART maps through DriverKit; the host \
                 can panic past it, so keep dma-limit at 1536M or less",
                Bytes(limits.max_mapped_bytes),
                Bytes(dart.max_mapped_bytes)
            ));
        }
        if limits.max_mappings > MAX_DMA_REGIONS {
            return invalid(format!(
                "dma-max-maps {} is more than the DriverKit extension's {MAX_DMA_REGIONS} DMA \
                 regions; lower it",
                limits.max_mappings
            ));
        }
        Ok(Self { connection, ram, limits, live: BTreeMap::new(), live_bytes: 0, next_key: 1 })
    }

    /// Bytes mapped now.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Regions live now.
    pub fn live_mappings(&self) -> usize {
        self.live.len()
    }

    /// The host address to register for `[gpa, gpa+len)`, or why the dext must not see it.
    fn check(&self, gpa: u64, len: u64) -> Result<u64, String> {
        let align = self.limits.alignment;
        if len == 0 || gpa & (align - 1) != 0 || len & (align - 1) != 0 {
            return Err(format!(
                "the range is not a non-empty multiple of the {} granule",
                Bytes(align)
            ));
        }
        if len > DMA_CHUNK_SIZE {
            return Err(format!(
                "{} is more than the {} the DriverKit extension maps device-contiguously",
                Bytes(len),
                Bytes(DMA_CHUNK_SIZE)
            ));
        }
        let max_maps = self.limits.max_mappings;
        if self.live.len() >= max_maps as usize {
            return Err(format!("{max_maps} mappings are live, the DART's limit"));
        }
        let max_bytes = self.limits.max_mapped_bytes;
        if self.live_bytes.checked_add(len).is_none_or(|total| total > max_bytes) {
            return Err(format!(
                "{} are mapped, {} more would pass the DART's {} limit",
                Bytes(self.live_bytes),
                Bytes(len),
                Bytes(max_bytes)
            ));
        }
        let host =
            RamRegion::host_addr_of(&self.ram, gpa, len).ok_or("the range is not guest RAM")?;
        if host & (align - 1) != 0 {
            return Err(format!(
                "its host address {host:#x} is not {}-aligned (guest RAM is mapped unaligned)",
                Bytes(align)
            ));
        }
        Ok(host)
    }

    /// Why the dext's answer for a `len`-byte region cannot be used, if it cannot.
    fn bad_reply(&self, reply: [u64; 3], len: u64) -> Option<String> {
        let [segments, bus, bus_len] = reply;
        if segments != 1 || bus_len != len {
            return Some(format!("{segments} segments, the first {bus_len:#x} bytes long"));
        }
        if bus == 0 || bus & (DART_PAGE_SIZE - 1) != 0 || bus.checked_add(len).is_none() {
            return Some(format!("bus address {bus:#x}"));
        }
        let before = self.live.range(..bus + len).next_back();
        if let Some((&start, region)) = before.filter(|(&s, r)| s + r.len > bus) {
            return Some(format!(
                "bus address {bus:#x}, inside the live region at {start:#x}+{:#x}",
                region.len
            ));
        }
        None
    }
}

impl HostMapper for DartMapper {
    fn limits(&self) -> &MapperLimits {
        &self.limits
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        let failed = |reason: String| MapperError::MapFailed { gpa, len, reason };
        let host = self.check(gpa, len).map_err(failed)?;
        let key = self.next_key;
        self.next_key += 1;
        let input = [key, host, len];
        let reply = call_exact::<3>(self.connection.as_ref(), Selector::RegisterDmaRegion, &input)
            .map_err(|e| failed(e.to_string()))?;
        if let Some(why) = self.bad_reply(reply, len) {
            // Not device-contiguous or not usable: give it back before reporting.
            if let Err(e) = self.connection.call(Selector::UnregisterDmaRegion, &[key], &mut []) {
                warn!("DMA region {key} (guest {gpa:#x}+{len:#x}) could not be released: {e}");
            }
            return Err(failed(format!("the DriverKit extension returned {why}")));
        }
        let bus = reply[1];
        debug!("DART map: guest {gpa:#x}+{len:#x} at bus {bus:#x} (region {key})");
        self.live.insert(bus, Region { len, gpa, key });
        self.live_bytes += len;
        Ok(bus)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        let failed = |reason: String| MapperError::UnmapFailed { device_addr, len, reason };
        let region = match self.live.get(&device_addr) {
            Some(&region) if region.len == len => region,
            Some(region) => {
                return Err(failed(format!(
                    "the mapping there (guest {:#x}) is {:#x} bytes long",
                    region.gpa, region.len
                )))
            }
            None => return Err(failed("no mapping starts there".to_string())),
        };
        // On failure the region stays, counted, and the caller may retry.
        self.connection
            .call(Selector::UnregisterDmaRegion, &[region.key], &mut [])
            .map_err(|e| failed(e.to_string()))?;
        self.live.remove(&device_addr);
        self.live_bytes -= len;
        Ok(())
    }
}
