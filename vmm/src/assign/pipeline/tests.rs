//! The pipeline over a fake backend: what it asks the host, in which order, and what it
//! traces and hands the VMM.

use std::sync::{Arc, Mutex};

use devices::trace::{TraceRecord, TraceSink, TraceValue};
use passthrough::assigned::{HostFunction, InterruptHost};
use passthrough::dma::testing::FakeMapper;
use passthrough::dma::{AddressPolicy, HostMapper, MapperLimits};
use passthrough::host::{
    DmaRequest, FunctionRequest, FunctionResetter, HostBackend, HostError, HostMemory, LossReason,
    LossWatch, OpenedFunction, RamRegion, ResetOutcome, WindowMapper,
};
use passthrough::testing::function::{nvme, RecordingHost};
use passthrough::PciAddress;

use super::{HostDevices, HostPlatform, PlatformParts};
use crate::assign::{AssignError, AssignedParts, IntxHandle};
use crate::config::{DeviceConfig, DmaMode, DmaWindowLimits};
use crate::hypervisor::fake::FakeHypervisor;
use crate::hypervisor::{Hypervisor, Vm, VmSpec};
use crate::memory::GuestRam;

/// What the host was asked, in order.
type Calls = Arc<Mutex<Vec<String>>>;

fn note(calls: &Calls, call: String) {
    calls.lock().unwrap().push(call);
}

#[derive(Debug)]
struct FakePlatform(Calls);

impl HostPlatform for FakePlatform {
    type Backend = FakeBackend;

    fn new(_vm: &Arc<dyn Vm>, _trace: Option<&Arc<dyn TraceSink>>) -> PlatformParts<Self> {
        let calls = Calls::default();
        Ok((Self(calls.clone()), FakeBackend { calls, refuse: None, identity: false }))
    }

    fn stop(&mut self) {
        note(&self.0, "stop".into());
    }

    /// A test noted `refuse ADDRESS`: the new backend's check refuses that function (a
    /// device not back, or not bound to vfio-pci).
    fn replug_backend(&self) -> Result<FakeBackend, AssignError> {
        let mut calls = self.0.lock().unwrap();
        let at = calls.iter().position(|c| c.starts_with("refuse "));
        let refuse = at.map(|at| calls.remove(at)[7..].parse().unwrap());
        calls.push("new backend".into());
        Ok(FakeBackend { calls: self.0.clone(), refuse, identity: false })
    }
}

#[derive(Debug)]
struct FakeBackend {
    calls: Calls,
    /// `check` refuses this function.
    refuse: Option<PciAddress>,
    /// An identity function was opened.
    identity: bool,
}

impl HostBackend for FakeBackend {
    type Function = FakeFunction;

    fn check(
        &mut self,
        requests: &[FunctionRequest],
        _ram: &[RamRegion],
    ) -> Result<(), (PciAddress, HostError)> {
        note(&self.calls, format!("check {}", requests.len()));
        match self.refuse {
            Some(address) => Err((address, HostError::NoIdentityDma)),
            None => Ok(()),
        }
    }

    fn open(&mut self, request: &FunctionRequest) -> Result<FakeFunction, HostError> {
        note(&self.calls, format!("open {}", request.address));
        self.identity |= request.dma == DmaRequest::Identity;
        Ok(FakeFunction { address: request.address, calls: self.calls.clone() })
    }

    fn identity_mapper(
        &mut self,
        _ram: &[RamRegion],
    ) -> Result<Option<Box<dyn HostMapper>>, HostError> {
        let limits = MapperLimits {
            max_mapped_bytes: u64::MAX,
            max_mappings: u32::MAX,
            alignment: 4096,
            policy: AddressPolicy::Identity,
        };
        Ok(self.identity.then(|| Box::new(FakeMapper::new(limits)) as Box<dyn HostMapper>))
    }
}

#[derive(Debug)]
struct FakeFunction {
    address: PciAddress,
    calls: Calls,
}

impl OpenedFunction for FakeFunction {
    type Intx = IntxHandle;

    const INTERRUPT_KINDS: &'static str = "MSI-X or MSI";

    fn address(&self) -> PciAddress {
        self.address
    }

    fn reset(&self, when: &str) -> ResetOutcome {
        note(&self.calls, format!("reset {} {when}", self.address));
        ResetOutcome::Done
    }

    fn resetter(&self) -> FunctionResetter {
        let (calls, address) = (self.calls.clone(), self.address);
        Box::new(move |when| {
            note(&calls, format!("reset {address} {when}"));
            ResetOutcome::Done
        })
    }

    fn host_function(&self) -> Box<dyn HostFunction> {
        Box::new(nvme(false).build())
    }

    fn interrupts(&self) -> (Box<dyn InterruptHost>, Option<IntxHandle>) {
        (Box::new(RecordingHost::default()), None)
    }

    fn bar_granule(&self) -> u64 {
        4096
    }

    fn map_bar_piece(
        &self,
        bar: usize,
        offset: u64,
        _len: u64,
    ) -> Result<Box<dyn HostMemory>, HostError> {
        note(&self.calls, format!("map BAR {bar} {offset:#x}"));
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported).into())
    }

    fn window_mapper(
        &self,
        _ram: &[RamRegion],
        limits: MapperLimits,
    ) -> Result<WindowMapper, HostError> {
        note(&self.calls, format!("window mapper {}", self.address));
        let mapper = Box::new(FakeMapper::new(limits));
        Ok(WindowMapper { mapper, placement: "in the fake".into() })
    }

    fn quiesce(&self) {
        note(&self.calls, format!("quiesce {}", self.address));
    }

    fn loss_watch(&self) -> Option<Box<dyn LossWatch>> {
        Some(Box::new(FakeWatch { address: self.address, calls: self.calls.clone() }))
    }

    /// One DMA address space per bus, as an IOMMU group per slot.
    fn dma_space(&self) -> Option<u32> {
        Some(self.address.bus.into())
    }
}

impl Drop for FakeFunction {
    fn drop(&mut self) {
        note(&self.calls, format!("release {}", self.address));
    }
}

/// Reports a loss of its function once the test noted `lose ADDRESS`.
#[derive(Debug)]
struct FakeWatch {
    address: PciAddress,
    calls: Calls,
}

impl LossWatch for FakeWatch {
    fn poll(&self) -> Option<LossReason> {
        let mut calls = self.calls.lock().unwrap();
        let lose = format!("lose {}", self.address);
        let at = calls.iter().position(|c| *c == lose)?;
        calls[at] = format!("reported {}", self.address);
        Some(LossReason::Request)
    }
}

/// Keeps every trace record as `source event k=v ...`.
#[derive(Debug, Default)]
struct RecordingTrace(Mutex<Vec<String>>);

impl TraceSink for RecordingTrace {
    fn record(&self, record: &TraceRecord<'_>) {
        let mut line = format!("{} {}", record.source, record.event);
        for (key, value) in record.fields {
            let value = match value {
                TraceValue::Int(v) => v.to_string(),
                TraceValue::Hex(v) => format!("{v:#x}"),
                TraceValue::Str(s) => s.to_string(),
                TraceValue::Bool(b) => b.to_string(),
            };
            line.push_str(&format!(" {key}={value}"));
        }
        self.0.lock().unwrap().push(line);
    }
}

const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 16 << 20;

fn ram() -> GuestRam {
    let vm = FakeHypervisor::default().create_vm(&VmSpec { ipa_bits: 40, tso: false }).unwrap();
    GuestRam::new(vm.as_ref(), RAM_BASE, RAM_SIZE).unwrap()
}

fn device(address: &str, dma: DmaMode) -> DeviceConfig {
    DeviceConfig { address: address.parse().unwrap(), dma, trace_bars: Vec::new() }
}

fn fake_host() -> (FakePlatform, FakeBackend, Calls) {
    let vm = FakeHypervisor::default().create_vm(&VmSpec { ipa_bits: 40, tso: false }).unwrap();
    let (platform, backend) = FakePlatform::new(&vm, None).unwrap();
    let calls = platform.0.clone();
    (platform, backend, calls)
}

/// What [`open_identity_and_window`] opened, with the guest RAM it maps.
type Opened = (HostDevices<FakePlatform>, AssignedParts, Calls, Arc<RecordingTrace>, GuestRam);

/// Opens an identity device (01:00.0) and a windowed one (02:00.0) on the fake host, traced.
fn open_identity_and_window() -> Opened {
    let ram = ram();
    let configs = [
        device("0000:01:00.0", DmaMode::Identity),
        device("0000:02:00.0", DmaMode::Window(DmaWindowLimits::default())),
    ];
    let (platform, backend, calls) = fake_host();
    let trace = Arc::new(RecordingTrace::default());
    let sink: Arc<dyn TraceSink> = trace.clone();
    let (host, parts) = HostDevices::open(platform, backend, &ram, &configs, Some(&sink)).unwrap();
    (host, parts, calls, trace, ram)
}

#[test]
fn opens_resets_maps_and_shuts_down_in_order() {
    let (mut host, parts, calls, trace, _ram) = open_identity_and_window();
    let names: Vec<_> = parts.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["0000:01:00.0", "0000:02:00.0"]);
    let endpoints: Vec<_> = parts.endpoints.iter().map(|e| e.name()).collect();
    assert_eq!(endpoints, ["aperture-dma0"], "one aperture-dma device for the windowed one");
    assert!(parts.functions.iter().all(|f| f.direct_bars.is_empty() && f.intx.is_none()));
    let opened: Vec<String> = calls.lock().unwrap().drain(..).collect();
    assert_eq!(
        opened[..6],
        [
            "check 2",
            "open 0000:01:00.0",
            "open 0000:02:00.0",
            "reset 0000:01:00.0 start",
            "reset 0000:02:00.0 start",
            "map BAR 0 0x0",
        ],
        "{opened:#?}"
    );
    assert_eq!(opened.last().map(String::as_str), Some("window mapper 0000:02:00.0"));
    let started: Vec<String> = trace.0.lock().unwrap().drain(..).collect();
    assert_eq!(
        started[..3],
        [
            "0000:01:00.0 reset when=start outcome=done method=flr",
            "0000:02:00.0 reset when=start outcome=done method=flr",
            "dma dma-map gpa=0x40000000 iova=0x40000000 len=0x1000000",
        ]
    );

    host.shutdown();
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "stop",
            "quiesce 0000:01:00.0",
            "quiesce 0000:02:00.0",
            "reset 0000:01:00.0 exit",
            "reset 0000:02:00.0 exit",
            "release 0000:01:00.0",
            "release 0000:02:00.0",
        ],
        "interrupts stop before the resets, the host handles close last"
    );
    let ended = trace.0.lock().unwrap().clone();
    assert_eq!(ended[1], "0000:02:00.0 reset when=exit outcome=done method=flr");
    assert_eq!(ended[2], "dma dma-unmap iova=0x40000000 len=0x1000000");
    assert!(ended[3].starts_with("0000:02:00.0 dma-stats summary="), "{ended:#?}");
    host.shutdown();
    assert_eq!(calls.lock().unwrap().len(), 8, "a second shutdown only stops again");
}

#[test]
fn refusals_name_the_device_before_anything_is_opened() {
    let ram = ram();
    let twice =
        [device("0000:01:00.0", DmaMode::Identity), device("0000:01:00.0", DmaMode::Identity)];
    let (platform, backend, calls) = fake_host();
    let err = HostDevices::open(platform, backend, &ram, &twice, None).unwrap_err();
    assert_eq!(err.to_string(), "--device 0000:01:00.0: it is given twice; pass it once");
    assert!(calls.lock().unwrap().is_empty(), "the host was not asked");

    let configs =
        [device("0000:01:00.0", DmaMode::Identity), device("0000:03:00.0", DmaMode::Identity)];
    let (platform, mut backend, calls) = fake_host();
    backend.refuse = Some("0000:03:00.0".parse().unwrap());
    let err = HostDevices::open(platform, backend, &ram, &configs, None).unwrap_err();
    assert!(
        matches!(&err, AssignError::Host { address, .. } if address.to_string() == "0000:03:00.0")
    );
    assert!(err.to_string().starts_with("--device 0000:03:00.0: dma=identity is not possible"));
    assert_eq!(*calls.lock().unwrap(), ["check 2"], "nothing opened");
}

#[test]
fn windowed_functions_of_one_dma_space_share_its_windows() {
    let ram = ram();
    let window = || DmaMode::Window(DmaWindowLimits::default());
    let configs = [
        device("0000:03:00.0", window()),
        device("0000:03:00.1", window()),
        device("0000:04:00.0", window()),
    ];
    let (platform, backend, calls) = fake_host();
    let trace = Arc::new(RecordingTrace::default());
    let sink: Arc<dyn TraceSink> = trace.clone();
    let (mut host, parts) =
        HostDevices::open(platform, backend, &ram, &configs, Some(&sink)).unwrap();
    let endpoints: Vec<_> = parts.endpoints.iter().map(|e| e.name()).collect();
    assert_eq!(
        endpoints,
        ["aperture-dma0", "aperture-dma1", "aperture-dma2"],
        "each function still gets its aperture-dma device"
    );
    let mappers: Vec<String> =
        calls.lock().unwrap().iter().filter(|c| c.starts_with("window mapper")).cloned().collect();
    assert_eq!(
        mappers,
        ["window mapper 0000:03:00.0", "window mapper 0000:04:00.0"],
        "one mapper (one IOVA space) per DMA address space"
    );
    host.shutdown();
    let stats: Vec<String> = trace
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("dma-stats") && l.contains("summary=DMA windows"))
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(stats, ["0000:03:00.0", "0000:04:00.0"], "one window manager each");
}

#[test]
fn guest_resets_reach_the_host_traced() {
    let (mut host, mut parts, calls, trace, _ram) = open_identity_and_window();
    calls.lock().unwrap().clear();
    trace.0.lock().unwrap().clear();
    // A secondary bus reset of each function's port (the windowed one through its wrapper).
    for function in &mut parts.functions {
        function.function.bus_reset();
    }
    // A guest FLR: the fake NVMe has FLR, so it is offered and runs the host reset.
    let devctl_high = 0x89;
    parts.functions[0].function.config_write(devctl_high, &[0x80]);
    assert_eq!(
        *calls.lock().unwrap(),
        ["reset 0000:01:00.0 guest", "reset 0000:02:00.0 guest", "reset 0000:01:00.0 guest"]
    );
    assert_eq!(
        *trace.0.lock().unwrap(),
        [
            "0000:01:00.0 reset when=guest outcome=done method=flr",
            "0000:02:00.0 reset when=guest outcome=done method=flr",
            "0000:01:00.0 reset when=guest outcome=done method=flr",
        ]
    );
    host.shutdown();
}

/// Counts the MSIs of the root ports' hot-plug slots.
#[derive(Debug, Default)]
struct CountingMsi(Mutex<usize>);

impl devices::pci::MsiSink for CountingMsi {
    fn signal_msi(&self, _message: devices::pci::MsiMessage, _requester_id: u16) {
        *self.0.lock().unwrap() += 1;
    }
}

#[test]
fn a_lost_device_leaves_the_guest_and_goes_back_to_the_host() {
    use devices::pci::PciRoot;

    let (mut host, parts, calls, trace, _ram) = open_identity_and_window();
    let root = PciRoot::new();
    root.enable_hotplug(Arc::new(CountingMsi::default()));
    let mut ports = Vec::new();
    for pending in parts.functions {
        let port = root.add_root_port().unwrap();
        root.attach_to_port(port, pending.function).unwrap();
        ports.push((pending.address, port));
    }
    let mut handler =
        crate::assign::loss::LossHandler::new(root.clone(), ports, Some(trace.clone()));
    calls.lock().unwrap().clear();
    trace.0.lock().unwrap().clear();
    assert!(host.poll_loss().is_empty(), "nothing lost yet");

    let lost: PciAddress = "0000:01:00.0".parse().unwrap();
    note(&calls, format!("lose {lost}"));
    let polled = host.poll_loss();
    assert_eq!(polled, [(lost, LossReason::Request)]);
    let report = handler.handle(&mut host, lost, LossReason::Request, std::time::Instant::now());
    let report = report.unwrap();
    assert_eq!(report.released, [lost]);
    assert_eq!(
        *calls.lock().unwrap(),
        ["reported 0000:01:00.0", "quiesce 0000:01:00.0", "release 0000:01:00.0"],
        "interrupts off and the host handles closed; no reset of a device that is gone"
    );
    let traced = trace.0.lock().unwrap().clone();
    assert_eq!(
        traced[0], "dma dma-unmap iova=0x40000000 len=0x1000000",
        "the last identity function took the identity DMA mappings with it"
    );
    assert!(traced[1].starts_with("0000:01:00.0 device-loss reason=request functions=1 ms="));
    // The guest no longer sees it; the other device stays.
    let names: Vec<_> = root.functions().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["host-bridge", "root-port1", "root-port2", "0000:02:00.0"]);
    // A second report of the same device (its error interrupt, say) finds nothing to do.
    assert!(handler
        .handle(&mut host, lost, LossReason::Error, std::time::Instant::now())
        .is_none());
    assert!(host.poll_loss().is_empty(), "its watch went with it");

    calls.lock().unwrap().clear();
    host.shutdown();
    assert_eq!(
        *calls.lock().unwrap(),
        ["stop", "quiesce 0000:02:00.0", "reset 0000:02:00.0 exit", "release 0000:02:00.0"],
        "only the device that stayed is reset at exit"
    );
}

/// The fake host's identity device (01:00.0) behind a hot-plug root port, lost.
fn lost_identity_device() -> (
    HostDevices<FakePlatform>,
    crate::assign::loss::LossHandler,
    devices::pci::PciRoot,
    Calls,
    Arc<RecordingTrace>,
) {
    use devices::pci::PciRoot;

    let ram = ram();
    let (platform, backend, calls) = fake_host();
    let trace = Arc::new(RecordingTrace::default());
    let sink: Arc<dyn TraceSink> = trace.clone();
    let configs = [device("0000:01:00.0", DmaMode::Identity)];
    let (mut host, parts) =
        HostDevices::open(platform, backend, &ram, &configs, Some(&sink)).unwrap();
    let root = PciRoot::new();
    root.enable_hotplug(Arc::new(CountingMsi::default()));
    let port = root.add_root_port().unwrap();
    let mut ports = Vec::new();
    for pending in parts.functions {
        root.attach_to_port(port, pending.function).unwrap();
        ports.push((pending.address, port));
    }
    let mut handler =
        crate::assign::loss::LossHandler::new(root.clone(), ports, Some(trace.clone()));
    let lost: PciAddress = "0000:01:00.0".parse().unwrap();
    handler.handle(&mut host, lost, LossReason::Request, std::time::Instant::now()).unwrap();
    calls.lock().unwrap().clear();
    trace.0.lock().unwrap().clear();
    (host, handler, root, calls, trace)
}

fn replugger() -> crate::assign::replug::Replugger {
    let vm = FakeHypervisor::default().create_vm(&VmSpec { ipa_bits: 40, tso: false }).unwrap();
    crate::assign::replug::Replugger { vm, direct_bars: Default::default() }
}

#[test]
fn a_lost_device_that_came_back_is_opened_again_and_plugged_in() {
    let (mut host, mut handler, root, calls, trace) = lost_identity_device();
    let names = |root: &devices::pci::PciRoot| -> Vec<String> {
        root.functions().into_iter().map(|f| f.name).collect()
    };
    assert_eq!(names(&root), ["host-bridge", "root-port1"]);
    let replugger = replugger();

    let reports = replugger.replug_lost(&mut handler, &mut host, std::time::Instant::now());
    assert_eq!(reports.len(), 1);
    assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
    assert_eq!(
        calls.lock().unwrap()[..5],
        [
            "new backend",
            "check 1",
            "open 0000:01:00.0",
            "reset 0000:01:00.0 replug",
            "map BAR 0 0x0",
        ],
        "the start's pipeline, through a fresh backend"
    );
    let traced = trace.0.lock().unwrap().clone();
    assert_eq!(traced[0], "0000:01:00.0 reset when=replug outcome=done method=flr");
    assert_eq!(
        traced[1], "dma dma-map gpa=0x40000000 iova=0x40000000 len=0x1000000",
        "guest RAM is mapped again for its DMA"
    );
    assert!(traced[2].starts_with("0000:01:00.0 device-replug functions=1 ms="), "{traced:#?}");
    assert_eq!(names(&root), ["host-bridge", "root-port1", "0000:01:00.0"], "back in the guest");
    assert!(replugger
        .direct_bars
        .lock()
        .unwrap()
        .contains_key(&devices::pci::FunctionId::BehindPort { port: 1, function: 0 }));
    // Nothing is lost now: a second SIGUSR1 does nothing.
    calls.lock().unwrap().clear();
    assert!(replugger.replug_lost(&mut handler, &mut host, std::time::Instant::now()).is_empty());
    assert!(calls.lock().unwrap().is_empty());

    // It is watched again: it can leave again, and is reset at exit like the others.
    let lost: PciAddress = "0000:01:00.0".parse().unwrap();
    note(&calls, format!("lose {lost}"));
    assert_eq!(host.poll_loss(), [(lost, LossReason::Request)]);
    assert!(handler
        .handle(&mut host, lost, LossReason::Request, std::time::Instant::now())
        .is_some());
    assert_eq!(handler.slots.lost().len(), 1);
    host.shutdown();
}

#[test]
fn a_device_that_is_not_back_stays_lost_and_the_vm_goes_on() {
    let (mut host, mut handler, root, calls, _trace) = lost_identity_device();
    let replugger = replugger();
    // Not back, or not bound to vfio-pci: the fresh backend's check refuses it.
    note(&calls, "refuse 0000:01:00.0".into());
    let reports = replugger.replug_lost(&mut handler, &mut host, std::time::Instant::now());
    assert_eq!(reports.len(), 1);
    let error = reports[0].outcome.as_ref().unwrap_err().to_string();
    assert!(error.starts_with("--device 0000:01:00.0: "), "{error}");
    assert_eq!(*calls.lock().unwrap(), ["new backend", "check 1"], "nothing opened");
    assert_eq!(handler.slots.lost().len(), 1, "still lost; SIGUSR1 can try again");
    let names: Vec<String> = root.functions().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["host-bridge", "root-port1"]);
    host.shutdown();
}

#[test]
fn windowed_devices_are_not_plugged_in_again_yet() {
    let (mut host, _parts, calls, _trace, _ram) = open_identity_and_window();
    calls.lock().unwrap().clear();
    let windowed: PciAddress = "0000:02:00.0".parse().unwrap();
    let error = host.replug(&[windowed]).unwrap_err().to_string();
    assert!(error.contains("re-plug is not supported for dma=window devices yet"), "{error}");
    // An identity device while another identity device keeps the DMA space.
    let identity: PciAddress = "0000:01:00.0".parse().unwrap();
    let error = host.replug(&[identity]).unwrap_err().to_string();
    assert!(error.contains("while another dma=identity device stays assigned"), "{error}");
    assert!(calls.lock().unwrap().is_empty(), "the host was not asked");
    host.shutdown();
}
