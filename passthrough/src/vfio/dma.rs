//! The VFIO type1 DMA mappers: guest RAM made reachable by the container's devices, either at
//! device address = guest-physical address ([`VfioIdentityMapper`]), or at device addresses
//! the mapper picks within DART-like limits ([`VfioHostPicksMapper`]), so that the DMA window
//! path that macOS needs runs, and is tested, on Linux.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use log::{info, warn};

use super::container::VfioContainer;
use crate::dma::{
    parse_vfio_iova_ranges, usable_iova_ranges, AddressPolicy, AllocatorError, Bytes, FitPolicy,
    HostMapper, HostPicksAllocator, MapConstraints, MapperError, MapperLimits, DEFAULT_DMA_REACH,
};
use crate::host::RamRegion;

/// Maps guest RAM for device DMA at device address = guest-physical address.
#[derive(Debug)]
pub struct VfioIdentityMapper {
    container: Arc<VfioContainer>,
    ram: Vec<RamRegion>,
    limits: MapperLimits,
}

impl VfioIdentityMapper {
    /// A mapper over `ram` (which must stay mapped while mappings live), with the IOMMU's
    /// page size as granule and no byte or mapping limit of its own.
    pub fn new(container: Arc<VfioContainer>, ram: Vec<RamRegion>, page_size: u64) -> Self {
        let limits = MapperLimits {
            max_mapped_bytes: u64::MAX,
            max_mappings: u32::MAX,
            alignment: page_size,
            policy: AddressPolicy::Identity,
        };
        Self { container, ram, limits }
    }
}

impl HostMapper for VfioIdentityMapper {
    fn limits(&self) -> &MapperLimits {
        &self.limits
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        let failed = |reason: String| MapperError::MapFailed { gpa, len, reason };
        let vaddr = RamRegion::host_addr_of(&self.ram, gpa, len)
            .ok_or_else(|| failed("the range is not guest RAM".to_string()))?;
        self.container.map_dma(gpa, len, vaddr).map_err(|e| failed(e.to_string()))?;
        Ok(gpa)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        self.container.unmap_dma(device_addr, len).map_err(|e| MapperError::UnmapFailed {
            device_addr,
            len,
            reason: e.to_string(),
        })
    }
}

/// What the host-picks mapper needs from the container: the container itself in the VMM, a
/// fake in tests.
trait IommuMap: Send + Sync + fmt::Debug {
    /// Makes `size` bytes at host `vaddr` reachable at `iova`.
    fn map_dma(&self, iova: u64, size: u64, vaddr: u64) -> Result<(), String>;
    /// Removes the mapping at `iova..iova+size`.
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), String>;
    /// The IOVA ranges the IOMMU accepts, inclusive `(start, last)`, if it says.
    fn valid_iova_ranges(&self) -> Result<Option<Vec<(u64, u64)>>, String>;
}

impl IommuMap for VfioContainer {
    fn map_dma(&self, iova: u64, size: u64, vaddr: u64) -> Result<(), String> {
        VfioContainer::map_dma(self, iova, size, vaddr).map_err(|e| e.to_string())
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), String> {
        VfioContainer::unmap_dma(self, iova, size).map_err(|e| e.to_string())
    }

    fn valid_iova_ranges(&self) -> Result<Option<Vec<(u64, u64)>>, String> {
        let info = VfioContainer::iommu_info(self).map_err(|e| e.to_string())?;
        parse_vfio_iova_ranges(&info)
    }
}

/// Maps guest RAM for device DMA the way the DART does on macOS: the mapper picks each
/// mapping's device address and refuses to go beyond its byte and mapping limits, so the
/// window manager and the guest's DMA window driver meet the same constraints on Linux as on
/// a Mac. Unlike the DART it can be told where to map ([`AddressPolicy::HostPicksWithin`]):
/// below the device's DMA mask, at the alignment its driver needs; by itself it picks from
/// the top of its aperture down, so low addresses stay free for devices with narrow masks.
///
/// The aperture is every IOVA below 2^40 ([`DEFAULT_DMA_REACH`], where a GPU whose driver
/// lowers its DMA mask to 40 bits still reaches) that the host IOMMU accepts and that is not
/// a guest RAM address (a device address equal to the guest address of the same buffer would
/// hide a guest driver that confuses the two).
///
/// The limits are enforced here too, not only trusted to the caller: a caller that
/// misbehaves gets the refusal a real DART would give instead of a working mapping.
#[derive(Debug)]
pub struct VfioHostPicksMapper {
    iommu: Arc<dyn IommuMap>,
    ram: Vec<RamRegion>,
    limits: MapperLimits,
    iovas: HostPicksAllocator,
    /// Live mappings: IOVA → (length, guest-physical start).
    live: BTreeMap<u64, (u64, u64)>,
    live_bytes: u64,
}

impl VfioHostPicksMapper {
    /// A mapper over `ram` (which must stay mapped while mappings live) with `limits`
    /// (`policy` is ignored: this mapper always picks addresses, within constraints), over
    /// the aperture described above. `limits.alignment` must be a multiple of the IOMMU's
    /// page size (VFIO refuses smaller granules at map time).
    pub fn new(
        container: Arc<VfioContainer>,
        ram: Vec<RamRegion>,
        limits: MapperLimits,
    ) -> Result<Self, MapperError> {
        Self::with_iommu(container, ram, limits)
    }

    fn with_iommu(
        iommu: Arc<dyn IommuMap>,
        ram: Vec<RamRegion>,
        limits: MapperLimits,
    ) -> Result<Self, MapperError> {
        let valid = match iommu.valid_iova_ranges() {
            Ok(Some(valid)) => Some(valid),
            Ok(None) => {
                info!(
                    "the host IOMMU does not list its IOVA ranges (kernel before 5.4); DMA \
                     windows avoid the arm64 MSI window and assume the rest is usable"
                );
                None
            }
            Err(e) => {
                warn!("cannot read the host IOMMU's IOVA ranges ({e}); assuming the usual ones");
                None
            }
        };
        let guest: Vec<(u64, u64)> = ram.iter().map(|r| (r.gpa, r.len)).collect();
        let ranges =
            usable_iova_ranges(valid.as_deref(), &guest, DEFAULT_DMA_REACH, limits.alignment);
        Self::with_ranges(iommu, ram, limits, &ranges)
    }

    /// A mapper handing out IOVAs from `ranges` (`(start, len)`).
    fn with_ranges(
        iommu: Arc<dyn IommuMap>,
        ram: Vec<RamRegion>,
        limits: MapperLimits,
        ranges: &[(u64, u64)],
    ) -> Result<Self, MapperError> {
        let limits = MapperLimits { policy: AddressPolicy::HostPicksWithin, ..limits };
        limits.validate()?;
        let iovas = HostPicksAllocator::with_ranges(ranges, limits.alignment, FitPolicy::TopDown)
            .map_err(|e| {
            MapperError::InvalidLimits(format!(
                "no usable DMA IOVA aperture below 2^40 outside guest RAM and the host \
                     IOMMU's reserved ranges ({e}); give the guest less RAM"
            ))
        })?;
        if iovas.free_bytes() < limits.max_mapped_bytes {
            return Err(MapperError::InvalidLimits(format!(
                "the DMA IOVA aperture below 2^40 outside guest RAM and the host IOMMU's \
                 reserved ranges holds {}, less than the {} dma-limit; lower dma-limit or \
                 give the guest less RAM",
                Bytes(iovas.free_bytes()),
                Bytes(limits.max_mapped_bytes)
            )));
        }
        let overlap = iovas.ranges().iter().find_map(|&(s, l)| {
            ram.iter().find(|r| r.gpa < s + l && s < r.gpa + r.len).map(|r| (s, l, r))
        });
        if let Some((s, l, r)) = overlap {
            return Err(MapperError::InvalidLimits(format!(
                "the DMA IOVA range {s:#x}+{l:#x} overlaps guest RAM at {:#x}+{:#x}; device \
                 addresses must differ from guest addresses",
                r.gpa, r.len
            )));
        }
        Ok(Self { iommu, ram, limits, iovas, live: BTreeMap::new(), live_bytes: 0 })
    }

    /// The IOVA ranges handed out from, `(start, len)` by address.
    pub fn iova_ranges(&self) -> &[(u64, u64)] {
        self.iovas.ranges()
    }

    /// `(base, size)` spanning the IOVA aperture (see [`VfioHostPicksMapper::iova_ranges`]).
    pub fn iova_aperture(&self) -> (u64, u64) {
        self.iovas.aperture()
    }

    /// Bytes mapped now.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Mappings live now.
    pub fn live_mappings(&self) -> usize {
        self.live.len()
    }

    /// Why a map of `[gpa, gpa+len)` must be refused before any host call, if it must.
    fn refusal(&self, gpa: u64, len: u64) -> Option<String> {
        let align = self.limits.alignment;
        if len == 0 || gpa & (align - 1) != 0 || len & (align - 1) != 0 {
            return Some(format!(
                "the range is not a non-empty multiple of the {} granule",
                Bytes(align)
            ));
        }
        let max_maps = self.limits.max_mappings;
        if self.live.len() >= max_maps as usize {
            return Some(format!(
                "{max_maps} mappings are live, the host-picks mapper's limit (as the DART's)"
            ));
        }
        let max_bytes = self.limits.max_mapped_bytes;
        if self.live_bytes.checked_add(len).is_none_or(|total| total > max_bytes) {
            return Some(format!(
                "{} are mapped, {} more would pass the host-picks mapper's {} limit (as the \
                 DART's)",
                Bytes(self.live_bytes),
                Bytes(len),
                Bytes(max_bytes)
            ));
        }
        None
    }
}

impl HostMapper for VfioHostPicksMapper {
    fn limits(&self) -> &MapperLimits {
        &self.limits
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        self.map_within(gpa, len, &MapConstraints::NONE)
    }

    fn map_within(
        &mut self,
        gpa: u64,
        len: u64,
        constraints: &MapConstraints,
    ) -> Result<u64, MapperError> {
        let failed = |reason: String| MapperError::MapFailed { gpa, len, reason };
        if let Some(why) = self.refusal(gpa, len) {
            return Err(failed(why));
        }
        let vaddr = RamRegion::host_addr_of(&self.ram, gpa, len)
            .ok_or_else(|| failed("the range is not guest RAM".to_string()))?;
        let iova = match self.iovas.allocate_within(len, gpa, constraints) {
            Ok(iova) => iova,
            Err(e @ AllocatorError::Unplaceable { kind, .. }) => {
                let reason = e.to_string();
                let constraints = *constraints;
                return Err(MapperError::Unplaceable { gpa, len, constraints, kind, reason });
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        if let Err(why) = self.iommu.map_dma(iova, len, vaddr) {
            // Just allocated, so the free cannot fail; the IOVA range goes back for reuse.
            let _ = self.iovas.free(iova, len);
            return Err(failed(why));
        }
        self.live.insert(iova, (len, gpa));
        self.live_bytes += len;
        Ok(iova)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        let failed = |reason: String| MapperError::UnmapFailed { device_addr, len, reason };
        match self.live.get(&device_addr) {
            Some(&(live_len, _)) if live_len == len => {}
            Some(&(live_len, gpa)) => {
                return Err(failed(format!(
                    "the mapping there (guest {gpa:#x}) is {live_len:#x} bytes long"
                )))
            }
            None => return Err(failed("no mapping starts there".to_string())),
        }
        // On failure the mapping stays, counted, and the caller may retry.
        self.iommu.unmap_dma(device_addr, len).map_err(failed)?;
        self.live.remove(&device_addr);
        self.live_bytes -= len;
        self.iovas.free(device_addr, len).map_err(|e| failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::dma::{GuestRamRange, WindowConfig, WindowManager};

    const K16: u64 = 16 << 10;
    const RAM_GPA: u64 = 0x4000_0000;
    const RAM_LEN: u64 = 1 << 30;
    const HOST: u64 = 0x7f00_0000_0000;

    /// Records the container calls and checks them as the kernel would.
    #[derive(Debug, Default)]
    struct FakeIommu {
        state: Mutex<FakeState>,
    }

    #[derive(Debug, Default)]
    struct FakeState {
        /// iova → (size, vaddr)
        live: BTreeMap<u64, (u64, u64)>,
        calls: Vec<String>,
        fail_maps: u32,
        fail_unmaps: u32,
        errors: Vec<String>,
        /// What VFIO_IOMMU_GET_INFO says (`None`: no IOVA range capability).
        valid: Option<Vec<(u64, u64)>>,
    }

    impl FakeIommu {
        fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().unwrap()
        }
    }

    impl IommuMap for FakeIommu {
        fn map_dma(&self, iova: u64, size: u64, vaddr: u64) -> Result<(), String> {
            let mut s = self.state();
            s.calls.push(format!("map {iova:#x}+{size:#x} at {vaddr:#x}"));
            if s.fail_maps > 0 {
                s.fail_maps -= 1;
                return Err("VFIO_IOMMU_MAP_DMA: ENOMEM (injected)".into());
            }
            let overlap =
                s.live.range(..iova + size).next_back().filter(|(&a, &(l, _))| a + l > iova);
            if let Some((&a, _)) = overlap {
                let e = format!("map {iova:#x} overlaps live {a:#x}");
                s.errors.push(e.clone());
                return Err(e);
            }
            s.live.insert(iova, (size, vaddr));
            Ok(())
        }

        fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), String> {
            let mut s = self.state();
            s.calls.push(format!("unmap {iova:#x}+{size:#x}"));
            if s.fail_unmaps > 0 {
                s.fail_unmaps -= 1;
                return Err("VFIO_IOMMU_UNMAP_DMA: EIO (injected)".into());
            }
            if s.live.get(&iova).map(|&(l, _)| l) != Some(size) {
                let e = format!("unmap {iova:#x}+{size:#x} matches no mapping");
                s.errors.push(e.clone());
                return Err(e);
            }
            s.live.remove(&iova);
            Ok(())
        }

        fn valid_iova_ranges(&self) -> Result<Option<Vec<(u64, u64)>>, String> {
            Ok(self.state().valid.clone())
        }
    }

    fn ram() -> Vec<RamRegion> {
        vec![RamRegion { gpa: RAM_GPA, len: RAM_LEN, host_addr: HOST }]
    }

    fn limits(max_bytes: u64, max_maps: u32) -> MapperLimits {
        MapperLimits {
            max_mapped_bytes: max_bytes,
            max_mappings: max_maps,
            alignment: K16,
            policy: AddressPolicy::Identity,
        }
    }

    fn mapper(max_bytes: u64, max_maps: u32) -> (VfioHostPicksMapper, Arc<FakeIommu>) {
        let iommu = Arc::new(FakeIommu::default());
        let m = VfioHostPicksMapper::with_iommu(iommu.clone(), ram(), limits(max_bytes, max_maps))
            .unwrap();
        (m, iommu)
    }

    #[test]
    fn picks_addresses_in_its_aperture_and_maps_the_right_host_memory() {
        let (mut m, iommu) = mapper(64 * K16, 8);
        assert_eq!(m.limits().policy, AddressPolicy::HostPicksWithin, "always host-picks");
        // Below 2^40, around guest RAM, without the arm64 MSI window (no host ranges given).
        assert_eq!(
            m.iova_ranges(),
            [
                (1 << 20, 0x800_0000 - (1 << 20)),
                (0x810_0000, RAM_GPA - 0x810_0000),
                (RAM_GPA + RAM_LEN, (1 << 40) - RAM_GPA - RAM_LEN)
            ]
        );
        let a = m.map(RAM_GPA + 4 * K16, 2 * K16).unwrap();
        let b = m.map(RAM_GPA, K16).unwrap();
        // Top-down: unconstrained maps keep low addresses free.
        assert!(((1 << 40) - 4 * K16..1 << 40).contains(&a), "{a:#x}");
        assert!(((1 << 40) - 4 * K16..1 << 40).contains(&b), "{b:#x}");
        assert_ne!(a, b);
        let s = iommu.state();
        assert_eq!(s.live.get(&a), Some(&(2 * K16, HOST + 4 * K16)));
        assert_eq!(s.live.get(&b), Some(&(K16, HOST)));
        drop(s);
        assert_eq!((m.live_bytes(), m.live_mappings()), (3 * K16, 2));
        m.unmap(a, 2 * K16).unwrap();
        m.unmap(b, K16).unwrap();
        assert_eq!((m.live_bytes(), m.live_mappings()), (0, 0));
        let s = iommu.state();
        assert!(s.live.is_empty() && s.errors.is_empty(), "{:?}", s.errors);
    }

    #[test]
    fn enforces_the_mapping_limit_without_calling_the_host() {
        let (mut m, iommu) = mapper(64 * K16, 2);
        let a = m.map(RAM_GPA, K16).unwrap();
        m.map(RAM_GPA + K16, K16).unwrap();
        let calls = iommu.state().calls.len();
        let err = m.map(RAM_GPA + 2 * K16, K16).unwrap_err().to_string();
        assert!(err.contains("2 mappings are live"), "{err}");
        assert_eq!(iommu.state().calls.len(), calls, "refused before VFIO");
        m.unmap(a, K16).unwrap();
        m.map(RAM_GPA + 2 * K16, K16).unwrap();
    }

    #[test]
    fn enforces_the_byte_limit_without_calling_the_host() {
        let (mut m, iommu) = mapper(4 * K16, 100);
        let a = m.map(RAM_GPA, 3 * K16).unwrap();
        let err = m.map(RAM_GPA + 8 * K16, 2 * K16).unwrap_err().to_string();
        assert!(err.contains("48 KiB are mapped, 32 KiB more would pass"), "{err}");
        assert!(err.contains("64 KiB limit"), "{err}");
        assert_eq!(iommu.state().calls.len(), 1);
        m.map(RAM_GPA + 8 * K16, K16).unwrap();
        m.unmap(a, 3 * K16).unwrap();
        m.map(RAM_GPA + 16 * K16, 3 * K16).unwrap();
        assert_eq!(m.live_bytes(), 4 * K16);
    }

    #[test]
    fn refuses_misaligned_and_non_ram_ranges() {
        let (mut m, iommu) = mapper(64 * K16, 8);
        for (gpa, len) in [(RAM_GPA, 0), (RAM_GPA + 0x1000, K16), (RAM_GPA, 0x1000)] {
            let err = m.map(gpa, len).unwrap_err().to_string();
            assert!(err.contains("granule"), "{err}");
        }
        let err = m.map(RAM_GPA + RAM_LEN - K16, 2 * K16).unwrap_err().to_string();
        assert!(err.contains("not guest RAM"), "{err}");
        assert!(m.map(u64::MAX - K16 + 1, K16).is_err());
        assert!(iommu.state().calls.is_empty());
        assert_eq!(m.iovas.allocated_bytes(), 0);
    }

    #[test]
    fn unmap_must_name_a_live_mapping() {
        let (mut m, iommu) = mapper(64 * K16, 8);
        let a = m.map(RAM_GPA, 2 * K16).unwrap();
        let err = m.unmap(a, K16).unwrap_err().to_string();
        assert!(err.contains("0x8000 bytes long"), "{err}");
        let err = m.unmap(a + K16, K16).unwrap_err().to_string();
        assert!(err.contains("no mapping starts there"), "{err}");
        assert_eq!(iommu.state().calls.len(), 1, "refused before VFIO");
        m.unmap(a, 2 * K16).unwrap();
        assert!(m.unmap(a, 2 * K16).is_err(), "twice");
    }

    #[test]
    fn host_failures_leave_the_books_straight() {
        let (mut m, iommu) = mapper(64 * K16, 8);
        iommu.state().fail_maps = 1;
        let err = m.map(RAM_GPA, K16).unwrap_err().to_string();
        assert!(err.contains("ENOMEM (injected)"), "{err}");
        assert_eq!((m.live_bytes(), m.live_mappings(), m.iovas.allocated_bytes()), (0, 0, 0));
        let a = m.map(RAM_GPA, K16).unwrap();
        iommu.state().fail_unmaps = 1;
        assert!(m.unmap(a, K16).is_err());
        assert_eq!((m.live_bytes(), m.live_mappings()), (K16, 1), "still mapped, counted");
        m.unmap(a, K16).unwrap();
        assert_eq!(m.iovas.allocated_bytes(), 0);
        assert!(iommu.state().errors.is_empty());
    }

    #[test]
    fn the_aperture_follows_the_host_iommu_and_avoids_guest_ram() {
        let iommu = Arc::new(FakeIommu::default());
        // As an arm64 SMMU with a 48-bit input range reports.
        iommu.state().valid = Some(vec![(0, 0x7ff_ffff), (0x810_0000, (1 << 48) - 1)]);
        let m = VfioHostPicksMapper::with_iommu(iommu.clone(), ram(), limits(64 * K16, 8)).unwrap();
        for &(s, l) in m.iova_ranges() {
            assert!(s + l <= 1 << 40, "below 2^40");
            assert!(s + l <= RAM_GPA || s >= RAM_GPA + RAM_LEN, "not guest RAM");
            assert!(s + l <= 0x800_0000 || s >= 0x810_0000, "not the MSI window");
        }
        // A host whose IOMMU reaches only 2^32: everything below it, RAM excepted.
        iommu.state().valid = Some(vec![(0, 0xffff_ffff)]);
        let m = VfioHostPicksMapper::with_iommu(iommu.clone(), ram(), limits(64 * K16, 8)).unwrap();
        assert_eq!(m.iova_aperture(), (1 << 20, (1 << 32) - (1 << 20)));
        // Nothing left: refused with what to change.
        iommu.state().valid = Some(vec![(RAM_GPA, RAM_GPA + RAM_LEN - 1)]);
        let err = VfioHostPicksMapper::with_iommu(iommu.clone(), ram(), limits(64 * K16, 8))
            .unwrap_err()
            .to_string();
        assert!(err.contains("give the guest less RAM"), "{err}");
        // Too small for the budget.
        iommu.state().valid = Some(vec![(0, 0x1ff_ffff)]);
        let err = VfioHostPicksMapper::with_iommu(iommu.clone(), ram(), limits(64 << 20, 8))
            .unwrap_err()
            .to_string();
        assert!(err.contains("less than the 64 MiB dma-limit"), "{err}");
        assert!(VfioHostPicksMapper::with_iommu(iommu, ram(), limits(64 * K16, 0)).is_err());
        // Explicit ranges over guest RAM are refused.
        let iommu: Arc<dyn IommuMap> = Arc::new(FakeIommu::default());
        let err = VfioHostPicksMapper::with_ranges(
            iommu,
            ram(),
            limits(64 * K16, 8),
            &[(RAM_GPA - (1 << 20), 2 << 20)],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("overlaps guest RAM"), "{err}");
    }

    #[test]
    fn maps_within_a_devices_mask_and_alignment() {
        let (mut m, iommu) = mapper(64 << 20, 64);
        let c40 = MapConstraints::below_mask(40).aligned(2 << 20);
        let a = m.map_within(RAM_GPA + (2 << 20), 2 << 20, &c40).unwrap();
        assert!(a + (2 << 20) <= 1 << 40 && a % (2 << 20) == 0, "{a:#x}");
        let c32 = MapConstraints::below_mask(32).aligned(64 << 10);
        let b = m.map_within(RAM_GPA, 64 << 10, &c32).unwrap();
        assert!(b + (64 << 10) <= 1 << 32 && b % (64 << 10) == 0, "{b:#x}");
        assert!(!(RAM_GPA..RAM_GPA + RAM_LEN).contains(&b), "never a guest RAM address");
        // The alignment is kept relative to the guest address (offset 16 KiB in 64 KiB).
        let c = m.map_within(RAM_GPA + K16, K16, &MapConstraints::NONE.aligned(64 << 10));
        assert_eq!(c.unwrap() % (64 << 10), K16);
        // Nothing fits below 2^20 (the floor): Unplaceable, naming the mask.
        let err = m.map_within(RAM_GPA, K16, &MapConstraints::below_mask(20)).unwrap_err();
        assert!(
            matches!(err, MapperError::Unplaceable { kind: crate::dma::ConstraintKind::Mask, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("20-bit DMA mask"), "{err}");
        assert_eq!(m.live_mappings(), 3);
        assert!(iommu.state().errors.is_empty());
    }

    #[test]
    fn serves_the_window_manager_within_the_dart_limits() {
        let iommu = Arc::new(FakeIommu::default());
        let dart_like = limits(64 * K16, 6);
        let m = VfioHostPicksMapper::with_iommu(iommu.clone(), ram(), dart_like).unwrap();
        let config = WindowConfig { window_size: 4 * K16, cache_released: true };
        let mut wm = WindowManager::new(
            Box::new(m) as Box<dyn HostMapper>,
            config,
            &[GuestRamRange { start: RAM_GPA, len: RAM_LEN }],
        )
        .unwrap();
        let mut live = Vec::new();
        let mut rng = crate::testing::XorShift::new(0x1234_5678_u64);
        for step in 0..2_000 {
            let seed = rng.next_u64();
            if live.len() < 5 && seed % 3 != 0 {
                let gpa = RAM_GPA + (seed >> 8) % (RAM_LEN - 4 * K16);
                let len = 1 + (seed >> 40) % (2 * K16);
                let bits = 32 + (seed >> 50) as u32 % 33;
                let d = wm.map_within(gpa, len, &MapConstraints::below_mask(bits)).unwrap();
                assert!(u128::from(d) + u128::from(len) <= 1u128 << bits, "step {step}");
                assert!(!(RAM_GPA..RAM_GPA + RAM_LEN).contains(&d), "step {step}");
                assert_eq!(wm.translate(d), Some(gpa), "step {step}");
                live.push((d, len));
            } else if let Some((d, len)) = live.pop() {
                wm.unmap(d, len).unwrap();
            }
            let s = wm.stats();
            assert!(s.live_bytes <= 64 * K16 && s.live_mappings <= 6, "step {step}: {s}");
            assert_eq!(s.failures.host_map, 0, "step {step}: {s}");
        }
        wm.reset().unwrap();
        let s = iommu.state();
        assert!(s.live.is_empty() && s.errors.is_empty(), "{:?}", s.errors);
    }
}
