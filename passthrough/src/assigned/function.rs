//! [`AssignedFunction`]: a physical PCI function offered to the guest through a virtual
//! configuration space, with its BARs trapped or mapped and its MSI and MSI-X emulated.
//!
//! INTx: the device's Interrupt Pin is shown (read-only) when the host can deliver INTx, and
//! for every function with MSI even when it cannot (see [`offered_intx`]); Interrupt Line is
//! the guest's scratch register, as on real hardware. COMMAND's Interrupt Disable reaches the device and STATUS's Interrupt Status comes from it (see
//! [`super::policy`]); the host (VFIO) masks and routes the line itself.

use std::ops::Range;

use devices::pci::config::{
    ConfigSpace, CONFIG_SPACE_SIZE, HEADER_TYPE, INTERRUPT_PIN, REVISION_ID, STANDARD_CONFIG_SIZE,
    SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID, VENDOR_ID,
};
use devices::pci::msix::{MSIX_CAPABILITY_ID, MSIX_ENTRY_SIZE};
use devices::pci::root_port::PcieLink;
use devices::pci::{BarRegion, PciFunction, PciIds};
use log::{debug, info, warn};

use super::bars::{self, BarLayout, BAR_COUNT};
use super::capabilities::{self, CapabilityLayout};
use super::error::AssignError;
use super::host::{HostFunction, InterruptHost, InterruptKind};
use super::msi::{AssignedMsi, MsiCapability};
use super::msix::{AssignedMsix, MsixPlacement};
use super::nvidia::{ConfigMirror, CONFIG_MIRROR_BAR};
use super::policy::{aligned_chunks, ConfigPolicy, HEADER_RULES};
use super::reset::{GuestReset, GuestResetCause, ResetHook};
use super::traced;

/// The BAR index under which the expansion ROM appears in
/// [`PciFunction::bar_regions`] and [`PciFunction::bar_read`]: reads go to
/// [`HostFunction::rom_read`]; the VMM maps the ROM window read-only and trapped.
pub const ROM_BAR_INDEX: usize = 6;

/// A physical PCI function assigned to the guest.
pub struct AssignedFunction {
    name: String,
    host: Box<dyn HostFunction>,
    interrupts: Box<dyn InterruptHost>,
    /// The guest's view.
    config: ConfigSpace,
    /// The guest's view at power-on, for resets.
    pristine: ConfigSpace,
    policy: ConfigPolicy,
    bars: BarLayout,
    capabilities: CapabilityLayout,
    msix: Option<AssignedMsix>,
    msi: Option<AssignedMsi>,
    /// The INTx pin offered (1 = INTA .. 4 = INTD), if any.
    intx_pin: Option<u8>,
    /// Whether the host delivers the pin's interrupts (else the pin is only shown).
    intx_delivered: bool,
    /// The device's PCIe link (negotiated, else its capability), for the root port above it.
    pcie_link: Option<PcieLink>,
    /// NVIDIA's configuration mirror in BAR0, trapped and virtualized.
    config_mirror: Option<ConfigMirror>,
    /// BAR ranges trapped so that every access to them is traced (`trace-bar`).
    traced: Vec<(usize, Range<u64>)>,
    /// The host reset for guest FLRs and bus resets, and whether FLR is offered.
    guest_reset: GuestReset,
    requester_id: u16,
}

impl std::fmt::Debug for AssignedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignedFunction")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("bars", &self.bars)
            .field("msix", &self.msix.as_ref().map(AssignedMsix::placement))
            .field("msi", &self.msi.as_ref().map(AssignedMsi::capability))
            .field("intx_pin", &self.intx_pin)
            .field("intx_delivered", &self.intx_delivered)
            .field("pcie_link", &self.pcie_link)
            .field("config_mirror", &self.config_mirror)
            .field("traced", &self.traced)
            .field("guest_reset", &self.guest_reset)
            .field("requester_id", &self.requester_id)
            .finish()
    }
}

/// Reads the device's whole configuration space into a [`ConfigSpace`] (used as a plain byte
/// store). The standard header must be readable; an unreadable extended space reads as empty.
fn snapshot(name: &str, host: &dyn HostFunction) -> Result<ConfigSpace, AssignError> {
    let mut device = ConfigSpace::new_endpoint(&PciIds::default());
    let mut dword = [0u8; 4];
    for offset in (0..CONFIG_SPACE_SIZE as u16).step_by(4) {
        match host.config_read(offset, &mut dword) {
            Ok(()) => device.set_bytes(offset, &dword),
            Err(source) if offset < STANDARD_CONFIG_SIZE => {
                return Err(AssignError::ConfigRead { name: name.into(), offset, source });
            }
            Err(e) => {
                debug!("{name}: extended configuration space unreadable at {offset:#x} ({e})");
                device.set_bytes(offset, &vec![0; CONFIG_SPACE_SIZE - usize::from(offset)]);
                break;
            }
        }
    }
    Ok(device)
}

impl AssignedFunction {
    /// Reads the device's configuration space once and builds the guest's view of it;
    /// `interrupts` routes the vectors of the MSI and MSI-X the guest enables.
    pub fn new(
        name: &str,
        host: Box<dyn HostFunction>,
        interrupts: Box<dyn InterruptHost>,
    ) -> Result<Self, AssignError> {
        let device = snapshot(name, host.as_ref())?;
        let vendor_id = device.read_u16(VENDOR_ID);
        if vendor_id == 0xffff || vendor_id == 0 {
            return Err(AssignError::NoDevice { name: name.into(), vendor_id });
        }
        let header_type = device.read_u8(HEADER_TYPE) & 0x7f;
        if header_type != 0 {
            return Err(AssignError::NotAnEndpoint { name: name.into(), header_type });
        }
        let class_revision = device.read_u32(REVISION_ID);
        let ids = PciIds {
            vendor_id,
            device_id: device.read_u16(VENDOR_ID + 2),
            revision: class_revision as u8,
            class_code: class_revision >> 8,
            subsystem_vendor_id: device.read_u16(SUBSYSTEM_VENDOR_ID),
            subsystem_id: device.read_u16(SUBSYSTEM_ID),
        };
        let mut config = ConfigSpace::new_endpoint(&ids);
        let bars = bars::build(name, &device, host.as_ref(), &mut config)?;
        let placement = device
            .find_capability(MSIX_CAPABILITY_ID)
            .and_then(|offset| MsixPlacement::read(name, &device, offset, &bars));
        let mut capabilities = capabilities::build(name, &device, &mut config, placement.is_some());
        if let Some(msi) = capabilities.msi.as_mut() {
            limit_msi(name, msi, interrupts.as_ref(), &device, &mut config);
        }
        let msix = match (capabilities.msix, placement) {
            (Some(offset), Some(placement)) => {
                let placement =
                    limit_msix(name, offset, placement, interrupts.as_ref(), &mut config);
                Some(AssignedMsix::new(name, offset, placement)?)
            }
            _ => None,
        };
        let msi = capabilities.msi.map(AssignedMsi::new);
        let device_pin = device.read_u8(INTERRUPT_PIN);
        let intx = offered_intx(name, device_pin, host.intx_available(), msi.is_some());
        let intx_pin = intx.map(|(pin, _)| pin);
        if let Some(pin) = intx_pin {
            config.set_interrupt_pin(pin);
        }
        let pcie_link = capabilities.pcie.and_then(|at| {
            let link_status = device.read_u16(at + capabilities::PCIE_LNKSTA);
            PcieLink::from_registers(device.read_u32(at + capabilities::PCIE_LNKCAP), link_status)
        });
        let config_mirror = ConfigMirror::probe(&ids, &device, &bars, &capabilities);
        let guest_reset = GuestReset::new(&device, capabilities.pcie);
        if config_mirror.is_some() {
            info!(
                "{name}: BAR{CONFIG_MIRROR_BAR} {:#x}+{:#x} mirrors the configuration space: \
                 trapped and virtualized",
                ConfigMirror::range().start,
                CONFIG_SPACE_SIZE
            );
        }
        let mut policy = ConfigPolicy::default();
        for rule in HEADER_RULES.iter().chain(&capabilities.rules) {
            policy.apply(rule);
        }
        info!(
            "{name}: assigned {vendor_id:04x}:{:04x} class {:06x}, {} BARs, MSI-X {}, MSI {}, \
             INTx {}",
            ids.device_id,
            ids.class_code,
            bars.bars.iter().flatten().count(),
            msix.as_ref()
                .map_or("none".to_string(), |m| format!("{} vectors", m.placement().vectors)),
            msi.as_ref().map_or("none".to_string(), |m| format!(
                "{} vectors{}{}",
                m.capability().vectors(),
                if m.capability().is_64bit { ", 64-bit" } else { "" },
                if m.capability().per_vector_mask { ", maskable" } else { "" }
            )),
            match intx {
                Some((pin, true)) => intx_pin_name(pin),
                Some((pin, false)) => format!("{} (shown, never fires)", intx_pin_name(pin)),
                None => "none".to_string(),
            }
        );
        Ok(Self {
            name: name.into(),
            host,
            interrupts,
            pristine: config.clone(),
            config,
            policy,
            bars,
            capabilities,
            msix,
            msi,
            intx_pin,
            intx_delivered: intx.is_some_and(|(_, delivered)| delivered),
            pcie_link,
            config_mirror,
            traced: Vec::new(),
            guest_reset,
            requester_id: 0,
        })
    }

    /// The guest's view of the configuration space.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The BARs and ROM offered to the guest.
    pub fn bar_layout(&self) -> &BarLayout {
        &self.bars
    }

    /// The capabilities offered and hidden.
    pub fn capability_layout(&self) -> &CapabilityLayout {
        &self.capabilities
    }

    /// Where the MSI-X table and PBA are, if MSI-X is offered.
    pub fn msix_placement(&self) -> Option<&MsixPlacement> {
        self.msix.as_ref().map(AssignedMsix::placement)
    }

    /// The MSI capability, if MSI is offered.
    pub fn msi_capability(&self) -> Option<&MsiCapability> {
        self.msi.as_ref().map(AssignedMsi::capability)
    }

    /// The INTx pin the guest sees (1 = INTA .. 4 = INTD), if any. It may be shown without
    /// the host delivering it (see [`Self::intx_delivered`]); the VMM routes it only where
    /// the host has an INTx handle.
    pub fn intx_pin(&self) -> Option<u8> {
        self.intx_pin
    }

    /// Whether the host delivers the shown pin's interrupts. False for a pin shown only so
    /// that an MSI-only function gets a non-zero guest irq (nvidia.ko's probe needs one).
    pub fn intx_delivered(&self) -> bool {
        self.intx_delivered
    }

    /// Whether the guest can get interrupts from the device at all (MSI, MSI-X or a
    /// delivered INTx offered).
    pub fn has_interrupts(&self) -> bool {
        self.msix.is_some() || self.msi.is_some() || self.intx_delivered
    }

    /// Sends MSI and MSI-X programming events to `trace` (configuration and trapped BAR
    /// accesses are traced by the PCI root).
    pub fn set_trace(&mut self, trace: Option<std::sync::Arc<dyn devices::trace::TraceSink>>) {
        if let Some(msi) = self.msi.as_mut() {
            msi.set_trace(trace.clone());
        }
        if let Some(msix) = self.msix.as_mut() {
            msix.set_trace(trace);
        }
    }

    /// The requester id last set.
    pub fn requester_id(&self) -> u16 {
        self.requester_id
    }

    /// The parts of BAR `bar` the VMM should mmap straight into the guest, as (offset in the
    /// BAR, length): the whole host region minus the `page_size` pages holding the MSI-X
    /// table and PBA, NVIDIA's configuration mirror and the `trace-bar` ranges (a trapped
    /// page traps its neighbours too: 16 KiB on macOS). Empty if the host cannot mmap the region or it is smaller than a page;
    /// everything not listed is trapped and reaches [`PciFunction::bar_read`]/`bar_write`.
    pub fn mappable_bar_ranges(&self, bar: usize, page_size: u64) -> Vec<(u64, u64)> {
        let Some(assigned) = self.bars.bars.get(bar).copied().flatten() else {
            return Vec::new();
        };
        if !assigned.host.mmappable {
            return Vec::new();
        }
        let mut trapped: Vec<Range<u64>> = Vec::new();
        if let Some(p) = self.msix_placement() {
            if p.table_bar == bar {
                trapped.push(p.table.clone());
            }
            if p.pba_bar == bar {
                trapped.push(p.pba.clone());
            }
        }
        if self.config_mirror.is_some() && bar == CONFIG_MIRROR_BAR {
            trapped.push(ConfigMirror::range());
        }
        trapped.extend(self.traced.iter().filter(|(b, _)| *b == bar).map(|(_, r)| r.clone()));
        bars::mappable_ranges(assigned.host.size, &trapped, page_size)
    }

    /// Traps BAR ranges instead of mapping them, so that every guest access to them is
    /// traced (`--device BDF,trace-bar=N[:OFFSET+LEN]`): (BAR index, range or `None` for the
    /// whole BAR). Accesses still reach the device. Call before taking
    /// [`Self::mappable_bar_ranges`]. Fails if a BAR is not offered or a range is empty or
    /// not inside the BAR.
    pub fn set_traced_bar_ranges(
        &mut self,
        ranges: &[(usize, Option<Range<u64>>)],
    ) -> Result<(), AssignError> {
        self.traced = traced::checked_ranges(&self.name, &self.bars, ranges)?;
        Ok(())
    }

    /// The BAR ranges trapped for `trace-bar`.
    pub fn traced_bar_ranges(&self) -> &[(usize, Range<u64>)] {
        &self.traced
    }

    /// The device's PCIe link as it was when assigned: the negotiated speed and width, or
    /// its Link Capabilities if the link reported none. The VMM gives the root port above
    /// the function the same link ([`devices::pci::RootPort::set_link`]).
    pub fn pcie_link(&self) -> Option<PcieLink> {
        self.pcie_link
    }

    /// Whether NVIDIA's configuration mirror in BAR0 is trapped and virtualized.
    pub fn has_config_mirror(&self) -> bool {
        self.config_mirror.is_some()
    }

    /// A read of NVIDIA's configuration mirror at configuration offset `offset`: the device
    /// is read too (its value dropped, in case reading has effects), then the virtual
    /// configuration space answers.
    fn mirror_read(&mut self, offset: u16, data: &mut [u8]) {
        let bar_offset = ConfigMirror::range().start + u64::from(offset);
        if let Err(e) = self.host.bar_read(CONFIG_MIRROR_BAR, bar_offset, &mut vec![0; data.len()])
        {
            debug!("{}: config mirror read at {offset:#x} failed: {e}", self.name);
        }
        let start = usize::from(offset);
        for chunk in aligned_chunks(start..start + data.len()) {
            // Inside the 4 KiB mirror.
            let at = chunk.start as u16;
            self.config_read(at, &mut data[chunk.start - start..chunk.end - start]);
        }
    }

    /// A write to NVIDIA's configuration mirror: the fast-path registers go straight to the
    /// device's mirror, everything else through the virtual configuration space.
    fn mirror_write(&mut self, offset: u16, data: &[u8]) {
        let mirror = self.config_mirror.as_ref();
        if mirror.is_some_and(|m| m.is_fast_path(offset, data.len())) {
            let bar_offset = ConfigMirror::range().start + u64::from(offset);
            if let Err(e) = self.host.bar_write(CONFIG_MIRROR_BAR, bar_offset, data) {
                debug!("{}: config mirror write at {offset:#x} failed: {e}", self.name);
            }
            return;
        }
        let start = usize::from(offset);
        for chunk in aligned_chunks(start..start + data.len()) {
            // Inside the 4 KiB mirror.
            let at = chunk.start as u16;
            self.config_write(at, &data[chunk.start - start..chunk.end - start]);
        }
    }

    /// Back to the power-on view: configuration registers, BARs, MSI and MSI-X (the host is
    /// told they are off). The physical device itself is reset by the host, not here.
    pub fn reset(&mut self) {
        debug!("{}: virtual configuration reset", self.name);
        self.config = self.pristine.clone();
        if let Some(msix) = self.msix.as_mut() {
            msix.reset(&self.name, self.interrupts.as_mut());
        }
        if let Some(msi) = self.msi.as_mut() {
            msi.reset(&self.name, self.interrupts.as_mut());
        }
    }

    /// Installs the host reset that guest FLRs and secondary bus resets run (the VMM wraps
    /// the opened function's reset). Only with it is the device's FLR offered to the guest.
    pub fn set_reset_hook(&mut self, hook: ResetHook) {
        self.guest_reset.set_hook(hook, [&mut self.config, &mut self.pristine]);
    }

    /// Whether the guest is offered FLR (the device has it and a host reset is installed).
    pub fn offers_flr(&self) -> bool {
        self.guest_reset.offers_flr()
    }

    /// A reset the guest started: the guest's view goes back to power-on (MSI and MSI-X
    /// disconnected on the host first), then the host resets the device.
    fn guest_reset(&mut self, cause: GuestResetCause) {
        info!("{}: guest {}", self.name, cause.as_str());
        self.reset();
        match self.guest_reset.host_reset(cause) {
            Some(outcome) => debug!(
                "{}: host reset for the guest's {}: {} ({})",
                self.name,
                cause.as_str(),
                outcome.as_str(),
                outcome.method()
            ),
            None => warn!(
                "{}: guest {} without a host reset: the device keeps its state",
                self.name,
                cause.as_str()
            ),
        }
    }

    fn device_read(&self, range: Range<usize>, out: &mut [u8]) -> bool {
        for chunk in aligned_chunks(range.clone()) {
            let part = &mut out[chunk.start - range.start..chunk.end - range.start];
            // chunk.start < 4096.
            if let Err(e) = self.host.config_read(chunk.start as u16, part) {
                debug!("{}: device config read at {:#x} failed: {e}", self.name, chunk.start);
                return false;
            }
        }
        true
    }

    /// Forwards the bits of a guest write that the policy lets reach the device.
    fn forward_write(&self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        let forwarded: Vec<usize> =
            (offset..end).filter(|&at| self.policy.to_device(at) != 0).collect();
        let mut runs: Vec<Range<usize>> = Vec::new();
        for at in forwarded {
            match runs.last_mut() {
                Some(run) if run.end == at => run.end = at + 1,
                _ => runs.push(at..at + 1),
            }
        }
        for chunk in runs.into_iter().flat_map(aligned_chunks) {
            let mut value = data[chunk.start - offset..chunk.end - offset].to_vec();
            let whole = chunk.clone().all(|at| self.policy.to_device(at) == 0xff);
            if !whole {
                // Keep the device's own value in the bits the guest may not change.
                let mut current = vec![0u8; chunk.len()];
                if !self.device_read(chunk.clone(), &mut current) {
                    continue;
                }
                for (i, byte) in value.iter_mut().enumerate() {
                    let mask = self.policy.to_device(chunk.start + i);
                    *byte = (*byte & mask) | (current[i] & !mask);
                }
            }
            // chunk.start < 4096.
            if let Err(e) = self.host.config_write(chunk.start as u16, &value) {
                warn!("{}: device config write at {:#x} failed: {e}", self.name, chunk.start);
            }
        }
    }
}

impl PciFunction for AssignedFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
        let start = usize::from(offset);
        let range = start..(start + data.len()).min(CONFIG_SPACE_SIZE);
        if range.is_empty() || !self.policy.reads_device(range.clone()) {
            return;
        }
        let mut device = vec![0u8; range.len()];
        if !self.device_read(range.clone(), &mut device) {
            return;
        }
        for (i, at) in range.enumerate() {
            let mask = self.policy.from_device(at);
            data[i] = (device[i] & mask) | (data[i] & !mask);
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        if self.guest_reset.flr_requested(offset, data) {
            // FLR resets the rest of the write's registers too.
            self.guest_reset(GuestResetCause::Flr);
            return;
        }
        self.config.write(offset, data);
        let start = usize::from(offset);
        let len = data.len().min(CONFIG_SPACE_SIZE.saturating_sub(start));
        self.forward_write(start, &data[..len]);
        // At most one of the two is enabled: each refuses to enable while the other is.
        let msi_enabled = self.msi.as_ref().is_some_and(|m| m.enabled_vectors() > 0);
        if let Some(msix) = self.msix.as_mut() {
            if msix.control_written(offset, data.len()) {
                msix.control_changed(
                    &self.name,
                    &mut self.config,
                    self.interrupts.as_mut(),
                    self.requester_id,
                    msi_enabled,
                );
            }
        }
        let msix_enabled = self.msix.as_ref().is_some_and(AssignedMsix::enabled);
        if let Some(msi) = self.msi.as_mut() {
            if msi.written(offset, data.len()) {
                msi.changed(
                    &self.name,
                    &mut self.config,
                    self.interrupts.as_mut(),
                    self.requester_id,
                    msix_enabled,
                );
            }
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        if bar == ROM_BAR_INDEX {
            match self.bars.rom {
                Some((info, _)) if offset.checked_add(len).is_some_and(|end| end <= info.size) => {
                    if let Err(e) = self.host.rom_read(offset, data) {
                        debug!("{}: ROM read at {offset:#x} failed: {e}", self.name);
                        data.fill(0xff);
                    }
                }
                _ => data.fill(0xff),
            }
            return;
        }
        if self.msix.as_ref().is_some_and(|m| m.read(bar, offset, data)) {
            return;
        }
        if self.config_mirror.is_some() {
            if let Some(config_offset) = ConfigMirror::config_offset(bar, offset, data.len()) {
                self.mirror_read(config_offset, data);
                return;
            }
        }
        let Some(assigned) = self.bars.bars.get(bar).copied().flatten() else {
            data.fill(0xff);
            return;
        };
        // Past the host region (a BAR rounded up to a page) nothing answers.
        if offset.checked_add(len).is_none_or(|end| end > assigned.host.size) {
            data.fill(0xff);
            return;
        }
        if let Err(e) = self.host.bar_read(bar, offset, data) {
            debug!("{}: BAR {bar} read at {offset:#x} failed: {e}", self.name);
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(msix) = self.msix.as_mut() {
            if msix.write(
                &self.name,
                bar,
                offset,
                data,
                self.interrupts.as_mut(),
                self.requester_id,
            ) {
                return;
            }
        }
        if self.config_mirror.is_some() {
            if let Some(config_offset) = ConfigMirror::config_offset(bar, offset, data.len()) {
                self.mirror_write(config_offset, data);
                return;
            }
        }
        let Some(assigned) = self.bars.bars.get(bar).copied().flatten() else {
            debug!("{}: write to BAR {bar} that is not offered, dropped", self.name);
            return;
        };
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > assigned.host.size) {
            debug!("{}: BAR {bar} write at {offset:#x} past the device region, dropped", self.name);
            return;
        }
        if let Err(e) = self.host.bar_write(bar, offset, data) {
            debug!("{}: BAR {bar} write at {offset:#x} failed: {e}", self.name);
        }
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        let mut regions = self.config.bar_regions();
        if let Some((address, size, true)) = self.config.expansion_rom() {
            if self.config.memory_enabled() && address != 0 {
                regions.push(BarRegion {
                    index: ROM_BAR_INDEX,
                    address,
                    size,
                    prefetchable: false,
                    is_64bit: false,
                });
            }
        }
        regions
    }

    fn bus_reset(&mut self) {
        self.guest_reset(GuestResetCause::BusReset);
    }

    fn system_reset(&mut self) {
        self.guest_reset(GuestResetCause::Reboot);
    }

    fn set_requester_id(&mut self, requester_id: u16) {
        if requester_id == self.requester_id {
            return;
        }
        self.requester_id = requester_id;
        if let Some(msix) = self.msix.as_mut() {
            msix.requester_id_changed(&self.name, self.interrupts.as_mut(), requester_id);
        }
        if let Some(msi) = self.msi.as_mut() {
            msi.requester_id_changed(&self.name, self.interrupts.as_mut(), requester_id);
        }
    }
}

/// Offers no more MSI vectors than the host delivers (DriverKit may set up only one): the
/// guest sees a smaller Multiple Message Capable in `config`.
fn limit_msi(
    name: &str,
    msi: &mut MsiCapability,
    interrupts: &dyn InterruptHost,
    device: &ConfigSpace,
    config: &mut ConfigSpace,
) {
    let Some(host_max) = interrupts.max_vectors(InterruptKind::Msi) else { return };
    let limited = msi.limited_to(host_max);
    if limited == *msi {
        return;
    }
    info!(
        "{name}: the device has {} MSI vectors, the host delivers {host_max}: the guest is \
         offered {}",
        msi.vectors(),
        limited.vectors()
    );
    *msi = limited;
    // Re-offer with the smaller Multiple Message Capable, keeping the relinked header.
    let header = config.read_u16(msi.offset);
    msi.offer(device, config);
    config.set_u16(msi.offset, header);
}

/// Offers no more MSI-X vectors than the host delivers (DriverKit: the vectors the extension
/// set up, at most 256): the guest sees a smaller Table Size in `config`, and only that many
/// entries of the table and PBA are emulated. A host that delivers none leaves MSI-X as is
/// (the guest's enable then fails on the host, as before).
fn limit_msix(
    name: &str,
    capability: u16,
    placement: MsixPlacement,
    interrupts: &dyn InterruptHost,
    config: &mut ConfigSpace,
) -> MsixPlacement {
    let Some(host_max) = interrupts.max_vectors(InterruptKind::Msix) else { return placement };
    if host_max == 0 || host_max >= placement.vectors {
        return placement;
    }
    info!(
        "{name}: the device has {} MSI-X vectors, the host delivers {host_max}: the guest is \
         offered {host_max}",
        placement.vectors
    );
    let control = capability + 2;
    let table_size = config.read_u16(control) & !0x7ff | (host_max - 1);
    config.set_u16(control, table_size);
    let vectors = u64::from(host_max);
    MsixPlacement {
        vectors: host_max,
        table: placement.table.start..placement.table.start + vectors * MSIX_ENTRY_SIZE,
        pba: placement.pba.start..placement.pba.start + vectors.div_ceil(64) * 8,
        ..placement
    }
}

/// The INTx pin to show, and whether the host delivers it. The device's pin when the host
/// can deliver INTx. Also, for a function with MSI, when it cannot (DriverKit): nvidia.ko's
/// probe fails with "Can't find an IRQ" when the guest irq is 0 and there is no MSI-X, before
/// it tries MSI, so the pin is shown (INTA if the device reports none) although INTx itself
/// never fires.
fn offered_intx(name: &str, device_pin: u8, host_intx: bool, has_msi: bool) -> Option<(u8, bool)> {
    match device_pin {
        1..=4 if host_intx => Some((device_pin, true)),
        0..=4 if has_msi => {
            let pin = device_pin.max(1);
            warn!(
                "{name}: INTx pin {} shown so the guest driver gets an irq, but the host \
                 cannot deliver INTx: it never fires, the driver must use MSI",
                intx_pin_name(pin)
            );
            Some((pin, false))
        }
        0 => None,
        1..=4 => {
            debug!("{name}: INTx pin {device_pin} not offered: the host cannot deliver it");
            None
        }
        _ => {
            warn!("{name}: the device reports INTx pin {device_pin:#x}; no INTx offered");
            None
        }
    }
}

/// "INTA" for pin 1 .. "INTD" for pin 4.
pub fn intx_pin_name(pin: u8) -> String {
    match pin {
        1..=4 => format!("INT{}", char::from(b'A' + pin - 1)),
        _ => format!("pin {pin}"),
    }
}

// The ROM takes the first index after the six memory BARs.
const _: () = assert!(ROM_BAR_INDEX == BAR_COUNT);
