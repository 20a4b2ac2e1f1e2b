//! The one device pipeline, over any host backend: check the devices as a set, open and reset
//! each, map guest RAM for the identity devices, build each assigned function (traced) with
//! its direct BARs and INTx, give windowed devices their window manager and aperture-dma
//! device; at exit stop the interrupts, reset the devices (traced), unmap guest RAM and
//! report what the windows did.

use std::sync::Arc;

use devices::pci::PciFunction;
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{info, warn};
use passthrough::assigned::{AssignedFunction, GuestResetCause};
use passthrough::dma::HostMapper;
use passthrough::host::{
    DmaRequest, FunctionRequest, HostBackend, HostError, LossReason, LossWatch, OpenedFunction,
    RamRegion, ResetOutcome,
};
use passthrough::PciAddress;

use super::window::{
    mapper_limits, window_device, window_manager, RequesterIdWatch, WindowedDevice,
};
use super::{AssignError, AssignedIntx, AssignedParts, DirectBar, IntxHandle, PendingFunction};
use crate::config::{DeviceConfig, DmaMode};
use crate::hypervisor::Vm;
use crate::memory::GuestRam;

/// What [`HostPlatform::new`] makes: the OS adapter and the host backend it drives.
pub(super) type PlatformParts<P> = Result<(P, <P as HostPlatform>::Backend), AssignError>;

/// What an OS adapter (`sys/`) adds to the pipeline: its backend, made with the OS calls
/// the backend needs from the VM, and the OS side of interrupts.
pub(super) trait HostPlatform: Sized + Send + std::fmt::Debug {
    /// The host backend.
    type Backend: HostBackend<Function: OpenedFunction<Intx = IntxHandle>>;

    /// The adapter and the backend for the VM `vm` (traced into `trace`).
    fn new(vm: &Arc<dyn Vm>, trace: Option<&Arc<dyn TraceSink>>) -> PlatformParts<Self>;

    /// Wires the functions' INTx to their guest SPIs (hosts without INTx have none).
    fn connect_intx(&mut self, _vm: &Arc<dyn Vm>, _lines: &[AssignedIntx]) {}

    /// Stops the VM's side of the devices' interrupts before they are reset at exit.
    fn stop(&mut self) {}

    /// Lets go of the VM's side of the interrupts of `addresses`, whose devices left.
    fn release(&mut self, _addresses: &[PciAddress]) {}

    /// A fresh backend, to open devices that left the host and came back (re-plug): the
    /// first one is gone with the devices it opened.
    fn replug_backend(&self) -> Result<Self::Backend, AssignError>;
}

type Function<P> = <<P as HostPlatform>::Backend as HostBackend>::Function;

/// Guest RAM mapped at device address = guest-physical address for the identity devices.
struct IdentityDma {
    mapper: Box<dyn HostMapper>,
    /// (device address, length) of each mapping.
    mapped: Vec<(u64, u64)>,
}

/// The VM's assigned devices, their DMA mappings and windows.
pub(super) struct HostDevices<P: HostPlatform> {
    platform: P,
    functions: Vec<Function<P>>,
    /// The functions whose DMA goes through `identity`.
    identity_users: Vec<PciAddress>,
    /// What reports that the host took a function away.
    watches: Vec<(PciAddress, Box<dyn LossWatch>)>,
    identity: Option<IdentityDma>,
    windowed: Vec<WindowedDevice>,
    trace: Option<Arc<dyn TraceSink>>,
    /// Every `--device`, to open one again when it comes back.
    configs: Vec<DeviceConfig>,
    /// Guest RAM, to map it again for a device that comes back.
    ram: Vec<RamRegion>,
}

impl<P: HostPlatform> std::fmt::Debug for HostDevices<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDevices")
            .field("platform", &self.platform)
            .field("functions", &self.functions)
            .field("identity", &self.identity.as_ref().map(|i| i.mapped.len()))
            .field("windowed", &self.windowed)
            .finish()
    }
}

fn host_error(address: PciAddress) -> impl FnOnce(HostError) -> AssignError {
    move |source| AssignError::Host { address, source }
}

/// What the backend is asked for `config`.
fn request(config: &DeviceConfig) -> FunctionRequest {
    let dma = match &config.dma {
        DmaMode::Identity => DmaRequest::Identity,
        DmaMode::Window(limits) => DmaRequest::Window(mapper_limits(limits)),
    };
    FunctionRequest { address: config.address, dma }
}

impl<P: HostPlatform> HostDevices<P> {
    /// Opens every device of `configs` through `backend` and prepares it for the guest.
    pub(super) fn open(
        platform: P,
        mut backend: P::Backend,
        ram: &GuestRam,
        configs: &[DeviceConfig],
        trace: Option<&Arc<dyn TraceSink>>,
    ) -> Result<(Self, AssignedParts), AssignError> {
        let requests: Vec<FunctionRequest> = configs.iter().map(request).collect();
        for (i, r) in requests.iter().enumerate() {
            if requests[..i].iter().any(|other| other.address == r.address) {
                return Err(AssignError::GivenTwice { address: r.address });
            }
        }
        backend
            .check(&requests, ram.regions())
            .map_err(|(address, source)| AssignError::Host { address, source })?;
        let mut this = Self {
            platform,
            functions: Vec::new(),
            identity_users: Vec::new(),
            watches: Vec::new(),
            identity: None,
            windowed: Vec::new(),
            trace: trace.cloned(),
            configs: configs.to_vec(),
            ram: ram.regions().to_vec(),
        };
        // All devices are open before any is reset (a hot reset of a slot needs every function
        // on it in hand), and reset before any is used.
        for request in &requests {
            let function = backend.open(request).map_err(host_error(request.address))?;
            this.functions.push(function);
        }
        for function in &this.functions {
            this.reset(function, "start");
        }
        for (request, function) in requests.iter().zip(&this.functions) {
            if request.dma == DmaRequest::Identity {
                this.identity_users.push(request.address);
            }
            if let Some(watch) = function.loss_watch() {
                this.watches.push((request.address, watch));
            }
        }
        let first = requests[0].address;
        if let Some(mapper) = backend.identity_mapper(ram.regions()).map_err(host_error(first))? {
            this.map_guest_ram(mapper, ram.regions()).map_err(host_error(first))?;
        }
        let mut parts = AssignedParts::default();
        for (config, host) in configs.iter().zip(&this.functions) {
            let Assigned { function, direct_bars, intx } = assigned_function(host, config, trace)?;
            let function: Box<dyn PciFunction> = match &config.dma {
                DmaMode::Identity => Box::new(function),
                DmaMode::Window(limits) => {
                    let address = config.address;
                    // Functions of one DMA address space (IOMMU group) share its windows.
                    let space = host.dma_space();
                    let shared =
                        this.windowed.iter().position(|w| space.is_some() && w.space == space);
                    let windowed = match shared {
                        Some(i) => i,
                        None => {
                            let mapper = host
                                .window_mapper(ram.regions(), mapper_limits(limits))
                                .map_err(host_error(address))?;
                            let mut windowed = window_manager(address, mapper, ram, limits)?;
                            windowed.space = space;
                            this.windowed.push(windowed);
                            this.windowed.len() - 1
                        }
                    };
                    let index = parts.endpoints.len();
                    let (device, rid) =
                        window_device(address, index, &this.windowed[windowed], ram, trace)?;
                    parts.endpoints.push(Box::new(device));
                    Box::new(RequesterIdWatch::new(Box::new(function), rid))
                }
            };
            parts.functions.push(PendingFunction {
                name: config.address.to_string(),
                address: config.address,
                function,
                direct_bars,
                intx,
            });
        }
        Ok((this, parts))
    }

    /// Wires each function's INTx to its guest SPI.
    pub(super) fn connect_intx(&mut self, vm: &Arc<dyn Vm>, lines: &[AssignedIntx]) {
        self.platform.connect_intx(vm, lines);
    }

    /// Pins all guest RAM and maps it for the devices' DMA at device address = guest
    /// physical address.
    fn map_guest_ram(
        &mut self,
        mut mapper: Box<dyn HostMapper>,
        ram: &[RamRegion],
    ) -> Result<(), HostError> {
        let mut mapped = Vec::new();
        let result = ram.iter().try_for_each(|region| {
            let iova = mapper.map(region.gpa, region.len)?;
            mapped.push((iova, region.len));
            self.record(
                "dma-map",
                &[
                    ("gpa", TraceValue::Hex(region.gpa)),
                    ("iova", TraceValue::Hex(iova)),
                    ("len", TraceValue::Hex(region.len)),
                ],
            );
            info!("DMA map: guest RAM {:#x}+{:#x} at IOVA {iova:#x}", region.gpa, region.len);
            Ok(())
        });
        // What was mapped is unmapped at shutdown, also after a failure.
        self.identity = Some(IdentityDma { mapper, mapped });
        result
    }

    fn record(&self, event: &str, fields: &[(&str, TraceValue<'_>)]) {
        if let Some(trace) = &self.trace {
            trace.record(&TraceRecord { source: "dma", event, fields });
        }
    }

    /// Resets `function` and traces the outcome.
    fn reset(&self, function: &Function<P>, when: &str) {
        let outcome = function.reset(when);
        trace_reset(self.trace.as_ref(), function.address(), when, outcome);
    }

    /// The functions the host took away since the last call, with why.
    pub(super) fn poll_loss(&self) -> Vec<(PciAddress, LossReason)> {
        self.watches
            .iter()
            .filter_map(|(address, watch)| watch.poll().map(|reason| (*address, reason)))
            .collect()
    }

    /// Whether `address` is one of the VM's open functions.
    pub(super) fn holds(&self, address: PciAddress) -> bool {
        self.functions.iter().any(|f| f.address() == address)
    }

    /// Lets go of the functions at `addresses`, whose device left the host (the guest no
    /// longer reaches them): their interrupts stop, their host handles close (no reset: the
    /// device is gone), and guest RAM is unmapped from the identity DMA space once no
    /// function uses it, which closes the container. Returns how many functions it released.
    pub(super) fn release(&mut self, addresses: &[PciAddress]) -> usize {
        self.platform.release(addresses);
        self.watches.retain(|(address, _)| !addresses.contains(address));
        let (lost, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.functions)
            .into_iter()
            .partition(|f| addresses.contains(&f.address()));
        self.functions = kept;
        for function in &lost {
            function.quiesce();
        }
        let released = lost.len();
        drop(lost);
        self.identity_users.retain(|address| !addresses.contains(address));
        if self.identity_users.is_empty() {
            self.unmap_identity("after removal");
        }
        released
    }

    /// Opens the functions at `addresses` again, which left the host and came back (`--device`
    /// as given at start): checked, opened through a fresh backend, reset, watched for loss,
    /// guest RAM mapped again for identity DMA, and each assigned function built, for the
    /// caller to put back behind its root port. On an error nothing is kept.
    pub(super) fn replug(
        &mut self,
        addresses: &[PciAddress],
    ) -> Result<Vec<PendingFunction>, AssignError> {
        let configs: Vec<DeviceConfig> =
            self.configs.iter().filter(|c| addresses.contains(&c.address)).cloned().collect();
        let Some(first) = configs.first().map(|c| c.address) else { return Ok(Vec::new()) };
        if let Some(windowed) = configs.iter().find(|c| matches!(c.dma, DmaMode::Window(_))) {
            return Err(AssignError::ReplugWindow { address: windowed.address });
        }
        // The identity DMA space of the other devices is still open: a second one would pin
        // guest RAM again (not supported yet).
        if self.identity.is_some() {
            return Err(AssignError::ReplugSharedIdentity { address: first });
        }
        let mut backend = self.platform.replug_backend()?;
        let requests: Vec<FunctionRequest> = configs.iter().map(request).collect();
        backend
            .check(&requests, &self.ram)
            .map_err(|(address, source)| AssignError::Host { address, source })?;
        let mut functions = Vec::new();
        for request in &requests {
            functions.push(backend.open(request).map_err(host_error(request.address))?);
        }
        for function in &functions {
            self.reset(function, "replug");
        }
        let built = self.replug_dma(&mut backend, first).and_then(|()| {
            configs
                .iter()
                .zip(&functions)
                .map(|(config, host)| {
                    let Assigned { function, direct_bars, intx } =
                        assigned_function(host, config, self.trace.as_ref())?;
                    Ok(PendingFunction {
                        name: config.address.to_string(),
                        address: config.address,
                        function: Box::new(function),
                        direct_bars,
                        intx,
                    })
                })
                .collect::<Result<Vec<_>, AssignError>>()
        });
        let pending = match built {
            Ok(pending) => pending,
            Err(e) => {
                // Only the mapping made just now can be there (checked above).
                self.unmap_identity("after a failed re-plug");
                return Err(e);
            }
        };
        for (request, function) in requests.iter().zip(functions) {
            if request.dma == DmaRequest::Identity {
                self.identity_users.push(request.address);
            }
            if let Some(watch) = function.loss_watch() {
                self.watches.push((request.address, watch));
            }
            self.functions.push(function);
        }
        Ok(pending)
    }

    /// Maps guest RAM again for the identity devices `backend` opened (their space is new).
    fn replug_dma(
        &mut self,
        backend: &mut P::Backend,
        first: PciAddress,
    ) -> Result<(), AssignError> {
        let ram = self.ram.clone();
        if let Some(mapper) = backend.identity_mapper(&ram).map_err(host_error(first))? {
            self.map_guest_ram(mapper, &ram).map_err(host_error(first))?;
        }
        Ok(())
    }

    /// Unmaps guest RAM from the identity DMA space and closes it (`when`: for the log).
    fn unmap_identity(&mut self, when: &str) {
        let Some(mut identity) = self.identity.take() else { return };
        for (iova, len) in identity.mapped.drain(..) {
            match identity.mapper.unmap(iova, len) {
                Ok(()) => {
                    info!("DMA unmap: IOVA {iova:#x}+{len:#x}");
                    let fields = [("iova", TraceValue::Hex(iova)), ("len", TraceValue::Hex(len))];
                    self.record("dma-unmap", &fields);
                }
                Err(e) => warn!("DMA unmap {when}: {e}"),
            }
        }
    }

    /// Stops the devices' interrupts and DMA, resets them, then unmaps guest RAM and windows
    /// (and reports what the windows did).
    pub(super) fn shutdown(&mut self) {
        self.platform.stop();
        // Every function's interrupts stop before any reset: a hot reset resets its slot's
        // other functions too.
        let functions = std::mem::take(&mut self.functions);
        for function in &functions {
            function.quiesce();
        }
        for function in &functions {
            self.reset(function, "exit");
        }
        self.unmap_identity("at exit");
        for windowed in self.windowed.drain(..) {
            windowed.finish(self.trace.as_ref());
        }
    }
}

/// Traces a reset of `address` (`when`: "start", "exit", "guest", "reboot") and its outcome.
fn trace_reset(
    trace: Option<&Arc<dyn TraceSink>>,
    address: PciAddress,
    when: &str,
    outcome: ResetOutcome,
) {
    let Some(trace) = trace else { return };
    let fields = [
        ("when", TraceValue::Str(when)),
        ("outcome", TraceValue::Str(outcome.as_str())),
        ("method", TraceValue::Str(outcome.method())),
    ];
    let source = address.to_string();
    trace.record(&TraceRecord { source: &source, event: "reset", fields: &fields });
}

/// An assigned function as the pipeline builds it, before its DMA is settled.
struct Assigned {
    function: AssignedFunction,
    direct_bars: Vec<DirectBar>,
    /// Its INTx pin and the handle that routes it, if the guest sees a pin.
    intx: Option<(u8, IntxHandle)>,
}

/// The assigned function in front of `host` (traced), its direct BAR pieces and its INTx.
fn assigned_function<F: OpenedFunction<Intx = IntxHandle>>(
    host: &F,
    config: &DeviceConfig,
    trace: Option<&Arc<dyn TraceSink>>,
) -> Result<Assigned, AssignError> {
    let address = host.address();
    let name = address.to_string();
    let (interrupts, intx_handle) = host.interrupts();
    let mut function = AssignedFunction::new(&name, host.host_function(), interrupts)
        .map_err(|source| AssignError::Function { address, source })?;
    function.set_trace(trace.cloned());
    // The guest's FLRs and secondary bus resets reset the device through the host, traced
    // like the resets at start and exit.
    let resetter = host.resetter();
    let reset_trace = trace.cloned();
    function.set_reset_hook(Box::new(move |cause| {
        let when = if cause == GuestResetCause::Reboot { "reboot" } else { "guest" };
        let outcome = resetter(when);
        trace_reset(reset_trace.as_ref(), address, when, outcome);
        outcome
    }));
    // Traced BAR ranges are trapped, so they must be known before the direct pieces are cut.
    function
        .set_traced_bar_ranges(&config.trace_bars)
        .map_err(|source| AssignError::Function { address, source })?;
    if !function.has_interrupts() {
        warn!(
            "{name}: the device has no usable {}, so the guest driver gets no interrupts from it",
            F::INTERRUPT_KINDS
        );
    }
    // A pin is routed only where the host delivers INTx; an MSI function without host INTx
    // still shows its pin (drivers want a non-zero irq) but has nothing to route.
    let intx = function.intx_pin().filter(|_| function.intx_delivered()).zip(intx_handle);
    let direct_bars = host.direct_bars(&function);
    Ok(Assigned { function, direct_bars, intx })
}

#[cfg(test)]
mod tests;
