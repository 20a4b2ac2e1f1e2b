//! The DMA-window command protocol (`passthrough/docs/dma-window-protocol.md`): the fuzzer is
//! an aperture-dma guest driver writing registers, configuration space and command pages in
//! guest RAM, and ringing the doorbell; the real `DmaWindowDevice` serves it from a
//! `WindowManager` over the strict `FakeMapper` (which fails now and then, as a host does).
//! Checks after every doorbell: each processed entry has a valid status, a successful MAP
//! returns a device address that translates back to the guest address, is never above the
//! DMA mask its op word gave nor misaligned (for the alignment asked or the automatic rule),
//! malformed op words are EINVAL, the manager's books match the fake host's mappings, the
//! limits hold and the fake saw no broken rule. The fake host either picks within the
//! constraints, picks blindly (as the DART; the window manager must catch it), or maps at
//! identity.

#![no_main]

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use devices::pci::PciFunction;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use passthrough::dma::pv::protocol::{self, op, reg, CommandEntry, OpWord, Status, ENTRY_SIZE};
use passthrough::dma::testing::FakeMapper;
use passthrough::dma::{
    auto_alignment, AddressPolicy, DmaWindowDevice, GuestRamRange, HostMapper, MapConstraints,
    MapperError, MapperLimits, SharedWindows, WindowConfig, WindowManager,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const K4: u64 = 4 << 10;
const RAM: [(u64, u64); 2] = [(0x4000_0000, 4 << 20), (0x8000_0000, 1 << 20)];
const CMD_PAGE: u64 = 0x4000_1000;

/// A fake mapper the target can inspect after the window manager took it.
#[derive(Debug)]
struct SharedFake {
    limits: MapperLimits,
    fake: Arc<Mutex<FakeMapper>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HostMapper for SharedFake {
    fn limits(&self) -> &MapperLimits {
        &self.limits
    }
    fn map(&mut self, gpa: u64, len: u64) -> std::result::Result<u64, MapperError> {
        lock(&self.fake).map(gpa, len)
    }
    fn map_within(
        &mut self,
        gpa: u64,
        len: u64,
        constraints: &MapConstraints,
    ) -> std::result::Result<u64, MapperError> {
        lock(&self.fake).map_within(gpa, len, constraints)
    }
    fn unmap(&mut self, device_addr: u64, len: u64) -> std::result::Result<(), MapperError> {
        lock(&self.fake).unmap(device_addr, len)
    }
}

struct Rig {
    dev: DmaWindowDevice,
    mem: GuestMemoryMmap,
    windows: SharedWindows,
    fake: Arc<Mutex<FakeMapper>>,
    limits: MapperLimits,
    cmd_addr: u64,
    /// What successful MAPs returned and the guest has not unmapped: (dev_addr, len, gpa).
    live: Vec<(u64, u64, u64)>,
}

impl Rig {
    fn new(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        let alignment = *u.choose(&[4u64 << 10, 16 << 10, 64 << 10])?;
        let limits = MapperLimits {
            max_mapped_bytes: alignment * u.int_in_range(1..=64u64)?,
            max_mappings: u.int_in_range(1..=32u32)?,
            alignment,
            policy: *u.choose(&[
                AddressPolicy::HostPicks,
                AddressPolicy::HostPicksWithin,
                AddressPolicy::Identity,
            ])?,
        };
        let config = WindowConfig {
            window_size: alignment << u.int_in_range(0..=4u8)?,
            cache_released: u.arbitrary()?,
        };
        if config.validate(&limits).is_err() {
            return Ok(None);
        }
        aperture_fuzz::trace!("{limits:x?} {config:x?}");
        let fake = Arc::new(Mutex::new(FakeMapper::new(limits)));
        let mapper: Box<dyn HostMapper> = Box::new(SharedFake { limits, fake: fake.clone() });
        let ram: Vec<GuestRamRange> =
            RAM.iter().map(|&(start, len)| GuestRamRange { start, len }).collect();
        let manager = WindowManager::new(mapper, config, &ram);
        let Ok(manager) = manager else { panic!("WindowManager::new: {:?}", manager.err()) };
        let windows = Arc::new(Mutex::new(manager));
        let ranges: Vec<(GuestAddress, usize)> =
            RAM.iter().map(|&(start, len)| (GuestAddress(start), len as usize)).collect();
        let Ok(mem) = GuestMemoryMmap::from_ranges(&ranges) else { panic!("guest memory") };
        let rid = Arc::new(AtomicU32::new(protocol::TARGET_RID_UNKNOWN));
        let dev = DmaWindowDevice::new("aperture-dma0", windows.clone(), mem.clone(), rid, None);
        let Ok(dev) = dev else { panic!("DmaWindowDevice::new: {dev:?}") };
        Ok(Some(Self { dev, mem, windows, fake, limits, cmd_addr: 0, live: Vec::new() }))
    }

    fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.dev.bar_write(0, offset, &value.to_le_bytes());
        match offset {
            reg::CMD_ADDR_LO => self.cmd_addr = self.cmd_addr & !0xffff_ffff | u64::from(value),
            reg::CMD_ADDR_HI => {
                self.cmd_addr = self.cmd_addr & 0xffff_ffff | u64::from(value) << 32
            }
            _ => {}
        }
    }

    fn entry(&self, index: u64) -> Option<CommandEntry> {
        let mut b = [0u8; ENTRY_SIZE];
        let at = self.cmd_addr.checked_add(index * ENTRY_SIZE as u64)?;
        self.mem.read_slice(&mut b, GuestAddress(at)).ok()?;
        Some(CommandEntry::from_bytes(&b))
    }

    fn doorbell(&mut self, count: u32) {
        let before: Vec<Option<CommandEntry>> =
            (0..u64::from(count.min(protocol::MAX_ENTRIES))).map(|i| self.entry(i)).collect();
        aperture_fuzz::trace!("doorbell {count} at {:#x}: {before:x?}", self.cmd_addr);
        self.write(reg::DOORBELL, count);
        let status = self.read(reg::STATUS);
        aperture_fuzz::trace!(
            "  -> status {status}, {:x?}",
            (0..u64::from(count.min(128))).map(|i| self.entry(i)).collect::<Vec<_>>()
        );
        assert!(Status::from_code(status).is_some(), "doorbell status {status}");
        let processed = self.read(reg::DOORBELL);
        if processed == 0 {
            return;
        }
        assert_eq!(processed, count, "a doorbell is served whole or not at all");
        assert_eq!(status, Status::Ok.code());
        // Entries are served in order and may overwrite later ones only through their status
        // and dev_addr fields (the guest overlapped nothing here: one page, 32-byte slots).
        for (index, asked) in before.iter().enumerate() {
            let (Some(asked), Some(done)) = (asked, self.entry(index as u64)) else {
                panic!("entry {index} of a served doorbell is not in RAM");
            };
            assert_eq!((done.op, done.addr, done.len), (asked.op, asked.addr, asked.len));
            let Some(s) = Status::from_code(done.status) else {
                panic!("entry {index}: status {}", done.status)
            };
            let word = match OpWord::decode(asked.op) {
                Ok(word) => word,
                Err(e) => {
                    assert_eq!(s, Status::Einval, "entry {index}: {e}");
                    if asked.op & protocol::op_word::OP_MASK == op::MAP {
                        assert_eq!(done.dev_addr, 0, "a malformed MAP returns no address");
                    }
                    continue;
                }
            };
            match word.op {
                op::MAP if s == Status::Ok => {
                    let (d, len) = (done.dev_addr, asked.len);
                    assert!(d.checked_add(len).is_some(), "{done:x?}");
                    if word.mask_bits != 0 {
                        let end = u128::from(d) + u128::from(len);
                        assert!(end <= 1u128 << word.mask_bits, "over the mask: {done:x?}");
                    }
                    let align = (1u64 << word.align_log2).max(auto_alignment(asked.addr, len));
                    assert_eq!(d % align, 0, "misaligned: {done:x?}");
                    self.live.push((d, len, asked.addr));
                }
                op::MAP => {
                    assert_eq!(done.dev_addr, 0, "a failed MAP returns no address");
                    if self.limits.policy == AddressPolicy::Identity && s == Status::Emask {
                        let end = u128::from(asked.addr) + u128::from(asked.len);
                        assert!(end > 1u128 << word.mask_bits, "identity EMASK: {asked:x?}");
                    }
                }
                op::UNMAP if s == Status::Ok => {
                    let at =
                        self.live.iter().position(|&(d, l, _)| (d, l) == (asked.addr, asked.len));
                    assert!(at.is_some(), "UNMAP of {asked:x?} succeeded but was never mapped");
                    if let Some(at) = at {
                        self.live.swap_remove(at);
                    }
                }
                op::UNMAP if s == Status::Eio => {
                    // Host trouble: the request is released all the same.
                    let at =
                        self.live.iter().position(|&(d, l, _)| (d, l) == (asked.addr, asked.len));
                    if let Some(at) = at {
                        self.live.swap_remove(at);
                    }
                }
                op::NOP | op::FLUSH | op::UNMAP => {}
                _ => assert_eq!(s, Status::Eopnotsupp),
            }
        }
        self.check();
    }

    /// Every live request translates to its guest memory, in the manager and on the host;
    /// the manager's books match the host's mappings, within the limits.
    fn check(&self) {
        let windows = lock(&self.windows);
        let fake = lock(&self.fake);
        for &(dev_addr, len, gpa) in &self.live {
            for offset in [0, len / 2, len - 1] {
                let (dev, want) = (dev_addr + offset, Some(gpa + offset));
                assert_eq!(windows.translate(dev), want, "live {dev_addr:#x}+{len:#x}");
                assert_eq!(fake.translate(dev), want, "host: live {dev_addr:#x}+{len:#x}");
            }
        }
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        let stats = windows.stats();
        assert_eq!(stats.live_bytes, fake.live_bytes(), "{stats}");
        assert_eq!(stats.live_mappings, fake.live_count() as u64, "{stats}");
        assert!(stats.live_bytes <= self.limits.max_mapped_bytes, "{stats}");
        assert!(stats.live_mappings <= u64::from(self.limits.max_mappings), "{stats}");
        assert!(stats.pinned_bytes <= stats.live_bytes, "{stats}");
        let windows_listed = windows.windows();
        assert_eq!(windows_listed.len() as u64, stats.live_mappings);
    }
}

fn guest_addr(u: &mut Unstructured<'_>) -> Result<u64> {
    let (start, len) = *u.choose(&RAM)?;
    Ok(match u.int_in_range(0..=7u8)? {
        0..=4 => start + u.int_in_range(0..=len / K4)? * K4 + *u.choose(&[0, 0, 1, 0xfff])?,
        5 => start + u.int_in_range(0..=len)?,
        6 => *u.choose(&[0, start - 1, start + len, start + len - 1, u64::MAX - K4])?,
        _ => u.arbitrary()?,
    })
}

fn length(u: &mut Unstructured<'_>, limits: &MapperLimits) -> Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0..=4 => u.int_in_range(1..=4 * limits.alignment)?,
        5 => *u.choose(&[0, 1, limits.alignment, limits.max_mapped_bytes, u64::MAX])?,
        6 => u.int_in_range(1..=limits.max_mapped_bytes + limits.alignment)?,
        _ => u.arbitrary()?,
    })
}

fn entry(u: &mut Unstructured<'_>, rig: &Rig) -> Result<CommandEntry> {
    let mut e = CommandEntry {
        status: u.arbitrary()?,
        dev_addr: u.arbitrary()?,
        ..CommandEntry::default()
    };
    match u.int_in_range(0..=9u8)? {
        0..=3 => {
            e.op = op::MAP;
            e.addr = guest_addr(u)?;
            e.len = length(u, &rig.limits)?;
            if u.ratio(1u8, 2u8)? {
                // A 1.1 entry: the device's mask and alignment, mostly valid.
                let mask_bits = match u.int_in_range(0..=5u8)? {
                    0 => 0,
                    1..=4 => u.int_in_range(12..=64u8)?,
                    _ => u.arbitrary()?,
                };
                let align_log2 = match u.int_in_range(0..=5u8)? {
                    0..=1 => 0,
                    2..=4 => u.int_in_range(12..=21u8)?,
                    _ => u.arbitrary()?,
                };
                if align_log2 != 0 && align_log2 < 64 && u.ratio(3u8, 4u8)? {
                    e.addr &= !((1u64 << align_log2) - 1);
                }
                e.op = OpWord::map(mask_bits, align_log2);
                if u.ratio(1u8, 16u8)? {
                    e.op |= u32::from(u.int_in_range(1..=255u8)?) << 24;
                }
            } else if u.ratio(1u8, 4u8)? {
                // Large aligned powers of two: the automatic alignment rule.
                let len = 1u64 << u.int_in_range(16..=22u32)?;
                e.len = len;
                e.addr &= !(len.min(2 << 20) - 1);
            }
        }
        4..=6 if !rig.live.is_empty() => {
            e.op = op::UNMAP;
            (e.addr, e.len, _) = *u.choose(&rig.live)?;
            if u.ratio(1u8, 8u8)? {
                e.len = e.len.wrapping_add(u.int_in_range(0..=2u64)?.wrapping_sub(1));
            }
        }
        4..=6 => {
            e.op = op::UNMAP;
            e.addr = u.arbitrary()?;
            e.len = length(u, &rig.limits)?;
        }
        7 => {
            e.op = *u.choose(&[op::NOP, op::FLUSH])?;
            if u.ratio(1u8, 8u8)? {
                e.op |= u32::from(u.arbitrary::<u16>()?) << 8;
            }
        }
        _ => {
            e.op = if u.ratio(1u8, 2u8)? { u.int_in_range(0..=5u32)? } else { u.arbitrary()? };
            e.addr = u.arbitrary()?;
            e.len = u.arbitrary()?;
        }
    }
    Ok(e)
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let Some(mut rig) = Rig::new(u)? else { return Ok(()) };
    let mut slots = 0u32;
    for _ in 0..aperture_fuzz::MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=19u8)? {
            0..=7 => {
                // Fill the next command slot.
                if slots == protocol::MAX_ENTRIES {
                    slots = 0;
                }
                let e = entry(u, &rig)?;
                let at = CMD_PAGE + u64::from(slots) * ENTRY_SIZE as u64;
                let _ = rig.mem.write_slice(&e.to_bytes(), GuestAddress(at));
                slots += 1;
            }
            8..=10 => {
                // Ring for the slots filled since the last doorbell, at the command page.
                if rig.cmd_addr != CMD_PAGE || u.ratio(1u8, 16u8)? {
                    rig.write(reg::CMD_ADDR_LO, CMD_PAGE as u32);
                    rig.write(reg::CMD_ADDR_HI, (CMD_PAGE >> 32) as u32);
                }
                let count = if u.ratio(7u8, 8u8)? { slots.max(1) } else { u.arbitrary()? };
                rig.doorbell(count);
                // Served entries are wiped to NOPs so that they are not replayed behind the
                // target's back.
                let _ = rig.mem.write_slice(&[0u8; 4096], GuestAddress(CMD_PAGE));
                slots = 0;
            }
            11 => {
                // Any command page address, then a doorbell.
                let addr = match u.int_in_range(0..=3u8)? {
                    0 => guest_addr(u)? & !0xfff,
                    1 => guest_addr(u)?,
                    _ => u.arbitrary()?,
                };
                rig.write(reg::CMD_ADDR_LO, addr as u32);
                rig.write(reg::CMD_ADDR_HI, (addr >> 32) as u32);
                let count = if u.ratio(3u8, 4u8)? {
                    u.int_in_range(0..=protocol::MAX_ENTRIES + 1)?
                } else {
                    u.arbitrary()?
                };
                rig.doorbell(count);
            }
            12 => {
                // Raw guest RAM, possibly over the command page.
                let at = guest_addr(u)?;
                let len = u.int_in_range(1..=64usize)?;
                let _ = rig.mem.write_slice(&aperture_fuzz::bytes(u, len)?, GuestAddress(at));
            }
            13 => {
                // Any BAR access.
                let bar = if u.ratio(7u8, 8u8)? { 0 } else { u.int_in_range(0..=7usize)? };
                let offset = aperture_fuzz::near(u, 0, 0x1010)?;
                let len = aperture_fuzz::access_len(u)?;
                let mut data = aperture_fuzz::bytes(u, len)?;
                if u.arbitrary()? {
                    rig.dev.bar_read(bar, offset, &mut data);
                } else if !(bar == 0 && data.len() == 4 && offset == reg::DOORBELL) {
                    rig.dev.bar_write(bar, offset, &data);
                    if bar == 0
                        && data.len() == 4
                        && (offset == reg::CMD_ADDR_LO || offset == reg::CMD_ADDR_HI)
                    {
                        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                        rig.write(offset, v);
                    }
                }
            }
            14 => {
                let offset = u.int_in_range(0..=0x1003u16)?;
                let len = *u.choose(&[1usize, 2, 4])?;
                let mut data = aperture_fuzz::bytes(u, len)?;
                if u.arbitrary()? {
                    rig.dev.config_read(offset, &mut data);
                } else {
                    rig.dev.config_write(offset, &data);
                }
                let _ = rig.dev.bar_regions();
            }
            15 => {
                // Every read-only register.
                for offset in (0..0x40).step_by(4) {
                    let _ = rig.read(offset);
                }
            }
            16 => {
                // The host refuses now and then.
                let mut fake = lock(&rig.fake);
                let n = u.int_in_range(0..=3u32)?;
                aperture_fuzz::trace!("host failures: {n}");
                match u.int_in_range(0..=2u8)? {
                    0 => fake.fail_next_maps(n),
                    1 => fake.fail_maps_after(u.int_in_range(0..=3u32)?, n),
                    _ => fake.fail_next_unmaps(n),
                }
            }
            17 => {
                // The VMM resets the window manager when the guest resets the device: every
                // device address is forgotten.
                // Host unmap failures are reported, but the requests are dropped either way.
                aperture_fuzz::trace!("reset");
                let _ = lock(&rig.windows).reset();
                rig.live.clear();
                rig.check();
            }
            _ => {
                let _ = lock(&rig.windows).stats().to_string();
            }
        }
    }
    rig.check();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
