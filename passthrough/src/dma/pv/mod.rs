//! aperture-dma: the paravirtual PCI function through which a guest driver asks the VMM for
//! DMA mappings of its buffers (`passthrough/docs/dma-window-protocol.md`).
//!
//! The guest writes up to [`protocol::MAX_ENTRIES`] MAP / UNMAP / FLUSH entries into a command
//! page in its RAM, sets `CMD_ADDR` and writes the entry count to `DOORBELL`. The trapped
//! store lands in [`DmaWindowDevice`], which serves every entry from the shared
//! [`WindowManager`] before the guest runs on, and writes each entry's status (and for MAP
//! the device address the host picked) back into the page. Portable: no OS calls.
//!
//! Locking: a doorbell runs inside the trapped BAR write, so it holds this function's own
//! lock (`devices::pci::lock_order::LockLevel::Function`) and, while serving entries, its
//! window manager's lock; nothing another PCI function or the topology needs. A long batch of
//! host maps therefore stalls only accesses to this function.

pub mod protocol;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::config::ConfigError;
use devices::pci::{BarKind, BarRegion, ConfigSpace, PciFunction, PciIds};
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{debug, warn};
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};

use super::{Bytes, DmaError, HostMapper, MapperLimits, WindowManager};
use protocol::{op, reg, CommandEntry, OpWord, Status, ENTRY_DEV_ADDR, ENTRY_SIZE, ENTRY_STATUS};

/// The window manager of one assigned device, shared between its aperture-dma function and
/// the VMM (which prints its statistics when the VM exits).
pub type SharedWindows = Arc<Mutex<WindowManager<Box<dyn HostMapper>>>>;

/// The BAR holding the registers.
const BAR_INDEX: usize = 0;
/// Failures logged one by one before the log thins out.
const WARN_FIRST: u64 = 10;
/// Then one failure in this many is logged.
const WARN_EVERY: u64 = 1000;

/// Why an aperture-dma function cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PvDeviceError {
    /// The configuration space layout failed (a bug, reported rather than panicking).
    #[error("{name}: cannot lay out the aperture-dma configuration space: {source}")]
    Layout {
        /// Device name.
        name: String,
        /// What went wrong.
        source: ConfigError,
    },
    /// The mapper's granule does not fit the 32-bit `GRANULE` register.
    #[error(
        "{name}: the DMA mapper's granule {granule:#x} does not fit the protocol's 32-bit \
         GRANULE register; use a granule of at most 2 GiB"
    )]
    Granule {
        /// Device name.
        name: String,
        /// The mapper's alignment.
        granule: u64,
    },
}

/// Counts failures and says which ones to log: the first [`WARN_FIRST`], then every
/// [`WARN_EVERY`]th, so a guest driver looping on a failing map cannot flood the log.
#[derive(Debug, Default)]
struct WarnLimiter {
    count: u64,
}

impl WarnLimiter {
    /// Counts one failure; returns the note to log it with, or `None` to stay quiet.
    fn next(&mut self) -> Option<String> {
        self.count += 1;
        let n = self.count;
        if n < WARN_FIRST || n % WARN_EVERY == 0 {
            Some(format!("failure {n}"))
        } else if n == WARN_FIRST {
            Some(format!("failure {n}; from now on only every {WARN_EVERY}th is logged"))
        } else {
            None
        }
    }
}

/// The aperture-dma PCI function serving one assigned device's DMA windows.
pub struct DmaWindowDevice {
    name: String,
    config: ConfigSpace,
    windows: SharedWindows,
    memory: GuestMemoryMmap,
    target_rid: Arc<AtomicU32>,
    trace: Option<Arc<dyn TraceSink>>,
    /// The mapper's limits, read once (they never change).
    limits: MapperLimits,
    cmd_addr: u64,
    /// Entries processed by the last doorbell.
    processed: u32,
    /// Result of the last doorbell as a whole.
    status: Status,
    failures: WarnLimiter,
}

impl fmt::Debug for DmaWindowDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaWindowDevice")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("cmd_addr", &format_args!("{:#x}", self.cmd_addr))
            .field("processed", &self.processed)
            .field("status", &self.status)
            .field("failures", &self.failures.count)
            .finish()
    }
}

impl DmaWindowDevice {
    /// An aperture-dma function called `name` (for logs and traces) serving `windows`. It
    /// reads command pages from `memory`; `TARGET_RID` reads `target_rid`, which its creator
    /// keeps up to date ([`protocol::TARGET_RID_UNKNOWN`] until the guest numbers the
    /// target's bus); with `trace`, every entry is recorded ("dma-map", "dma-unmap",
    /// "dma-flush", "dma-bad-op") as are failed doorbells ("dma-doorbell").
    pub fn new(
        name: impl Into<String>,
        windows: SharedWindows,
        memory: GuestMemoryMmap,
        target_rid: Arc<AtomicU32>,
        trace: Option<Arc<dyn TraceSink>>,
    ) -> Result<Self, PvDeviceError> {
        let name = name.into();
        let limits = *windows.lock().unwrap_or_else(|e| e.into_inner()).limits();
        if u32::try_from(limits.alignment).is_err() {
            return Err(PvDeviceError::Granule { name, granule: limits.alignment });
        }
        let ids = PciIds {
            vendor_id: protocol::VENDOR_ID,
            device_id: protocol::DEVICE_ID,
            revision: protocol::VERSION_MAJOR as u8,
            class_code: protocol::CLASS_CODE,
            subsystem_vendor_id: protocol::VENDOR_ID,
            subsystem_id: protocol::DEVICE_ID,
        };
        let mut config = ConfigSpace::new_endpoint(&ids);
        if let Err(source) =
            config.add_memory_bar(BAR_INDEX, protocol::BAR_SIZE, BarKind::Memory32, false)
        {
            return Err(PvDeviceError::Layout { name, source });
        }
        Ok(Self {
            name,
            config,
            windows,
            memory,
            target_rid,
            trace,
            limits,
            cmd_addr: 0,
            processed: 0,
            status: Status::Ok,
            failures: WarnLimiter::default(),
        })
    }

    /// The configuration space (for inspection).
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The window manager this function serves.
    pub fn windows(&self) -> &SharedWindows {
        &self.windows
    }

    fn read_register(&self, offset: u64) -> u32 {
        let limit_bytes = self.limits.max_mapped_bytes;
        match offset {
            reg::MAGIC => protocol::MAGIC,
            reg::VERSION => {
                u32::from(protocol::VERSION_MAJOR) << 16 | u32::from(protocol::VERSION_MINOR)
            }
            reg::FEATURES => protocol::FEATURES,
            reg::TARGET_RID => self.target_rid.load(Ordering::Relaxed),
            reg::LIMIT_BYTES_LO => limit_bytes as u32,
            reg::LIMIT_BYTES_HI => (limit_bytes >> 32) as u32,
            reg::LIMIT_MAPS => self.limits.max_mappings,
            // Checked to fit at construction.
            reg::GRANULE => self.limits.alignment as u32,
            reg::CMD_ADDR_LO => self.cmd_addr as u32,
            reg::CMD_ADDR_HI => (self.cmd_addr >> 32) as u32,
            reg::DOORBELL => self.processed,
            reg::STATUS => self.status.code(),
            reg::MAX_ENTRIES => protocol::MAX_ENTRIES,
            reg::LIVE_MAPS | reg::LIVE_KIB => {
                let stats = self.windows.lock().unwrap_or_else(|e| e.into_inner()).stats();
                let value = if offset == reg::LIVE_MAPS {
                    stats.live_mappings
                } else {
                    stats.live_bytes >> 10
                };
                u32::try_from(value).unwrap_or(u32::MAX)
            }
            _ => {
                debug!("{}: read of BAR0 offset {offset:#x}: no register there", self.name);
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::CMD_ADDR_LO => self.cmd_addr = self.cmd_addr & !0xffff_ffff | u64::from(value),
            reg::CMD_ADDR_HI => {
                self.cmd_addr = self.cmd_addr & 0xffff_ffff | u64::from(value) << 32
            }
            reg::DOORBELL => self.ring(value),
            _ => debug!(
                "{}: write of {value:#x} to BAR0 offset {offset:#x} ignored (read-only or no \
                 register)",
                self.name
            ),
        }
    }

    /// Processes entries `0..count` of the command page.
    fn ring(&mut self, count: u32) {
        self.processed = 0;
        let cmd_addr = self.cmd_addr;
        let page_len = count as usize * ENTRY_SIZE;
        let refused = if count == 0 || count > protocol::MAX_ENTRIES {
            Some((
                Status::Einval,
                format!(
                    "doorbell write of {count}: the count must be 1 to {}",
                    protocol::MAX_ENTRIES
                ),
            ))
        } else if cmd_addr % protocol::COMMAND_PAGE_ALIGN != 0 {
            Some((
                Status::Einval,
                format!("the command page address {cmd_addr:#x} is not 4 KiB aligned"),
            ))
        } else {
            None
        };
        if let Some((status, why)) = refused {
            self.refuse_doorbell(count, status, &why);
            return;
        }
        let mut page = [0u8; protocol::MAX_ENTRIES as usize * ENTRY_SIZE];
        let page = &mut page[..page_len];
        if let Err(e) = self.memory.read_slice(page, GuestAddress(cmd_addr)) {
            let why = format!(
                "the command page {cmd_addr:#x}+{page_len:#x} is not guest RAM ({e}); point \
                 CMD_ADDR at a page of RAM"
            );
            self.refuse_doorbell(count, Status::Erange, &why);
            return;
        }
        // Clone the handle so the lock guard does not borrow `self`. Only this device's
        // windows are locked while the host maps: no PCI-wide lock is held here.
        let windows = self.windows.clone();
        let mut windows = windows.lock().unwrap_or_else(|e| e.into_inner());
        for (index, bytes) in page.chunks_exact(ENTRY_SIZE).enumerate() {
            let mut raw = [0u8; ENTRY_SIZE];
            raw.copy_from_slice(bytes);
            let entry = CommandEntry::from_bytes(&raw);
            let (status, dev_addr) = self.serve(&mut windows, index, &entry);
            let entry_addr = cmd_addr + (index * ENTRY_SIZE) as u64;
            let mut written = self.memory.write_slice(
                &status.code().to_le_bytes(),
                GuestAddress(entry_addr + ENTRY_STATUS as u64),
            );
            // Every MAP gets its dev_addr written (0 when refused), malformed ones too.
            if entry.op & protocol::op_word::OP_MASK == op::MAP {
                written = written.and_then(|()| {
                    self.memory.write_slice(
                        &dev_addr.to_le_bytes(),
                        GuestAddress(entry_addr + ENTRY_DEV_ADDR as u64),
                    )
                });
            }
            if let Err(e) = written {
                // The page was RAM a moment ago; only a changed memory map gets here.
                let why = format!("entry {index}: cannot write the result back: {e}");
                drop(windows);
                self.refuse_doorbell(count, Status::Erange, &why);
                return;
            }
        }
        self.processed = count;
        self.status = Status::Ok;
    }

    /// Fails a doorbell as a whole: nothing processed, `STATUS` says why.
    fn refuse_doorbell(&mut self, count: u32, status: Status, why: &str) {
        self.processed = 0;
        self.status = status;
        if let Some(note) = self.failures.next() {
            warn!("{}: DMA window doorbell refused ({}): {why} ({note})", self.name, status.name());
        }
        self.record(
            "dma-doorbell",
            &[
                ("entries", TraceValue::Int(u64::from(count))),
                ("cmd_addr", TraceValue::Hex(self.cmd_addr)),
                ("status", TraceValue::Str(status.name())),
            ],
        );
    }

    /// Serves one entry; returns its status and, for MAP, the device address (0 on failure).
    fn serve(
        &mut self,
        windows: &mut WindowManager<Box<dyn HostMapper>>,
        index: usize,
        entry: &CommandEntry,
    ) -> (Status, u64) {
        let CommandEntry { addr, len, .. } = *entry;
        let word = match OpWord::decode(entry.op) {
            Ok(word) => word,
            Err(e) => {
                self.warn_entry(index, "command", Status::Einval, &e.to_string());
                self.record(
                    "dma-bad-op",
                    &[
                        ("op", TraceValue::Hex(u64::from(entry.op))),
                        ("status", TraceValue::Str(Status::Einval.name())),
                    ],
                );
                return (Status::Einval, 0);
            }
        };
        match word.op {
            op::NOP => (Status::Ok, 0),
            op::MAP => {
                let constraints = word.constraints();
                let (status, dev_addr) = match windows.map_within(addr, len, &constraints) {
                    Ok(dev_addr) => (Status::Ok, dev_addr),
                    Err(e) => (self.refused(windows, index, "MAP", &e), 0),
                };
                let mut fields = vec![
                    ("gpa", TraceValue::Hex(addr)),
                    ("len", TraceValue::Hex(len)),
                    ("dev_addr", TraceValue::Hex(dev_addr)),
                    ("status", TraceValue::Str(status.name())),
                ];
                if word.mask_bits != 0 {
                    fields.push(("mask_bits", TraceValue::Int(u64::from(word.mask_bits))));
                }
                if word.align_log2 != 0 {
                    fields.push(("align", TraceValue::Hex(1 << word.align_log2)));
                }
                self.record("dma-map", &fields);
                (status, dev_addr)
            }
            op::UNMAP => {
                // Which guest memory it was, for the trace, before it goes.
                let gpa = self.trace.as_ref().and_then(|_| windows.translate(addr));
                let status = if len == 0 || addr.checked_add(len).is_none() {
                    self.warn_entry(
                        index,
                        "UNMAP",
                        Status::Einval,
                        &format!(
                            "DMA unmap of {len:#x} bytes at device address {addr:#x}: an empty \
                             or wrapping range was never mapped"
                        ),
                    );
                    Status::Einval
                } else {
                    match windows.unmap(addr, len) {
                        Ok(()) => Status::Ok,
                        Err(e) => self.refused(windows, index, "UNMAP", &e),
                    }
                };
                let mut fields = vec![
                    ("dev_addr", TraceValue::Hex(addr)),
                    ("len", TraceValue::Hex(len)),
                    ("status", TraceValue::Str(status.name())),
                ];
                if let Some(gpa) = gpa {
                    fields.insert(0, ("gpa", TraceValue::Hex(gpa)));
                }
                self.record("dma-unmap", &fields);
                (status, 0)
            }
            op::FLUSH => {
                let status = match windows.flush_cache() {
                    Ok(()) => Status::Ok,
                    Err(e) => self.refused(windows, index, "FLUSH", &e),
                };
                self.record("dma-flush", &[("status", TraceValue::Str(status.name()))]);
                (status, 0)
            }
            other => {
                let why = format!(
                    "unknown op {other} (this is protocol {}.{}: ops 0 to 3)",
                    protocol::VERSION_MAJOR,
                    protocol::VERSION_MINOR
                );
                self.warn_entry(index, "command", Status::Eopnotsupp, &why);
                self.record(
                    "dma-bad-op",
                    &[
                        ("op", TraceValue::Int(u64::from(other))),
                        ("status", TraceValue::Str(Status::Eopnotsupp.name())),
                    ],
                );
                (Status::Eopnotsupp, 0)
            }
        }
    }

    /// Logs a refused request; returns the status the guest gets.
    fn refused(
        &mut self,
        windows: &WindowManager<Box<dyn HostMapper>>,
        index: usize,
        what: &str,
        error: &DmaError,
    ) -> Status {
        let status = Status::for_error(error);
        if let DmaError::AboveMask { constraints, device_addr, .. }
        | DmaError::Misaligned { constraints, device_addr, .. } = error
        {
            // The numbers a driver developer needs, whatever the wording above them.
            let got = match device_addr {
                Some(d) => format!("device address {d:#x}"),
                None => "no device address".to_string(),
            };
            let why = format!(
                "{error} [device: {}, alignment {}; got {got}]",
                constraints.mask(),
                Bytes(constraints.alignment)
            );
            self.warn_entry(index, what, status, &why);
        } else if status == Status::Enospc {
            // Say what holds the budget: the first line of the summary.
            let stats = windows.stats().to_string();
            let now = stats.lines().next().unwrap_or_default();
            self.warn_entry(index, what, status, &format!("{error}; now: {now}"));
        } else {
            self.warn_entry(index, what, status, &error.to_string());
        }
        status
    }

    fn warn_entry(&mut self, index: usize, what: &str, status: Status, why: &str) {
        if let Some(note) = self.failures.next() {
            warn!(
                "{}: {what} entry {index} refused ({}): {why} ({note})",
                self.name,
                status.name()
            );
        }
    }

    fn record(&self, event: &str, fields: &[(&str, TraceValue<'_>)]) {
        if let Some(trace) = &self.trace {
            trace.record(&TraceRecord { source: &self.name, event, fields });
        }
    }
}

impl PciFunction for DmaWindowDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        // Registers are aligned 32-bit; other accesses read as zero.
        if bar == BAR_INDEX && data.len() == 4 && offset % 4 == 0 && offset < protocol::BAR_SIZE {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            debug!(
                "{}: read of {} bytes at BAR {bar} offset {offset:#x} reads as zero (registers \
                 take aligned 32-bit accesses)",
                self.name,
                data.len()
            );
            data.fill(0);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(value) if bar == BAR_INDEX && offset % 4 == 0 && offset < protocol::BAR_SIZE => {
                self.write_register(offset, u32::from_le_bytes(value));
            }
            _ => debug!(
                "{}: write of {} bytes at BAR {bar} offset {offset:#x} ignored (registers take \
                 aligned 32-bit accesses)",
                self.name,
                data.len()
            ),
        }
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    /// A reboot: every window the last boot's driver mapped is unmapped (the next boot's
    /// driver starts from none), the registers go back to power-on.
    fn system_reset(&mut self) {
        let reset = self.windows.lock().unwrap_or_else(|e| e.into_inner()).reset();
        if let Err(e) = reset {
            log::warn!("{}: unmapping the DMA windows for the reboot: {e}", self.name);
        }
        self.config.reset();
        self.cmd_addr = 0;
        self.processed = 0;
        self.status = Status::Ok;
    }
}
