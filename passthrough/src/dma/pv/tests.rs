//! The aperture-dma function driven as a guest driver would: through PCI accesses and a
//! command page in guest RAM, over a fake host-picks mapper.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::PciFunction;
use devices::trace::{format_record, TraceFormat, TraceRecord, TraceSink};
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};

use super::protocol::{self, op, reg, CommandEntry, OpWord, Status, ENTRY_SIZE};
use super::{DmaWindowDevice, SharedWindows, WarnLimiter};
use crate::dma::testing::{FakeMapper, FAKE_APERTURE_BASE};
use crate::dma::tests::XorShift;
use crate::dma::{
    AddressPolicy, GuestRamRange, HostMapper, MapConstraints, MapperError, MapperLimits,
    WindowConfig, WindowManager,
};

const K4: u64 = 4 << 10;
const K16: u64 = 16 << 10;
const K64: u64 = 64 << 10;
const RAM_BASE: u64 = 0x4000_0000;
const RAM_LEN: u64 = 16 << 20;
const BUDGET: u64 = 1 << 20;
const MAX_MAPS: u32 = 64;
const CMD_PAGE: u64 = RAM_BASE + 0x1000;

/// A fake mapper the test can still inspect after the window manager took it.
#[derive(Debug)]
struct SharedFake {
    limits: MapperLimits,
    fake: Arc<Mutex<FakeMapper>>,
}

impl HostMapper for SharedFake {
    fn limits(&self) -> &MapperLimits {
        &self.limits
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        self.fake.lock().unwrap().map(gpa, len)
    }

    fn map_within(
        &mut self,
        gpa: u64,
        len: u64,
        constraints: &MapConstraints,
    ) -> Result<u64, MapperError> {
        self.fake.lock().unwrap().map_within(gpa, len, constraints)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        self.fake.lock().unwrap().unmap(device_addr, len)
    }
}

/// Keeps trace lines as text.
#[derive(Debug, Default)]
struct Lines(Mutex<Vec<String>>);

impl TraceSink for Lines {
    fn record(&self, record: &TraceRecord<'_>) {
        self.0.lock().unwrap().push(format_record(TraceFormat::Text, 0.0, record));
    }
}

struct Rig {
    dev: DmaWindowDevice,
    mem: GuestMemoryMmap,
    windows: SharedWindows,
    fake: Arc<Mutex<FakeMapper>>,
    rid: Arc<AtomicU32>,
    trace: Arc<Lines>,
}

fn rig() -> Rig {
    rig_with(AddressPolicy::HostPicks)
}

fn rig_with(policy: AddressPolicy) -> Rig {
    let limits =
        MapperLimits { max_mapped_bytes: BUDGET, max_mappings: MAX_MAPS, alignment: K16, policy };
    let fake = Arc::new(Mutex::new(FakeMapper::new(limits)));
    let mapper: Box<dyn HostMapper> = Box::new(SharedFake { limits, fake: fake.clone() });
    let config = WindowConfig { window_size: K64, cache_released: true };
    let ram = [GuestRamRange { start: RAM_BASE, len: RAM_LEN }];
    let windows = Arc::new(Mutex::new(WindowManager::new(mapper, config, &ram).unwrap()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_LEN as usize)]).unwrap();
    let rid = Arc::new(AtomicU32::new(protocol::TARGET_RID_UNKNOWN));
    let trace = Arc::new(Lines::default());
    let sink: Arc<dyn TraceSink> = trace.clone();
    let dev = DmaWindowDevice::new(
        "aperture-dma0",
        windows.clone(),
        mem.clone(),
        rid.clone(),
        Some(sink),
    )
    .unwrap();
    Rig { dev, mem, windows, fake, rid, trace }
}

impl Rig {
    fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0xaa; 4];
        self.dev.bar_read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.dev.bar_write(0, offset, &value.to_le_bytes());
    }

    fn set_cmd_addr(&mut self, addr: u64) {
        self.write(reg::CMD_ADDR_LO, addr as u32);
        self.write(reg::CMD_ADDR_HI, (addr >> 32) as u32);
    }

    /// Writes `entries` into the command page, rings, and returns them as the device left them.
    fn submit(&mut self, entries: &[CommandEntry]) -> Vec<CommandEntry> {
        for (i, e) in entries.iter().enumerate() {
            let at = CMD_PAGE + (i * ENTRY_SIZE) as u64;
            self.mem.write_slice(&e.to_bytes(), GuestAddress(at)).unwrap();
        }
        self.set_cmd_addr(CMD_PAGE);
        self.write(reg::DOORBELL, entries.len() as u32);
        assert_eq!(self.read(reg::STATUS), 0, "doorbell failed");
        assert_eq!(self.read(reg::DOORBELL), entries.len() as u32);
        self.entries(entries.len())
    }

    fn entries(&self, n: usize) -> Vec<CommandEntry> {
        (0..n)
            .map(|i| {
                let mut b = [0u8; ENTRY_SIZE];
                self.mem
                    .read_slice(&mut b, GuestAddress(CMD_PAGE + (i * ENTRY_SIZE) as u64))
                    .unwrap();
                CommandEntry::from_bytes(&b)
            })
            .collect()
    }

    fn translate(&self, dev_addr: u64) -> Option<u64> {
        self.windows.lock().unwrap().translate(dev_addr)
    }

    /// The manager's invariants hold and the fake saw no broken rule.
    fn check(&self) {
        let windows = self.windows.lock().unwrap();
        windows.check_invariants().unwrap();
        let fake = self.fake.lock().unwrap();
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        let stats = windows.stats();
        assert_eq!(stats.live_bytes, fake.live_bytes());
        assert_eq!(stats.live_mappings, fake.live_count() as u64);
        assert!(stats.live_bytes <= BUDGET && stats.live_mappings <= u64::from(MAX_MAPS));
    }
}

fn map(addr: u64, len: u64) -> CommandEntry {
    CommandEntry { op: op::MAP, addr, len, status: 0xdead, dev_addr: 0xdead }
}

/// A 1.1 MAP with the device's mask width and alignment (0: not given).
fn map_for(addr: u64, len: u64, mask_bits: u8, align_log2: u8) -> CommandEntry {
    CommandEntry { op: OpWord::map(mask_bits, align_log2), ..map(addr, len) }
}

fn unmap(addr: u64, len: u64) -> CommandEntry {
    CommandEntry { op: op::UNMAP, addr, len, status: 0xdead, dev_addr: 0xdead }
}

fn status(e: &CommandEntry) -> Status {
    Status::from_code(e.status).unwrap_or_else(|| panic!("bad status {}", e.status))
}

#[test]
fn config_space_is_the_specs() {
    let mut r = rig();
    let mut cfg = |offset: u16| {
        let mut b = [0; 4];
        r.dev.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(cfg(0x00), 0xa9e0_1234);
    assert_eq!(cfg(0x08), 0x0880_0001, "class 0x088000, revision = major version 1");
    assert_eq!(cfg(0x10), 0, "BAR0: 32-bit, non-prefetchable memory");
    assert_eq!(cfg(0x14), 0, "no BAR1");
    assert_eq!(cfg(0x3c) >> 8 & 0xff, 0, "no interrupt pin");
    r.dev.config_write(0x10, &u32::MAX.to_le_bytes());
    let mut b = [0; 4];
    r.dev.config_read(0x10, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xffff_f000, "4 KiB");
    assert!(r.dev.bar_regions().is_empty(), "memory space disabled");
    r.dev.config_write(0x10, &0x1000_0000u32.to_le_bytes());
    r.dev.config_write(0x04, &2u16.to_le_bytes());
    let regions = r.dev.bar_regions();
    assert_eq!(regions.len(), 1);
    let bar = regions[0];
    assert_eq!((bar.index, bar.address, bar.size), (0, 0x1000_0000, 0x1000));
    assert!(!bar.prefetchable && !bar.is_64bit);
    assert_eq!(r.dev.name(), "aperture-dma0");
}

#[test]
fn registers_read_back() {
    let mut r = rig();
    assert_eq!(r.read(reg::MAGIC), 0x4d44_5041);
    assert_eq!(&r.read(reg::MAGIC).to_le_bytes(), b"APDM");
    assert_eq!(r.read(reg::VERSION), 0x0001_0001, "1.1");
    assert_eq!(r.read(reg::FEATURES), 0b1111, "BATCH, FLUSH, MASK, ALIGN");
    assert_eq!(r.read(reg::TARGET_RID), 0xffff_ffff);
    r.rid.store(0x0100, Ordering::Relaxed);
    assert_eq!(r.read(reg::TARGET_RID), 0x0100, "follows what the VMM stores");
    assert_eq!(r.read(reg::LIMIT_BYTES_LO), BUDGET as u32);
    assert_eq!(r.read(reg::LIMIT_BYTES_HI), 0);
    assert_eq!(r.read(reg::LIMIT_MAPS), MAX_MAPS);
    assert_eq!(r.read(reg::GRANULE), K16 as u32);
    assert_eq!(r.read(reg::MAX_ENTRIES), 128);
    assert_eq!((r.read(reg::DOORBELL), r.read(reg::STATUS)), (0, 0));
    assert_eq!((r.read(reg::LIVE_MAPS), r.read(reg::LIVE_KIB)), (0, 0));
    r.set_cmd_addr(0x1_2345_6000);
    assert_eq!((r.read(reg::CMD_ADDR_LO), r.read(reg::CMD_ADDR_HI)), (0x2345_6000, 1));
    // Read-only registers ignore writes; past the registers reads are zero.
    r.write(reg::MAGIC, 0);
    r.write(reg::LIMIT_MAPS, 1);
    assert_eq!((r.read(reg::MAGIC), r.read(reg::LIMIT_MAPS)), (protocol::MAGIC, MAX_MAPS));
    assert_eq!(r.read(0x3c), 0);
    assert_eq!(r.read(0xffc), 0);
    // Only aligned 32-bit accesses to BAR0 reach registers.
    let mut b = [0xaa; 2];
    r.dev.bar_read(0, reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xaa; 8];
    r.dev.bar_read(0, reg::MAGIC, &mut b);
    assert_eq!(b, [0; 8]);
    let mut b = [0xaa; 4];
    r.dev.bar_read(0, reg::MAGIC + 2, &mut b);
    assert_eq!(b, [0; 4]);
    r.dev.bar_read(1, reg::MAGIC, &mut b);
    assert_eq!(b, [0; 4]);
    r.dev.bar_write(0, reg::CMD_ADDR_LO, &[0x55; 2]);
    r.dev.bar_write(0, reg::CMD_ADDR_LO + 1, &[0x55; 4]);
    r.dev.bar_write(0, reg::CMD_ADDR_LO, &[0x55; 8]);
    assert_eq!(r.read(reg::CMD_ADDR_LO), 0x2345_6000, "bad writes ignored");
}

#[test]
fn a_batch_of_maps_returns_translating_device_addresses() {
    let mut r = rig();
    let requests: Vec<(u64, u64)> = (0..20u64)
        .map(|i| (RAM_BASE + 0x10_0000 + i * 0x9_3000 + i * 0x123, K4 * (1 + i % 5) + i))
        .collect();
    let entries: Vec<CommandEntry> = requests.iter().map(|&(a, l)| map(a, l)).collect();
    let done = r.submit(&entries);
    for (e, &(gpa, len)) in done.iter().zip(&requests) {
        assert_eq!(status(e), Status::Ok, "{e:x?}");
        assert_ne!(e.dev_addr, gpa);
        assert!(e.dev_addr >= FAKE_APERTURE_BASE, "{e:x?}");
        assert_eq!((e.op, e.addr, e.len), (op::MAP, gpa, len), "inputs left alone");
        assert_eq!(r.translate(e.dev_addr), Some(gpa));
        assert_eq!(r.translate(e.dev_addr + len - 1), Some(gpa + len - 1));
        assert_eq!(r.fake.lock().unwrap().translate(e.dev_addr + len - 1), Some(gpa + len - 1));
    }
    let stats = r.windows.lock().unwrap().stats();
    assert_eq!(stats.live_requests, 20);
    assert_eq!(u64::from(r.read(reg::LIVE_MAPS)), stats.live_mappings);
    assert_eq!(u64::from(r.read(reg::LIVE_KIB)), stats.live_bytes >> 10);
    assert!(stats.live_mappings > 0);
    r.check();

    let unmaps: Vec<CommandEntry> =
        done.iter().zip(&requests).map(|(e, &(_, len))| unmap(e.dev_addr, len)).collect();
    let undone = r.submit(&unmaps);
    assert!(undone.iter().all(|e| status(e) == Status::Ok), "{undone:x?}");
    assert!(undone.iter().all(|e| e.dev_addr == 0xdead), "UNMAP leaves dev_addr alone");
    let stats = r.windows.lock().unwrap().stats();
    assert_eq!((stats.live_requests, stats.pinned_bytes), (0, 0));
    // The windows stay cached until FLUSH.
    assert!(r.read(reg::LIVE_MAPS) > 0);
    let flushed = r.submit(&[CommandEntry { op: op::FLUSH, ..CommandEntry::default() }]);
    assert_eq!(status(&flushed[0]), Status::Ok);
    assert_eq!((r.read(reg::LIVE_MAPS), r.read(reg::LIVE_KIB)), (0, 0));
    r.check();

    let trace = r.trace.0.lock().unwrap();
    assert_eq!(trace.len(), 41, "one line per entry");
    assert!(trace[0].contains("aperture-dma0  dma-map"), "{}", trace[0]);
    assert!(trace[0].contains(&format!("gpa={:#x}", requests[0].0)), "{}", trace[0]);
    assert!(trace[0].contains(&format!("dev_addr={:#x} status=OK", done[0].dev_addr)));
    assert!(trace[20].contains("dma-unmap") && trace[20].contains("gpa="), "{}", trace[20]);
    assert!(trace[40].contains("dma-flush") && trace[40].ends_with("status=OK"), "{}", trace[40]);
}

#[test]
fn every_entry_gets_its_own_status() {
    let mut r = rig();
    let good = map(RAM_BASE + 0x5000, 100);
    let entries = [
        unmap(FAKE_APERTURE_BASE + 0x4000, K4), // never mapped
        map(RAM_BASE, BUDGET + K16),            // larger than the budget
        map(RAM_BASE - K4, 2 * K4),             // starts below RAM
        map(RAM_BASE + RAM_LEN - K4, 2 * K4),   // runs past RAM
        map(0x1_0000_0000, K4),                 // nowhere near RAM
        good,
        map(RAM_BASE + 0x8000, 0),                         // zero length
        map(u64::MAX - K4, 2 * K4),                        // wraps
        unmap(FAKE_APERTURE_BASE, 0),                      // zero length
        unmap(u64::MAX - 1, 4),                            // wraps
        CommandEntry { op: 7, ..CommandEntry::default() }, // unknown op
        CommandEntry { op: u32::MAX, ..CommandEntry::default() },
        CommandEntry { op: op::NOP, status: 0xdead, ..CommandEntry::default() },
    ];
    let done = r.submit(&entries);
    let statuses: Vec<Status> = done.iter().map(status).collect();
    use Status::*;
    assert_eq!(
        statuses,
        [
            Enoent, Enospc, Erange, Erange, Erange, Ok, Einval, Einval, Einval, Einval, Eopnotsupp,
            Eopnotsupp, Ok
        ]
    );
    assert_eq!(done[1].dev_addr, 0, "failed MAPs return no address");
    assert!(done[5].dev_addr >= FAKE_APERTURE_BASE);
    assert_eq!(r.translate(done[5].dev_addr + 99), Some(RAM_BASE + 0x5000 + 99));
    // Unmap with the wrong length is unknown too, and leaves the mapping.
    let again = r.submit(&[unmap(done[5].dev_addr, 99), unmap(done[5].dev_addr, 100)]);
    assert_eq!([status(&again[0]), status(&again[1])], [Enoent, Ok]);
    assert_eq!(r.submit(&[unmap(done[5].dev_addr, 100)])[0].status, Enoent.code(), "twice");
    let failures = r.windows.lock().unwrap().stats().failures;
    assert_eq!(failures.not_mapped, 3);
    assert_eq!(failures.outside_guest_ram, 3);
    r.check();
}

#[test]
fn a_full_budget_is_enospc_and_host_refusals_are_eio() {
    let mut r = rig();
    let chunk = BUDGET / 4;
    let fill: Vec<CommandEntry> = (0..4).map(|i| map(RAM_BASE + i * chunk, chunk)).collect();
    let done = r.submit(&fill);
    assert!(done.iter().all(|e| status(e) == Status::Ok), "{done:x?}");
    assert_eq!(u64::from(r.read(reg::LIVE_KIB)), BUDGET >> 10);
    let more = r.submit(&[map(RAM_BASE + (8 << 20), K4)]);
    assert_eq!(status(&more[0]), Status::Enospc);
    r.submit(&[unmap(done[0].dev_addr, chunk)]);
    r.fake.lock().unwrap().fail_next_maps(1);
    let failed = r.submit(&[map(RAM_BASE + (8 << 20), K4)]);
    assert_eq!(status(&failed[0]), Status::Eio);
    let ok = r.submit(&[map(RAM_BASE + (8 << 20), K4)]);
    assert_eq!(status(&ok[0]), Status::Ok, "room after the unmap (evicting the cache)");
    r.check();
}

#[test]
fn bad_doorbells_fail_as_a_whole() {
    let mut r = rig();
    let entry = map(RAM_BASE + 0x2_0000, K4);
    r.mem.write_slice(&entry.to_bytes(), GuestAddress(CMD_PAGE)).unwrap();
    r.set_cmd_addr(CMD_PAGE);
    for count in [0, 129, 1000, u32::MAX] {
        r.write(reg::DOORBELL, count);
        assert_eq!(r.read(reg::STATUS), Status::Einval.code(), "doorbell {count}");
        assert_eq!(r.read(reg::DOORBELL), 0);
    }
    assert_eq!(r.entries(1)[0], entry, "nothing processed");
    // Misaligned command page.
    r.set_cmd_addr(CMD_PAGE + 0x20);
    r.write(reg::DOORBELL, 1);
    assert_eq!((r.read(reg::STATUS), r.read(reg::DOORBELL)), (Status::Einval.code(), 0));
    // Command pages outside guest RAM, or running out of it.
    for addr in [0, RAM_BASE - 0x1000, RAM_BASE + RAM_LEN, 0xffff_ffff_ffff_f000] {
        r.set_cmd_addr(addr);
        r.write(reg::DOORBELL, 1);
        assert_eq!(r.read(reg::STATUS), Status::Erange.code(), "{addr:#x}");
        assert_eq!(r.read(reg::DOORBELL), 0);
    }
    r.set_cmd_addr(RAM_BASE + RAM_LEN - 0x1000);
    r.write(reg::DOORBELL, 128);
    assert_eq!(r.read(reg::STATUS), 0, "a full page at the very end of RAM");
    assert_eq!(r.read(reg::DOORBELL), 128);
    // A good doorbell clears the status.
    r.set_cmd_addr(CMD_PAGE);
    r.write(reg::DOORBELL, 1);
    assert_eq!((r.read(reg::STATUS), r.read(reg::DOORBELL)), (0, 1));
    assert_eq!(status(&r.entries(1)[0]), Status::Ok);
    assert_eq!(r.windows.lock().unwrap().stats().map_requests, 1);
    let trace = r.trace.0.lock().unwrap();
    assert!(trace[0].contains("dma-doorbell") && trace[0].contains("status=EINVAL"));
    assert!(trace.iter().any(|l| l.contains("cmd_addr=0x0 status=ERANGE")), "{trace:?}");
    drop(trace);
    r.check();
}

#[test]
fn status_codes_follow_the_spec() {
    for (code, name) in [
        (0, "OK"),
        (1, "EINVAL"),
        (2, "ENOSPC"),
        (3, "ERANGE"),
        (4, "ENOENT"),
        (5, "EIO"),
        (6, "EOPNOTSUPP"),
        (7, "EMASK"),
        (8, "EALIGN"),
    ] {
        let status = Status::from_code(code).unwrap();
        assert_eq!((status.code(), status.name()), (code, name));
    }
    assert_eq!(Status::from_code(9), None);
    let e = CommandEntry { op: 1, status: 2, addr: 3, len: 4, dev_addr: 0x0102_0304_0506_0708 };
    let bytes = e.to_bytes();
    assert_eq!(bytes[24..32], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(CommandEntry::from_bytes(&bytes), e);
}

#[test]
fn warnings_thin_out() {
    let mut limiter = WarnLimiter::default();
    let logged: Vec<u64> = (1..=5000u64).filter(|_| limiter.next().is_some()).collect();
    assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1000, 2000, 3000, 4000, 5000]);
}

#[test]
fn a_trace_is_optional() {
    let r = rig();
    let mut dev =
        DmaWindowDevice::new("quiet", r.windows.clone(), r.mem.clone(), r.rid.clone(), None)
            .unwrap();
    r.mem.write_slice(&map(RAM_BASE, K4).to_bytes(), GuestAddress(CMD_PAGE)).unwrap();
    dev.bar_write(0, reg::CMD_ADDR_LO, &(CMD_PAGE as u32).to_le_bytes());
    dev.bar_write(0, reg::DOORBELL, &1u32.to_le_bytes());
    assert_eq!(status(&r.entries(1)[0]), Status::Ok);
    assert!(format!("{dev:?}").contains("quiet"));
}

/// Random register accesses, command pages and doorbells: nothing panics, every entry gets a
/// valid status, and the manager and the fake agree throughout.
#[test]
fn random_guests_never_break_it() {
    for seed in 0..8 {
        let mut r = rig();
        let mut rng = XorShift::new(seed);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for step in 0..1_500 {
            if rng.chance(2) {
                // The host refuses now and then.
                let mut fake = r.fake.lock().unwrap();
                if rng.chance(50) {
                    fake.fail_next_maps(1);
                } else {
                    fake.fail_next_unmaps(1);
                }
            }
            match rng.below(10) {
                0 => {
                    // Any access anywhere in (and past) BAR0 or another BAR.
                    let bar = if rng.chance(90) { 0 } else { rng.below(6) as usize };
                    let offset = rng.below(0x1100);
                    let mut data = vec![0; [1, 2, 4, 8][rng.below(4) as usize]];
                    if rng.chance(50) {
                        r.dev.bar_read(bar, offset, &mut data);
                    } else {
                        data.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
                        r.dev.bar_write(bar, offset, &data);
                    }
                }
                1 => {
                    // Configuration space, including BAR0 and the command register.
                    let offset = rng.below(0x1010) as u16;
                    let value = (rng.next_u64() as u32).to_le_bytes();
                    let len = [1, 2, 4][rng.below(3) as usize];
                    if rng.chance(50) {
                        r.dev.config_write(offset, &value[..len]);
                    } else {
                        let mut data = [0; 4];
                        r.dev.config_read(offset, &mut data[..len]);
                    }
                }
                2 => {
                    // A doorbell with any count at any address. Old batches are wiped first so
                    // that they are not replayed behind `live`'s back: RAM holds NOPs.
                    r.mem.write_slice(&[0; 4096], GuestAddress(CMD_PAGE)).unwrap();
                    let ram_page = RAM_BASE + rng.below(RAM_LEN) / 4096 * 4096;
                    let addr = [CMD_PAGE, rng.next_u64(), ram_page, ram_page + 4 * rng.below(1024)]
                        [rng.below(4) as usize];
                    r.set_cmd_addr(addr);
                    let count =
                        [rng.below(130) as u32, rng.next_u64() as u32][rng.below(2) as usize];
                    r.write(reg::DOORBELL, count);
                    let status = Status::from_code(r.read(reg::STATUS));
                    assert!(status.is_some(), "seed {seed} step {step}");
                }
                _ => {
                    // A plausible batch, with garbage mixed in.
                    let n = 1 + rng.below(16) as usize;
                    let mut entries = Vec::with_capacity(n);
                    let mut from_live = Vec::with_capacity(n);
                    for _ in 0..n {
                        from_live.push(false);
                        let e = match rng.below(12) {
                            0..=4 => {
                                let gpa = RAM_BASE + rng.below(RAM_LEN);
                                let len = if rng.chance(80) {
                                    1 + rng.below(2 * K16)
                                } else {
                                    rng.below(RAM_LEN)
                                };
                                map(gpa, len)
                            }
                            5..=7 if !live.is_empty() => {
                                let (d, l) =
                                    live.swap_remove(rng.below(live.len() as u64) as usize);
                                from_live[entries.len()] = true;
                                unmap(d, l)
                            }
                            8 => CommandEntry { op: op::FLUSH, ..CommandEntry::default() },
                            9 => unmap(rng.next_u64(), rng.next_u64() >> rng.below(64)),
                            10 => map(rng.next_u64(), rng.next_u64() >> rng.below(64)),
                            _ => CommandEntry {
                                op: rng.below(8) as u32,
                                status: rng.next_u64() as u32,
                                addr: rng.next_u64(),
                                len: rng.next_u64(),
                                dev_addr: rng.next_u64(),
                            },
                        };
                        entries.push(e);
                    }
                    let done = r.submit(&entries);
                    for ((e, asked), from_live) in done.iter().zip(&entries).zip(&from_live) {
                        let s = Status::from_code(e.status);
                        assert!(s.is_some(), "seed {seed} step {step}: {e:x?}");
                        if asked.op == op::MAP && s == Some(Status::Ok) {
                            assert_eq!(r.translate(e.dev_addr), Some(asked.addr));
                            live.push((e.dev_addr, asked.len));
                        }
                        if *from_live {
                            // A host unmap failure still releases the request.
                            let ok = matches!(s, Some(Status::Ok | Status::Eio));
                            assert!(ok, "seed {seed} step {step}: {e:x?}");
                        }
                    }
                }
            }
            if step % 100 == 0 {
                r.check();
            }
        }
        // Everything the guest still holds unmaps cleanly.
        r.fake.lock().unwrap().fail_next_maps(0);
        r.fake.lock().unwrap().fail_next_unmaps(0);
        for (d, l) in live.drain(..) {
            assert_eq!(r.windows.lock().unwrap().unmap(d, l), Ok(()), "seed {seed}");
        }
        let stats = r.windows.lock().unwrap().stats();
        assert_eq!(stats.pinned_bytes, 0, "seed {seed}");
        // The run reached the interesting places: a full budget, every kind of refusal.
        assert_eq!(stats.peak_pinned_bytes, BUDGET, "seed {seed}: {stats}");
        let f = &stats.failures;
        let kinds = [f.zero_length, f.overflow, f.outside_guest_ram, f.too_large, f.no_room];
        assert!(kinds.iter().all(|&n| n > 0), "seed {seed}: {stats}");
        assert!(f.not_mapped > 0 && f.host_map > 0 && f.host_unmap > 0, "seed {seed}: {stats}");
        r.check();
    }
}

/// A mapper whose maps, once armed, block until the test releases them: a slow host map.
#[derive(Debug)]
struct BlockingMapper {
    inner: FakeMapper,
    armed: Arc<std::sync::atomic::AtomicBool>,
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

impl HostMapper for BlockingMapper {
    fn limits(&self) -> &MapperLimits {
        self.inner.limits()
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        if self.armed.load(Ordering::SeqCst) {
            self.entered.send(()).unwrap();
            self.release.recv().unwrap();
        }
        self.inner.map(gpa, len)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        self.inner.unmap(device_addr, len)
    }
}

#[test]
fn a_doorbell_blocked_in_a_host_map_stalls_no_other_function() {
    use devices::pci::{PciEcam, PciMmioWindow, PciRoot};
    use devices::MmioTarget as _;
    use std::sync::mpsc::channel;

    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let limits = MapperLimits {
        max_mapped_bytes: BUDGET,
        max_mappings: MAX_MAPS,
        alignment: K16,
        policy: AddressPolicy::HostPicks,
    };
    let mapper: Box<dyn HostMapper> = Box::new(BlockingMapper {
        inner: FakeMapper::new(limits),
        armed: armed.clone(),
        entered: entered_tx,
        release: release_rx,
    });
    let config = WindowConfig { window_size: K64, cache_released: true };
    let ram = [GuestRamRange { start: RAM_BASE, len: RAM_LEN }];
    let windows = Arc::new(Mutex::new(WindowManager::new(mapper, config, &ram).unwrap()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_LEN as usize)]).unwrap();
    let rid = Arc::new(AtomicU32::new(protocol::TARGET_RID_UNKNOWN));
    let slow = DmaWindowDevice::new("aperture-dma0", windows, mem.clone(), rid, None).unwrap();
    // Two aperture-dma functions (one per assigned device) at 00:01.0 and 00:02.0.
    let root = PciRoot::new();
    root.add_function(Box::new(slow)).unwrap();
    root.add_function(Box::new(rig().dev)).unwrap();
    let ecam = PciEcam::new(root.clone());
    let window = PciMmioWindow::new(root.clone(), 0x1000_0000);
    for (device, bar) in [(1u64, 0x1000_0000u32), (2, 0x1000_1000)] {
        ecam.write(device << 15 | 0x10, &bar.to_le_bytes());
        ecam.write(device << 15 | 0x04, &[2, 0]);
    }
    mem.write_slice(&map(RAM_BASE + 0x10_0000, K16).to_bytes(), GuestAddress(CMD_PAGE)).unwrap();
    window.write(reg::CMD_ADDR_LO, &(CMD_PAGE as u32).to_le_bytes());
    window.write(reg::CMD_ADDR_HI, &0u32.to_le_bytes());
    armed.store(true, Ordering::SeqCst);
    let doorbell = {
        let window = window.clone();
        std::thread::spawn(move || window.write(reg::DOORBELL, &1u32.to_le_bytes()))
    };
    entered.recv().unwrap();
    // The first doorbell is inside the host map now. Another vCPU reads the other
    // function's configuration space and registers.
    let (done_tx, done) = channel();
    let other_vcpu = {
        let window = window.clone();
        std::thread::spawn(move || {
            let mut id = [0u8; 4];
            ecam.read(2 << 15, &mut id);
            let mut magic = [0u8; 4];
            window.read(0x1000 + reg::MAGIC, &mut magic);
            done_tx.send((u32::from_le_bytes(id), u32::from_le_bytes(magic))).unwrap();
        })
    };
    // A deadlock guard, not a timing assertion: a shared lock would hang here forever.
    let (id, magic) = done
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the other function must answer while a doorbell blocks in a host map");
    assert_eq!((id, magic), (0xa9e0_1234, protocol::MAGIC));
    other_vcpu.join().unwrap();
    release.send(()).unwrap();
    doorbell.join().unwrap();
    let mut device_status = [0xffu8; 4];
    window.read(reg::STATUS, &mut device_status);
    assert_eq!(u32::from_le_bytes(device_status), 0, "the blocked doorbell completed");
    let mut entry = [0u8; ENTRY_SIZE];
    mem.read_slice(&mut entry, GuestAddress(CMD_PAGE)).unwrap();
    assert_eq!(status(&CommandEntry::from_bytes(&entry)), Status::Ok);
}

#[test]
fn op_words_carry_the_devices_mask_and_alignment() {
    let mut r = rig_with(AddressPolicy::HostPicksWithin);
    let done = r.submit(&[
        map(RAM_BASE + 0x10_0000, K4),                // 1.0 entry: placed high
        map_for(RAM_BASE + 0x20_0000, K4, 32, 0),     // 32-bit device
        map_for(RAM_BASE + 0x30_0000, K64, 40, 16),   // 40-bit, 64 KiB aligned
        map_for(RAM_BASE + 0x40_0000, 2 * K64, 0, 0), // automatic 128 KiB alignment
        map_for(RAM_BASE + 0x50_1000, K4, 64, 16),    // guest address not 64 KiB aligned
        map_for(RAM_BASE + 0x60_0000, K4, 64, 21),    // 2 MiB aligned, any mask
    ]);
    let statuses: Vec<Status> = done.iter().map(status).collect();
    use Status::*;
    assert_eq!(statuses, [Ok, Ok, Ok, Ok, Ealign, Ok]);
    assert!(done[0].dev_addr >= FAKE_APERTURE_BASE, "{:x?}", done[0]);
    assert!(done[1].dev_addr + K4 <= 1 << 32, "{:x?}", done[1]);
    assert!(done[2].dev_addr + K64 <= 1 << 40 && done[2].dev_addr % K64 == 0, "{:x?}", done[2]);
    assert_eq!(done[3].dev_addr % (2 * K64), 0, "{:x?}", done[3]);
    assert_eq!(done[4].dev_addr, 0, "refused MAPs return no address");
    assert_eq!(done[5].dev_addr % (2 << 20), 0, "{:x?}", done[5]);
    for (e, len) in done.iter().zip([K4, K4, K64, 2 * K64, 0, K4]).filter(|(_, l)| *l > 0) {
        assert_eq!(r.translate(e.dev_addr + len - 1), Some(e.addr + len - 1));
    }
    assert_eq!((done[1].op, done[2].op), (OpWord::map(32, 0), OpWord::map(40, 16)));
    let trace = r.trace.0.lock().unwrap().clone();
    assert!(trace[2].contains("mask_bits=40 align=0x10000"), "{}", trace[2]);
    assert!(trace[4].contains("status=EALIGN"), "{}", trace[4]);
    r.check();
}

#[test]
fn malformed_op_words_are_einval_and_change_nothing() {
    let mut r = rig_with(AddressPolicy::HostPicksWithin);
    let kept = r.submit(&[map(RAM_BASE + 0x10_0000, K4)])[0];
    let with = |op: u32, e: CommandEntry| CommandEntry { op, ..e };
    let done = r.submit(&[
        with(op::MAP | 1 << 24, map(RAM_BASE, K4)), // reserved bits
        with(OpWord::map(11, 0), map(RAM_BASE, K4)), // mask under 12 bits
        with(OpWord::map(65, 0), map(RAM_BASE, K4)), // mask over 64 bits
        with(OpWord::map(0, 11), map(RAM_BASE, K4)), // alignment under 4 KiB
        with(OpWord::map(0, 22), map(RAM_BASE, K4)), // alignment over 2 MiB
        with(op::UNMAP | 0x2800, unmap(kept.dev_addr, K4)), // UNMAP with a mask
        with(op::NOP | 0x100, CommandEntry::default()), // NOP with high bits
        with(op::FLUSH | 1 << 31, CommandEntry::default()), // FLUSH with high bits
        with(0x2804, CommandEntry::default()),      // unknown op, high bits
    ]);
    let statuses: Vec<Status> = done.iter().map(status).collect();
    use Status::*;
    assert_eq!(
        statuses,
        [Einval, Einval, Einval, Einval, Einval, Einval, Einval, Einval, Eopnotsupp]
    );
    assert!(done[..5].iter().all(|e| e.dev_addr == 0), "malformed MAPs return no address");
    assert_eq!(done[5].dev_addr, 0xdead, "UNMAP leaves dev_addr alone");
    assert_eq!(r.translate(kept.dev_addr), Some(RAM_BASE + 0x10_0000), "still mapped");
    let s = r.windows.lock().unwrap().stats();
    assert_eq!((s.map_requests, s.unmap_requests, s.live_requests), (1, 0, 1), "never reached");
    let trace = r.trace.0.lock().unwrap().clone();
    assert!(trace[1].contains("dma-bad-op") && trace[1].contains("op=0x1000001"), "{}", trace[1]);
    r.check();
}

#[test]
fn a_host_that_picks_over_the_mask_answers_emask() {
    // The rig's fake picks like the DART: where it likes (at 1 TiB and up).
    let mut r = rig();
    let done = r.submit(&[
        map_for(RAM_BASE, K4, 32, 0),
        map_for(RAM_BASE + 0x10_0000, K4, 64, 0),
        map(RAM_BASE + 0x20_0000, K4),
    ]);
    let statuses: Vec<Status> = done.iter().map(status).collect();
    assert_eq!(statuses, [Status::Emask, Status::Ok, Status::Ok]);
    assert_eq!(done[0].dev_addr, 0);
    let s = r.windows.lock().unwrap().stats();
    assert_eq!((s.failures.above_mask, s.live_requests), (1, 2));
    let trace = r.trace.0.lock().unwrap().clone();
    assert!(trace[0].contains("status=EMASK mask_bits=32"), "{}", trace[0]);
    r.check();
}
