use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_MAC};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::net::{MacAddress, Net, NetBackend};
use crate::virtio::test_ring::*;
use crate::virtio::{ActiveQueue, QueueEvent, VirtioDevice};

/// Every ring feature the kernel implements (what vhost-net offers, plus logging).
const KERNEL: u64 = RING_FEATURES | 1 << 26;

/// A vhost-net that records its calls; `fail` names a call to refuse.
#[derive(Debug, Default)]
struct FakeKernel {
    calls: Arc<Mutex<Vec<String>>>,
    features: u64,
    fail: Option<&'static str>,
}

impl FakeKernel {
    fn new(features: u64) -> (Self, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        (Self { calls: Arc::clone(&calls), features, fail: None }, calls)
    }

    fn record(&self, name: &'static str, call: String) -> io::Result<()> {
        self.calls.lock().unwrap().push(call);
        if self.fail == Some(name) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

fn fd(fd: Option<RawFd>) -> String {
    fd.map_or("-1".into(), |fd| fd.to_string())
}

impl VhostNetKernel for FakeKernel {
    fn features(&self) -> u64 {
        self.features
    }
    fn set_features(&mut self, features: u64) -> io::Result<()> {
        self.record("features", format!("features {features:#x}"))
    }
    fn set_mem_table(&mut self, regions: &[MemoryRegion]) -> io::Result<()> {
        self.record("mem", format!("mem {}", regions.len()))
    }
    fn set_vring_num(&mut self, queue: u16, size: u16) -> io::Result<()> {
        self.record("num", format!("num {queue} {size}"))
    }
    fn set_vring_addr(&mut self, queue: u16, _addr: VringAddr) -> io::Result<()> {
        self.record("addr", format!("addr {queue}"))
    }
    fn set_vring_base(&mut self, queue: u16, base: u16) -> io::Result<()> {
        self.record("base", format!("base {queue} {base}"))
    }
    fn vring_base(&mut self, queue: u16) -> io::Result<u16> {
        self.record("get-base", format!("get-base {queue}")).map(|()| 7)
    }
    fn set_vring_kick(&mut self, queue: u16, kick: Option<RawFd>) -> io::Result<()> {
        self.record("kick", format!("kick {queue} {}", fd(kick)))
    }
    fn set_vring_call(&mut self, queue: u16, call: Option<RawFd>) -> io::Result<()> {
        self.record("call", format!("call {queue} {}", fd(call)))
    }
    fn set_backend(&mut self, queue: u16, tap: Option<RawFd>) -> io::Result<()> {
        self.record("backend", format!("backend {queue} {}", fd(tap)))
    }
}

/// Interrupts whose queues have irqfds 40 + queue (or none).
#[derive(Debug, Default)]
struct Irqfds {
    none: bool,
}

impl VirtioInterrupt for Irqfds {
    fn signal_queue(&self, _queue_index: u16) {}
    fn signal_config(&self) {}
    fn queue_irqfd(&self, queue_index: u16) -> Option<RawFd> {
        (!self.none).then_some(40 + RawFd::from(queue_index))
    }
}

const ACKED: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_CSUM;

fn plan_for(mem: &GuestMemoryMmap, interrupt: &Irqfds) -> Result<VhostPlan, String> {
    let rx = TestRing::new(mem).queue();
    let tx = TestRing::at(mem, 0x8000).queue();
    plan(
        KERNEL,
        ACKED,
        mem,
        PlanQueue { queue: &rx, kick: Some(30) },
        PlanQueue { queue: &tx, kick: Some(31) },
        interrupt,
    )
}

#[test]
fn the_kernel_gets_the_ring_features_the_driver_accepted() {
    let ring = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_NET_F_MRG_RXBUF;
    assert_eq!(ring_features(ACKED, KERNEL), Ok(ring), "MAC and CSUM stay with the device");
    assert_eq!(ring_features(ACKED, KERNEL & !(1 << VIRTIO_RING_F_EVENT_IDX)), Err(1 << 29));
    assert_eq!(ring_features(1 << VIRTIO_F_VERSION_1, 1 << VIRTIO_F_VERSION_1), Ok(1 << 32));
}

#[test]
fn a_plan_gives_host_addresses_doorbells_and_irqfds() {
    let mem = test_memory();
    let plan = plan_for(&mem, &Irqfds::default()).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    assert_eq!(
        plan.regions,
        [MemoryRegion { guest_phys_addr: 0, size: MEM_SIZE as u64, host_addr: host }]
    );
    let rx = TestRing::new(&mem).queue();
    let tx = TestRing::at(&mem, 0x8000).queue();
    for (ring, queue, kick, call) in
        [(&plan.vrings[0], &rx, 30, 40), (&plan.vrings[1], &tx, 31, 41)]
    {
        assert_eq!(ring.size, RING_SIZE);
        assert_eq!(ring.base, 0);
        assert_eq!((ring.kick, ring.call), (kick, call));
        assert_eq!(ring.addr.desc, host + queue.desc_table());
        assert_eq!(ring.addr.avail, host + queue.avail_ring());
        assert_eq!(ring.addr.used, host + queue.used_ring());
    }
    assert_eq!(plan.vrings[1].index, 1);
}

#[test]
fn no_plan_without_irqfds_features_or_rings_in_ram() {
    let mem = test_memory();
    let err = plan_for(&mem, &Irqfds { none: true }).unwrap_err();
    assert!(err.contains("no irqfd"), "{err}");
    let rx = TestRing::new(&mem).queue();
    let q = |kick| PlanQueue { queue: &rx, kick };
    let err = plan(0, ACKED, &mem, q(Some(1)), q(Some(2)), &Irqfds::default()).unwrap_err();
    assert!(err.contains("lacks features"), "{err}");
    let err = plan(KERNEL, ACKED, &mem, q(None), q(Some(2)), &Irqfds::default()).unwrap_err();
    assert!(err.contains("not eventfds"), "{err}");
    // A used ring that runs past the end of RAM.
    let mut outside = TestRing::new(&mem).queue();
    outside.set_used_ring_address(Some(MEM_SIZE as u32 - 64), Some(0));
    let err = vring_addr(0, &outside, &mem).unwrap_err().to_string();
    assert!(err.contains("device ring"), "{err}");
}

#[test]
fn start_hands_over_in_order_and_stop_takes_back() {
    let mem = test_memory();
    let plan = plan_for(&mem, &Irqfds::default()).unwrap();
    let (mut kernel, calls) = FakeKernel::new(KERNEL);
    start(&mut kernel, &plan, 9).unwrap();
    let want_start = [
        format!("features {:#x}", plan.features),
        "mem 1".into(),
        "num 0 256".into(),
        "base 0 0".into(),
        "addr 0".into(),
        "kick 0 30".into(),
        "call 0 40".into(),
        "num 1 256".into(),
        "base 1 0".into(),
        "addr 1".into(),
        "kick 1 31".into(),
        "call 1 41".into(),
        "backend 0 9".into(),
        "backend 1 9".into(),
    ];
    assert_eq!(*calls.lock().unwrap(), want_start);
    calls.lock().unwrap().clear();
    assert_eq!(stop(&mut kernel), [Some(7), Some(7)]);
    let want_stop = [
        "backend 0 -1",
        "get-base 0",
        "kick 0 -1",
        "call 0 -1",
        "backend 1 -1",
        "get-base 1",
        "kick 1 -1",
        "call 1 -1",
    ];
    assert_eq!(*calls.lock().unwrap(), want_stop);
}

#[test]
fn a_refused_start_is_undone() {
    let mem = test_memory();
    let plan = plan_for(&mem, &Irqfds::default()).unwrap();
    let (mut kernel, calls) = FakeKernel::new(KERNEL);
    kernel.fail = Some("backend");
    let err = start(&mut kernel, &plan, 9).unwrap_err().to_string();
    assert!(err.starts_with("VHOST_NET_SET_BACKEND (queue 0): "), "{err}");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.last().map(String::as_str), Some("call 1 -1"), "undone: {calls:?}");
    assert!(calls.iter().any(|c| c == "backend 1 -1"));
}

/// A tap-like backend: `tap_fd` is some descriptor; frames never come.
#[derive(Debug)]
struct FakeTap;

impl NetBackend for FakeTap {
    fn describe(&self) -> String {
        "tap fake".into()
    }
    fn vnet_hdr(&self) -> bool {
        true
    }
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(None)
    }
    fn send(&mut self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn readable_fd(&self) -> RawFd {
        -1
    }
    fn tap_fd(&self) -> Option<RawFd> {
        Some(9)
    }
}

fn activate(net: &mut Net, mem: &GuestMemoryMmap, interrupt: Irqfds) -> [Arc<QueueEvent>; 2] {
    let bells = [Arc::new(QueueEvent::new().unwrap()), Arc::new(QueueEvent::new().unwrap())];
    let queues = vec![
        ActiveQueue { index: 0, queue: TestRing::new(mem).queue(), notify: Arc::clone(&bells[0]) },
        ActiveQueue {
            index: 1,
            queue: TestRing::at(mem, 0x8000).queue(),
            notify: Arc::clone(&bells[1]),
        },
    ];
    net.activate(mem.clone(), queues, Arc::new(interrupt)).unwrap();
    bells
}

#[cfg(target_os = "linux")]
#[test]
fn the_device_hands_each_activation_to_the_kernel_and_takes_it_back_at_reset() {
    let mem = test_memory();
    let mut net = Net::new("virtio-net0", MacAddress::derived("t"), Box::new(FakeTap));
    let (kernel, calls) = FakeKernel::new(KERNEL);
    net.set_vhost(Box::new(kernel));
    for _round in 0..2 {
        net.ack_features(net.device_features());
        let bells = activate(&mut net, &mem, Irqfds::default());
        assert!(wait_for(|| calls.lock().unwrap().iter().any(|c| c == "backend 1 9")));
        // The kernel owns the doorbells: nothing in userspace takes their rings (the worker
        // rang each once after attaching the tap).
        bells[1].notify();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(bells[1].take(), 2, "a userspace loop took the kernel's doorbell");
        net.reset();
        let log = calls.lock().unwrap().clone();
        assert_eq!(log.last().map(String::as_str), Some("call 1 -1"), "taken back: {log:?}");
        calls.lock().unwrap().clear();
    }
    // Without irqfds the same device serves in userspace and leaves the kernel alone.
    net.ack_features(net.device_features());
    activate(&mut net, &mem, Irqfds { none: true });
    net.reset();
    assert!(calls.lock().unwrap().is_empty(), "{:?}", calls.lock().unwrap());
}
