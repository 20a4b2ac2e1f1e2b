//! PCI configuration and BAR accesses: the fuzzer is the guest's PCI core and drivers, and
//! reaches every function only through the MMIO views the VMM maps (`PciEcam` and two
//! `PciMmioWindow`s, 32-bit and 64-bit). Behind them, a `PciRoot` as the VMM builds it: the
//! host bridge, two root ports with passed-through functions (`AssignedFunction` over a fake
//! host: a GPU with a second function, and an NVMe or MSI-only device), virtio-blk and
//! virtio-rng on the virtio-pci transport (whose workers run on their own threads as in the
//! VMM), and an aperture-dma function. Besides raw accesses the fuzzer can run a firmware-like
//! enumeration (bus numbers, BAR sizing and placement, memory decoding on) and a virtio driver
//! bring-up, so that deep states are reachable from short inputs.
//!
//! Checks: nothing panics, the fake host sees only aligned in-range configuration accesses
//! and interrupt programming that follows the host contract, guest writes reach the physical
//! device only where the passthrough policy forwards them, the device's BAR registers never
//! change, and the host bridge keeps its identity.

#![no_main]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aperture_fuzz::image::scratch_image;
use devices::bus::MmioTarget;
use devices::pci::{
    BarChange, MsiMessage, MsiSink, PciEcam, PciFunction, PciMmioWindow, PciRoot, TraceEvent,
    VirtioPci,
};
use devices::virtio::{Block, Rng};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use passthrough::dma::testing::FakeMapper;
use passthrough::testing::function::{self as fake_host, ConfigBuilder, FakeDevice};
use passthrough::dma::{
    AddressPolicy, DmaWindowDevice, GuestRamRange, HostMapper, MapperLimits, WindowConfig,
    WindowManager,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const LOW_BASE: u64 = 0x1000_0000;
const LOW_SIZE: u64 = 0x2000_0000;
const HIGH_BASE: u64 = 0x80_0000_0000;
const HIGH_SIZE: u64 = 0x80_0000_0000;
const RAM_BASE: u64 = 0x4000_0000;
const RAM_LEN: u64 = 1 << 20;

/// Counts MSIs (called with the sending function locked: must not touch PCI).
#[derive(Debug, Default)]
struct CountingSink(AtomicU64);

impl MsiSink for CountingSink {
    fn signal_msi(&self, message: MsiMessage, _requester_id: u16) {
        self.0.fetch_add(u64::from(message.data & 1), Ordering::Relaxed);
    }
}

/// A passed-through function and the policy it must keep.
struct Assigned {
    fake: FakeDevice,
    original: Vec<u8>,
    forwardable: Option<fn(u16) -> bool>,
}

struct Rig {
    root: PciRoot,
    ecam: PciEcam,
    low: PciMmioWindow,
    high: PciMmioWindow,
    mem: GuestMemoryMmap,
    assigned: Vec<Assigned>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// QEMU's NVMe controller with its INTx deliverable by the host.
fn nvme_with_intx(exclusive: bool) -> ConfigBuilder {
    let mut builder = fake_host::nvme(exclusive);
    builder.intx();
    builder
}

/// Assigns the device `builder` describes. One input in eight first patches a few bytes of
/// its configuration space (a quirky device: odd capability lists, MSI-X tables in odd
/// places...), which the function may refuse (`None`) but must not panic on.
fn assign(
    u: &mut Unstructured<'_>,
    builder: ConfigBuilder,
    forwardable: Option<fn(u16) -> bool>,
) -> Result<Option<(Box<dyn PciFunction>, Assigned)>> {
    let mut builder = builder;
    let mut forwardable = forwardable;
    if u.ratio(1u8, 8u8)? {
        forwardable = None;
        for _ in 0..u.int_in_range(1..=8u8)? {
            let offset = if u.ratio(3u8, 4u8)? {
                u.int_in_range(0..=0xffusize)?
            } else {
                u.int_in_range(0..=0xfffusize)?
            };
            builder.u8(offset, u.arbitrary()?);
        }
        aperture_fuzz::trace!("quirky device: {builder:x?}");
    }
    let assigned = builder.assign("assigned");
    let (function, fake, _interrupts) = match assigned {
        Ok(assigned) => assigned,
        Err(e) if forwardable.is_none() => {
            aperture_fuzz::trace!("refused: {e}");
            return Ok(None);
        }
        Err(e) => panic!("assigning: {e}"),
    };
    let original = lock(&fake.log).config.clone();
    Ok(Some((Box::new(function), Assigned { fake, original, forwardable })))
}

impl Rig {
    fn new(u: &mut Unstructured<'_>) -> Result<Option<Self>> {
        let variant = u.int_in_range(0..=7u8)?;
        let root = PciRoot::new();
        let mut assigned = Vec::new();
        let ok = |r: std::result::Result<_, devices::pci::PciRootError>| match r {
            Ok(id) => id,
            Err(e) => panic!("topology: {e}"),
        };
        let port1 = ok(root.add_root_port());
        let Some((gpu, a)) = assign(u, fake_host::gpu(), Some(fake_host::gpu_forwardable))? else {
            return Ok(None);
        };
        assigned.push(a);
        ok(root.attach_to_port(port1, gpu));
        if variant & 1 != 0 {
            let Some((nic, a)) = assign(u, fake_host::msi_and_msix(), None)? else {
                return Ok(None);
            };
            assigned.push(a);
            ok(root.attach_function_to_port(port1, 1, nic));
        }
        let port2 = ok(root.add_root_port());
        let second = match variant >> 1 {
            0 => assign(u, nvme_with_intx(false), Some(fake_host::nvme_forwardable)),
            1 => assign(u, nvme_with_intx(true), Some(fake_host::nvme_forwardable)),
            2 => {
                let control = fake_host::MSI_64BIT | fake_host::MSI_PVM | 5 << 1;
                assign(u, fake_host::msi_only(control), None)
            }
            _ => assign(u, fake_host::msi_only(2 << 1), None),
        }?;
        let Some(second) = second else { return Ok(None) };
        assigned.push(second.1);
        ok(root.attach_to_port(port2, second.0));

        let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_LEN as usize)])
        else {
            panic!("guest memory");
        };
        let msi: Arc<dyn MsiSink> = Arc::new(CountingSink::default());
        let disk = Block::new(scratch_image(), variant & 2 != 0, "fuzz-disk");
        let Ok(disk) = disk else { panic!("Block::new: {disk:?}") };
        let blk = VirtioPci::new("virtio-blk0", Box::new(disk), mem.clone(), msi.clone());
        let Ok(blk) = blk else { panic!("virtio-blk: {blk:?}") };
        ok(root.add_function(Box::new(blk)));
        let rng = Rng::new(Box::new(|buf: &mut [u8]| {
            buf.fill(0xa5);
            Ok(())
        }));
        let rng = VirtioPci::new("virtio-rng", Box::new(rng), mem.clone(), msi);
        let Ok(rng) = rng else { panic!("virtio-rng: {rng:?}") };
        ok(root.add_function(Box::new(rng)));

        let limits = MapperLimits {
            max_mapped_bytes: 256 << 10,
            max_mappings: 16,
            alignment: 16 << 10,
            policy: AddressPolicy::HostPicks,
        };
        let mapper: Box<dyn HostMapper> = Box::new(FakeMapper::new(limits));
        let config = WindowConfig { window_size: 64 << 10, cache_released: true };
        let ram = [GuestRamRange { start: RAM_BASE, len: RAM_LEN }];
        let windows = WindowManager::new(mapper, config, &ram);
        let Ok(windows) = windows else { panic!("window manager: {:?}", windows.err()) };
        let rid = Arc::new(AtomicU32::new(u32::MAX));
        let dma = DmaWindowDevice::new(
            "aperture-dma0",
            Arc::new(Mutex::new(windows)),
            mem.clone(),
            rid,
            None,
        );
        let Ok(dma) = dma else { panic!("aperture-dma: {dma:?}") };
        ok(root.add_function(Box::new(dma)));

        // Hooks as the VMM installs them (they run with the accessed function locked).
        let seen = Arc::new(AtomicU64::new(0));
        let trace_seen = seen.clone();
        root.set_trace_hook(Some(Box::new(move |e: &TraceEvent<'_>| {
            assert!(e.size <= 8 && !e.function.is_empty());
            trace_seen.fetch_add(e.value & 1, Ordering::Relaxed);
        })));
        root.set_bar_change_hook(Some(Box::new(move |c: &BarChange| {
            assert!(c.old != c.new, "{c:?} changed nothing");
            if let Some(new) = c.new {
                assert_eq!(new.index, c.bar);
                assert!(new.size.is_power_of_two(), "{c:?}");
                assert_eq!(new.address % new.size, 0, "{c:?}: BARs are naturally aligned");
            }
            seen.fetch_add(1, Ordering::Relaxed);
        })));

        Ok(Some(Self {
            ecam: PciEcam::new(root.clone()),
            low: PciMmioWindow::new(root.clone(), LOW_BASE),
            high: PciMmioWindow::new(root.clone(), HIGH_BASE),
            root,
            mem,
            assigned,
        }))
    }

    fn cfg_read(&mut self, bus: u8, devfn: u8, register: u16, len: usize) -> u64 {
        let mut data = vec![0u8; len];
        self.ecam.read(ecam(bus, devfn, register), &mut data);
        aperture_fuzz::le_value(&data)
    }

    fn cfg_write(&mut self, bus: u8, devfn: u8, register: u16, value: u64, len: usize) {
        self.ecam.write(ecam(bus, devfn, register), &value.to_le_bytes()[..len]);
    }

    /// A memory access at guest physical `address`, through the window the VMM would route
    /// it to.
    fn mmio(&mut self, address: u64, data: &mut [u8], write: bool) {
        let (window, offset) = if address >= HIGH_BASE {
            (&self.high, address - HIGH_BASE)
        } else if address >= LOW_BASE {
            (&self.low, address - LOW_BASE)
        } else {
            let root = &self.root;
            if write {
                root.mmio_write(address, data);
            } else {
                root.mmio_read(address, data);
            }
            return;
        };
        if write {
            window.write(offset, data);
        } else {
            window.read(offset, data);
        }
    }

    /// Every function the guest can reach now as (bus, devfn), bus 0 first.
    fn present(&mut self) -> Vec<(u8, u8)> {
        let root = &self.root;
        let mut found: Vec<(u8, u8)> = root
            .functions()
            .iter()
            .filter_map(|f| f.requester_id)
            .map(|rid| ((rid >> 8) as u8, rid as u8))
            .filter(|&(bus, devfn)| root.resolve(bus, devfn).is_some())
            .collect();
        found.sort_unstable();
        found
    }

    /// What firmware does: number the ports' buses, size and place every BAR and ROM, open
    /// the bridges' windows, and turn on memory decoding and bus mastering.
    fn enumerate(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let mut next_bus = 1u8;
        for device in 0..32u8 {
            let devfn = device << 3;
            if self.cfg_read(0, devfn, 0, 2) == 0xffff {
                continue;
            }
            if self.cfg_read(0, devfn, 0x0e, 1) & 0x7f == 1 {
                let secondary = next_bus;
                next_bus += 1;
                self.cfg_write(
                    0,
                    devfn,
                    0x18,
                    u64::from(secondary) << 16 | u64::from(secondary) << 8,
                    4,
                );
                let window =
                    (LOW_BASE >> 16 & 0xfff0) | ((LOW_BASE + LOW_SIZE - 1) >> 16 & 0xfff0) << 16;
                self.cfg_write(0, devfn, 0x20, window, 4);
                self.cfg_write(0, devfn, 0x24, 0xfff1_0001, 4);
                self.cfg_write(0, devfn, 0x28, HIGH_BASE >> 32, 4);
                self.cfg_write(0, devfn, 0x2c, (HIGH_BASE + HIGH_SIZE - 1) >> 32, 4);
                self.cfg_write(0, devfn, 0x04, 0x6, 2);
            }
        }
        let (mut low, mut high) = (LOW_BASE, HIGH_BASE);
        // Sometimes place BARs in reverse order, or leave a gap, to move things around.
        let gap: u64 = if u.ratio(1u8, 4u8)? { 0x10_0000 } else { 0 };
        for (bus, devfn) in self.present() {
            let bridge = self.cfg_read(bus, devfn, 0x0e, 1) & 0x7f == 1;
            let bars = if bridge { 2 } else { 6 };
            let mut bar = 0;
            while bar < bars {
                let reg = 0x10 + 4 * bar as u16;
                let old = self.cfg_read(bus, devfn, reg, 4);
                self.cfg_write(bus, devfn, reg, 0xffff_ffff, 4);
                let probe = self.cfg_read(bus, devfn, reg, 4);
                if probe == 0 || probe & 1 != 0 {
                    self.cfg_write(bus, devfn, reg, old, 4);
                    bar += 1;
                    continue;
                }
                let is_64 = probe & 0x6 == 0x4;
                let mut mask = probe & !0xf;
                if is_64 {
                    self.cfg_write(bus, devfn, reg + 4, 0xffff_ffff, 4);
                    mask |= self.cfg_read(bus, devfn, reg + 4, 4) << 32;
                } else {
                    mask |= 0xffff_ffff_0000_0000;
                }
                let size = (!mask).wrapping_add(1);
                let prefetchable = probe & 0x8 != 0;
                let cursor = if is_64 && prefetchable { &mut high } else { &mut low };
                let address = cursor.checked_next_multiple_of(size.max(1)).unwrap_or(0);
                *cursor = address.wrapping_add(size).wrapping_add(gap);
                self.cfg_write(bus, devfn, reg, address & 0xffff_ffff, 4);
                if is_64 {
                    self.cfg_write(bus, devfn, reg + 4, address >> 32, 4);
                    bar += 1;
                }
                bar += 1;
            }
            if !bridge {
                self.cfg_write(bus, devfn, 0x30, 0xffff_f800, 4);
                let probe = self.cfg_read(bus, devfn, 0x30, 4) & 0xffff_f800;
                if probe != 0 {
                    let size = u64::from((!probe as u32).wrapping_add(1));
                    let address = low.next_multiple_of(size);
                    low = address + size;
                    self.cfg_write(bus, devfn, 0x30, address | 1, 4);
                }
            }
            self.cfg_write(bus, devfn, 0x04, 0x6, 2);
        }
        Ok(())
    }

    /// The offset of capability `id` of `bus`/`devfn`, walking the list as a guest does.
    fn find_capability(&mut self, bus: u8, devfn: u8, id: u8) -> Option<u16> {
        let mut at = self.cfg_read(bus, devfn, 0x34, 1) as u16;
        for _ in 0..48 {
            if !(0x40..=0xfc).contains(&at) {
                return None;
            }
            if self.cfg_read(bus, devfn, at, 1) as u8 == id {
                return Some(at);
            }
            at = self.cfg_read(bus, devfn, at + 1, 1) as u16 & 0xfc;
        }
        None
    }

    /// A virtio driver's bring-up of the virtio function at bus 0 `devfn` through its BAR 0,
    /// with the queue the fuzzer describes.
    fn virtio_bring_up(&mut self, u: &mut Unstructured<'_>, devfn: u8) -> Result<()> {
        let Some(bar) = self.bar_address(0, devfn, 0) else { return Ok(()) };
        let w = |rig: &mut Self, offset: u64, value: u64, len: usize| {
            let mut data = value.to_le_bytes();
            rig.mmio(bar + offset, &mut data[..len], true);
        };
        if u.ratio(3u8, 4u8)? {
            self.msix_setup(u, 0, devfn)?;
        }
        w(self, 0x14, 0, 1); // reset
        w(self, 0x14, 1, 1); // ACKNOWLEDGE
        w(self, 0x14, 3, 1); // DRIVER
                             // Accept what the device offers (feature words 0 and 1), or anything.
        for select in 0..2u64 {
            w(self, 0x00, select, 4);
            let mut offered = [0u8; 4];
            self.mmio(bar + 0x04, &mut offered, false);
            let accept = if u.ratio(7u8, 8u8)? {
                u64::from(u32::from_le_bytes(offered))
            } else {
                u64::from(u.arbitrary::<u32>()?)
            };
            w(self, 0x08, select, 4);
            w(self, 0x0c, accept, 4);
        }
        w(self, 0x14, 0xb, 1); // FEATURES_OK
        w(self, 0x16, 0, 2); // queue_select 0
        let size = 1u64 << u.int_in_range(0..=8u8)?;
        w(self, 0x18, size, 2);
        w(self, 0x1a, u64::from(u.int_in_range(0..=2u16)?), 2); // queue MSI-X vector
        w(self, 0x10, u64::from(u.int_in_range(0..=2u16)?), 2); // config MSI-X vector
        let ring = |u: &mut Unstructured<'_>, default: u64| -> Result<u64> {
            Ok(if u.ratio(7u8, 8u8)? { RAM_BASE + default } else { u.arbitrary()? })
        };
        let (desc, driver, device) = (ring(u, 0)?, ring(u, 0x1000)?, ring(u, 0x2000)?);
        w(self, 0x20, desc, 8);
        w(self, 0x28, driver, 8);
        w(self, 0x30, device, 8);
        w(self, 0x1c, 1, 2); // queue_enable
        w(self, 0x14, 0xf, 1); // DRIVER_OK: the worker thread starts
        Ok(())
    }

    /// What a driver does to use MSI-X: program the first table entries (doorbell, data,
    /// mask bit as the fuzzer says) through the BAR holding the table, then enable it.
    fn msix_setup(&mut self, u: &mut Unstructured<'_>, bus: u8, devfn: u8) -> Result<()> {
        let Some(cap) = self.find_capability(bus, devfn, 0x11) else { return Ok(()) };
        let control = self.cfg_read(bus, devfn, cap + 2, 2);
        let table = self.cfg_read(bus, devfn, cap + 4, 4);
        let Some(bar) = self.bar_address(bus, devfn, (table & 7) as usize) else { return Ok(()) };
        let base = bar + (table & !7);
        let vectors = (control & 0x7ff) + 1;
        for vector in 0..vectors.min(u64::from(u.int_in_range(1..=4u8)?)) {
            let entry = base + 16 * vector;
            let masked = u.ratio(1u8, 4u8)?;
            for (offset, value) in [(0, 0x0809_0040), (4, 0), (8, vector), (12, u64::from(masked))]
            {
                let mut data = (value as u32).to_le_bytes();
                self.mmio(entry + offset, &mut data, true);
            }
        }
        let function_mask = u64::from(u.ratio(1u8, 8u8)?) << 14;
        self.cfg_write(bus, devfn, cap + 2, 0x8000 | function_mask, 2);
        Ok(())
    }

    /// What a driver does to use MSI: address, data, per-vector masks if any, then enable
    /// with the number of vectors the fuzzer asks for.
    fn msi_setup(&mut self, u: &mut Unstructured<'_>, bus: u8, devfn: u8) -> Result<()> {
        let Some(cap) = self.find_capability(bus, devfn, 0x05) else { return Ok(()) };
        let control = self.cfg_read(bus, devfn, cap + 2, 2);
        let is_64 = control & 0x80 != 0;
        self.cfg_write(bus, devfn, cap + 4, 0x0809_0040, 4);
        let data_at = if is_64 {
            self.cfg_write(bus, devfn, cap + 8, 0, 4);
            cap + 0xc
        } else {
            cap + 8
        };
        self.cfg_write(bus, devfn, data_at, u64::from(u.arbitrary::<u16>()?), 2);
        if control & 0x100 != 0 {
            self.cfg_write(bus, devfn, data_at + 4, u64::from(u.arbitrary::<u32>()?), 4);
        }
        let enable = 1 | u64::from(u.int_in_range(0..=5u8)?) << 4;
        self.cfg_write(bus, devfn, cap + 2, enable, 2);
        Ok(())
    }

    /// Where BAR `index` of `bus`/`devfn` decodes, if it does.
    fn bar_address(&mut self, bus: u8, devfn: u8, index: usize) -> Option<u64> {
        let root = &self.root;
        let id = root.resolve(bus, devfn)?;
        root.bar_regions()
            .into_iter()
            .find(|(f, r)| *f == id && r.index == index)
            .map(|(_, r)| r.address)
    }

    /// Checks what must hold whatever the guest did.
    fn check(&mut self) {
        assert_eq!(self.cfg_read(0, 0, 0, 4), 0x0008_1b36, "host bridge identity");
        for a in &self.assigned {
            let log = lock(&a.fake.log);
            let (now, original) = (&log.config, &a.original);
            assert_eq!(now[0x10..0x28], original[0x10..0x28], "device BAR registers changed");
            assert_eq!(now[0x30..0x34], original[0x30..0x34], "device ROM register changed");
            let command = |c: &[u8]| u16::from_le_bytes([c[4], c[5]]);
            let kept = !passthrough::assigned::policy::COMMAND_FORWARDED;
            assert_eq!(command(now) & kept, command(original) & kept, "COMMAND bits forwarded");
            if let Some(forwardable) = a.forwardable {
                for (offset, data) in &log.config_writes {
                    for at in *offset..*offset + data.len() as u16 {
                        assert!(forwardable(at), "a guest write at {at:#x} reached the device");
                    }
                }
            }
        }
    }
}

fn ecam(bus: u8, devfn: u8, register: u16) -> u64 {
    u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(register)
}

/// Where a configuration access goes: mostly a present function.
fn target(u: &mut Unstructured<'_>, present: &[(u8, u8)]) -> Result<(u8, u8)> {
    if !present.is_empty() && u.ratio(7u8, 8u8)? {
        Ok(*u.choose(present)?)
    } else {
        Ok((u.int_in_range(0..=3u8)?, u.arbitrary()?))
    }
}

fn register(u: &mut Unstructured<'_>) -> Result<u16> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => u.int_in_range(0..=0x40u16)?,
        2 => u.int_in_range(0..=0xffu16)?,
        _ => u.int_in_range(0..=0x1003u16)?,
    })
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let Some(mut rig) = Rig::new(u)? else { return Ok(()) };
    let mut present = rig.present();
    for _ in 0..aperture_fuzz::MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=23u8)? {
            0..=5 => {
                // Configuration write.
                let (bus, devfn) = target(u, &present)?;
                let reg = register(u)?;
                let len = aperture_fuzz::access_len(u)?;
                let data = aperture_fuzz::bytes(u, len)?;
                aperture_fuzz::trace!("cfg write {bus:02x}:{devfn:02x} @{reg:#x} {data:x?}");
                rig.ecam.write(ecam(bus, devfn, reg), &data);
            }
            6..=8 => {
                let (bus, devfn) = target(u, &present)?;
                let reg = register(u)?;
                let mut data = vec![0u8; aperture_fuzz::access_len(u)?];
                rig.ecam.read(ecam(bus, devfn, reg), &mut data);
                aperture_fuzz::trace!("cfg read {bus:02x}:{devfn:02x} @{reg:#x} -> {data:x?}");
            }
            9 => {
                // Any ECAM offset, including past the 256 buses.
                let offset = u.arbitrary::<u64>()? >> u.int_in_range(0..=63u32)?;
                let len = aperture_fuzz::access_len(u)?;
                let mut data = aperture_fuzz::bytes(u, len)?;
                if u.arbitrary()? {
                    aperture_fuzz::trace!("ecam write @{offset:#x} {data:x?}");
                    rig.ecam.write(offset, &data);
                } else {
                    aperture_fuzz::trace!("ecam read @{offset:#x} len {}", data.len());
                    rig.ecam.read(offset, &mut data);
                }
            }
            10..=15 => {
                // A BAR access: inside a decoded BAR, mostly at the interesting offsets.
                let regions = rig.root.bar_regions();
                let address = if !regions.is_empty() && u.ratio(7u8, 8u8)? {
                    let (_, r) = *u.choose(&regions)?;
                    let base = *u.choose(&[
                        0,
                        0,
                        0x1000,
                        0x2000,
                        0x3000,
                        0x3800,
                        fake_host::GPU_TABLE,
                        fake_host::GPU_PBA,
                    ])?;
                    let offset = if u.ratio(1u8, 2u8)? {
                        base.wrapping_add(u.int_in_range(0..=0x3fu64)?)
                    } else {
                        u.int_in_range(0..=r.size)?
                    };
                    r.address.wrapping_add(offset % r.size.max(1))
                } else {
                    u.arbitrary()?
                };
                let len = aperture_fuzz::access_len(u)?;
                let mut data = aperture_fuzz::bytes(u, len)?;
                let write = u.arbitrary()?;
                aperture_fuzz::trace!(
                    "mmio {} {address:#x} {data:x?}",
                    if write { "write" } else { "read" }
                );
                rig.mmio(address, &mut data, write);
            }
            16 | 17 => {
                aperture_fuzz::trace!("enumerate");
                rig.enumerate(u)?;
                present = rig.present();
            }
            18 => {
                // Program a capability field: MSI (0x05), PCIe (0x10), MSI-X (0x11), PM (0x01)
                // or vendor (0x09), found by walking the list.
                let (bus, devfn) = target(u, &present)?;
                let id = *u.choose(&[0x11u8, 0x05, 0x10, 0x01, 0x09])?;
                if let Some(cap) = rig.find_capability(bus, devfn, id) {
                    let field = u.int_in_range(0..=0x3cu16)?;
                    let len = *u.choose(&[1usize, 2, 4])?;
                    let field = field / len as u16 * len as u16;
                    let value = if id == 0x11 && field == 2 && u.ratio(3u8, 4u8)? {
                        // MSI-X enable, maybe function mask.
                        0x8000 | u64::from(u.int_in_range(0..=1u16)?) << 14
                    } else {
                        u.arbitrary()?
                    };
                    aperture_fuzz::trace!(
                        "cap {id:#x} of {bus:02x}:{devfn:02x} +{field:#x} = {value:#x}/{len}"
                    );
                    rig.cfg_write(bus, devfn, cap + field, value, len);
                }
            }
            19 => {
                let virtio: Vec<u8> =
                    present.iter().filter(|&&(bus, _)| bus == 0).map(|&(_, devfn)| devfn).collect();
                let mut found = Vec::new();
                for devfn in virtio {
                    if rig.cfg_read(0, devfn, 0, 2) == 0x1af4 {
                        found.push(devfn);
                    }
                }
                if !found.is_empty() {
                    let devfn = *u.choose(&found)?;
                    aperture_fuzz::trace!("virtio bring-up of 00:{devfn:02x}");
                    rig.virtio_bring_up(u, devfn)?;
                }
            }
            20 | 21 => {
                // Guest RAM, where the rings and buffers are.
                let at = RAM_BASE + u.int_in_range(0..=0x3fffu64)?;
                let len = u.int_in_range(1..=64usize)?;
                let bytes = aperture_fuzz::bytes(u, len)?;
                aperture_fuzz::trace!("ram {at:#x} {bytes:x?}");
                let _ = rig.mem.write_slice(&bytes, GuestAddress(at));
            }
            22 => {
                let (bus, devfn) = target(u, &present)?;
                if u.arbitrary()? {
                    aperture_fuzz::trace!("MSI-X setup of {bus:02x}:{devfn:02x}");
                    rig.msix_setup(u, bus, devfn)?;
                } else {
                    aperture_fuzz::trace!("MSI setup of {bus:02x}:{devfn:02x}");
                    rig.msi_setup(u, bus, devfn)?;
                }
                let _ = rig.root.functions();
            }
            _ => rig.check(),
        }
    }
    rig.check();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
