use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::header::HDR_LEN;
use super::rx::{deliver_frame, RxOutcome, RxScratch};
use super::*;
use crate::virtio::test_ring::*;
use crate::virtio::QueueEvent;

/// A backend the test feeds and reads: frames queued for the guest, frames the guest sent.
#[derive(Debug, Default)]
struct FakeLink {
    to_guest: VecDeque<Vec<u8>>,
    from_guest: Vec<Vec<u8>>,
    offloads: Option<RxOffloads>,
}

#[derive(Debug)]
struct FakeBackend {
    link: Arc<Mutex<FakeLink>>,
    vnet_hdr: bool,
}

impl NetBackend for FakeBackend {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
    fn set_rx_offloads(&mut self, offloads: RxOffloads) -> io::Result<()> {
        self.link.lock().unwrap().offloads = Some(offloads);
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(self.link.lock().unwrap().to_guest.pop_front().map(|frame| {
            buf[..frame.len()].copy_from_slice(&frame);
            frame.len()
        }))
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.link.lock().unwrap().from_guest.push(frame.to_vec());
        Ok(())
    }
    fn readable_fd(&self) -> RawFd {
        -1
    }
}

/// A backend over a datagram socket pair: the test holds the other end.
#[derive(Debug)]
struct DatagramBackend(UnixDatagram);

impl NetBackend for DatagramBackend {
    fn describe(&self) -> String {
        "datagram".into()
    }
    fn vnet_hdr(&self) -> bool {
        false
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.0.recv(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.send(frame).map(drop)
    }
    fn readable_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn fake(vnet_hdr: bool) -> (Arc<Mutex<FakeLink>>, Box<dyn NetBackend>) {
    let link = Arc::new(Mutex::new(FakeLink::default()));
    (Arc::clone(&link), Box::new(FakeBackend { link, vnet_hdr }))
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

/// A frame as the driver sees it: a header with `num_buffers`, then `payload`.
fn with_header(num_buffers: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; HDR_LEN];
    frame[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An engine over rx ring `rx` (at 0) and tx ring `tx` (at 0x8000).
fn engine(
    mem: &GuestMemoryMmap,
    rx: &TestRing<'_>,
    tx: &TestRing<'_>,
    backend: Box<dyn NetBackend>,
    mergeable: bool,
) -> (NetEngine, Arc<RecordingInterrupt>) {
    let interrupt = Arc::new(RecordingInterrupt::default());
    let engine = NetEngine::new(
        "virtio-net0".into(),
        mem.clone(),
        rx.queue(),
        tx.queue(),
        backend,
        Arc::clone(&interrupt) as Arc<dyn VirtioInterrupt>,
        mergeable,
    );
    (engine, interrupt)
}

#[test]
fn tx_gathers_a_chain_and_strips_the_header_for_plain_backends() {
    for vnet_hdr in [false, true] {
        let mem = test_memory();
        let rx = TestRing::new(&mem);
        let mut tx = TestRing::at(&mem, 0x8000);
        let (link, backend) = fake(vnet_hdr);
        let (mut engine, interrupt) = engine(&mem, &rx, &tx, backend, true);
        let header = [1u8, 0, 0, 0, 0, 0, 20, 0, 16, 0, 0, 0];
        let payload = pattern(1000, 3);
        mem.write_slice(&header, GuestAddress(DATA_BASE)).unwrap();
        mem.write_slice(&payload[..400], GuestAddress(DATA_BASE + 0x1000)).unwrap();
        mem.write_slice(&payload[400..], GuestAddress(DATA_BASE + 0x2000)).unwrap();
        tx.add_chain(&[
            readable(DATA_BASE, 12),
            readable(DATA_BASE + 0x1000, 400),
            readable(DATA_BASE + 0x2000, 600),
        ]);
        engine.process_tx();
        let sent = link.lock().unwrap().from_guest.clone();
        let expected = if vnet_hdr { [&header[..], &payload].concat() } else { payload.clone() };
        assert_eq!(sent, [expected]);
        assert_eq!(tx.used(0), (0, 0), "tx chains are returned with nothing written");
        assert_eq!(interrupt.queue_signals(), [TX_QUEUE]);
    }
}

#[test]
fn tx_drops_bad_chains_and_goes_on() {
    let mem = test_memory();
    let rx = TestRing::new(&mem);
    let mut tx = TestRing::at(&mem, 0x8000);
    let (link, backend) = fake(false);
    let (mut engine, _) = engine(&mem, &rx, &tx, backend, true);
    tx.add_chain(&[writable(DATA_BASE, 100)]);
    tx.add_chain(&[readable(DATA_BASE, 8)]);
    tx.add_chain(&[readable(DATA_BASE, u32::MAX)]);
    tx.add_chain(&[readable(MEM_SIZE as u64 - 10, 64)]);
    tx.add_chain(&[readable(DATA_BASE, 14)]);
    engine.process_tx();
    assert_eq!(tx.used_count(), 5);
    assert_eq!(link.lock().unwrap().from_guest, [vec![0u8; 2]]);
}

#[test]
fn rx_fills_one_chain_with_a_cleared_header() {
    let mem = test_memory();
    let mut rx = TestRing::new(&mem);
    let tx = TestRing::at(&mem, 0x8000);
    let (link, backend) = fake(false);
    let (mut engine, interrupt) = engine(&mem, &rx, &tx, backend, false);
    mem.write_slice(&[0xaa; 2048], GuestAddress(DATA_BASE)).unwrap();
    rx.add_chain(&[writable(DATA_BASE, 10), writable(DATA_BASE + 0x100, 1600)]);
    let payload = pattern(1514, 9);
    link.lock().unwrap().to_guest.push_back(payload.clone());
    assert_eq!(engine.process_rx(), RxState::Idle);
    assert_eq!(rx.used(0), (0, (HDR_LEN + 1514) as u32));
    let mut seen = read_mem(&mem, DATA_BASE, 10);
    seen.extend(read_mem(&mem, DATA_BASE + 0x100, HDR_LEN + 1514 - 10));
    assert_eq!(seen, with_header(1, &payload));
    assert_eq!(interrupt.queue_signals(), [RX_QUEUE]);
}

#[test]
fn rx_merges_a_large_frame_across_chains() {
    let mem = test_memory();
    let mut rx = TestRing::new(&mem);
    let tx = TestRing::at(&mem, 0x8000);
    let (link, backend) = fake(true);
    let (mut engine, _) = engine(&mem, &rx, &tx, backend, true);
    for i in 0..4 {
        rx.add_chain(&[writable(DATA_BASE + i * 0x1000, 1536)]);
    }
    // A vnet-header backend's frame: its header (GSO fields set by the host), then data.
    let mut frame = vec![1u8, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0xee, 0xee];
    frame.extend(pattern(4000, 1));
    link.lock().unwrap().to_guest.push_back(frame.clone());
    assert_eq!(engine.process_rx(), RxState::Idle);
    assert_eq!(rx.used_count(), 3);
    let lens: Vec<u32> = (0..3).map(|n| rx.used(n).1).collect();
    assert_eq!(lens, [1536, 1536, 4012 - 3072]);
    let mut seen = Vec::new();
    for (i, len) in lens.iter().enumerate() {
        seen.extend(read_mem(&mem, DATA_BASE + i as u64 * 0x1000, *len as usize));
    }
    frame[10..12].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(seen, frame, "header kept, num_buffers set");
}

#[test]
fn rx_waits_for_buffers_and_keeps_the_frame() {
    let mem = test_memory();
    let mut rx = TestRing::new(&mem);
    let tx = TestRing::at(&mem, 0x8000);
    let (link, backend) = fake(false);
    let (mut engine, interrupt) = engine(&mem, &rx, &tx, backend, true);
    link.lock().unwrap().to_guest.extend([pattern(3000, 1), pattern(60, 2)]);
    rx.add_chain(&[writable(DATA_BASE, 2048)]);
    assert_eq!(engine.process_rx(), RxState::NeedBuffers, "3012 bytes need two chains");
    assert_eq!(rx.used_count(), 0, "nothing consumed while the frame does not fit");
    rx.add_chain(&[writable(DATA_BASE + 0x1000, 2048)]);
    rx.add_chain(&[writable(DATA_BASE + 0x2000, 2048)]);
    assert_eq!(engine.process_rx(), RxState::Idle);
    assert_eq!(rx.used_count(), 3);
    assert_eq!(rx.used(0), (0, 2048));
    assert_eq!(rx.used(1), (1, 3012 - 2048));
    assert_eq!(rx.used(2), (2, 72));
    assert_eq!(read_mem(&mem, DATA_BASE + 0x2000, 72), with_header(1, &pattern(60, 2)));
    assert_eq!(interrupt.queue_signals(), [RX_QUEUE]);
}

#[test]
fn rx_without_merging_drops_frames_too_big_for_a_chain() {
    let mem = test_memory();
    let mut rx = TestRing::new(&mem);
    let tx = TestRing::at(&mem, 0x8000);
    let (link, backend) = fake(false);
    let (mut engine, _) = engine(&mem, &rx, &tx, backend, false);
    rx.add_chain(&[writable(DATA_BASE, 1526)]);
    link.lock().unwrap().to_guest.extend([pattern(3000, 1), pattern(100, 2)]);
    assert_eq!(engine.process_rx(), RxState::Idle);
    assert_eq!(rx.used_count(), 1, "the chain is kept for the frame that fits");
    assert_eq!(rx.used(0), (0, 112));
}

#[test]
fn rx_skips_useless_chains() {
    let mem = test_memory();
    let mut rx = TestRing::new(&mem);
    let (mut queue, mut scratch) = (rx.queue(), RxScratch::default());
    rx.add_chain(&[readable(DATA_BASE, 2048)]);
    rx.add_chain(&[writable(MEM_SIZE as u64 - 8, 64)]);
    rx.add_chain(&[writable(DATA_BASE, 4)]);
    rx.add_chain(&[writable(DATA_BASE, 256)]);
    let mut frame = with_header(0, &pattern(100, 5));
    assert_eq!(
        deliver_frame(&mut queue, &mem, &mut frame, true, &mut scratch),
        RxOutcome::Delivered(1)
    );
    let used: Vec<(u32, u32)> = (0..4).map(|n| rx.used(n)).collect();
    assert_eq!(used, [(0, 0), (1, 0), (2, 0), (3, 112)]);
    let mut short = vec![0u8; 4];
    assert_eq!(deliver_frame(&mut queue, &mem, &mut short, true, &mut scratch), RxOutcome::Dropped);
}

#[test]
fn random_rings_never_panic() {
    let mem = test_memory();
    let mut rng = XorShift::new(0x5eed_0042);
    for round in 0..300 {
        mem.write_slice(&vec![0u8; DATA_BASE as usize], GuestAddress(0)).unwrap();
        let mut rx = TestRing::new(&mem);
        let mut tx = TestRing::at(&mem, 0x8000);
        let (link, backend) = fake(round % 2 == 0);
        let (mut engine, _) = engine(&mem, &rx, &tx, backend, round % 3 != 0);
        for ring in [&mut rx, &mut tx] {
            for _ in 0..1 + rng.below(12) {
                let index = rng.below(u64::from(RING_SIZE)) as u16;
                let addr =
                    pick(&[DATA_BASE + rng.below(0x8000), u64::MAX - 8, rng.next_u64()], &mut rng);
                let len = pick(&[0, 1, 12, 1514, 70000, u32::MAX, rng.next_u64() as u32], &mut rng);
                let flags = (rng.next_u64() & 0x7) as u16;
                let next = pick(&[index.wrapping_add(1), index, rng.next_u64() as u16], &mut rng);
                ring.set_desc(
                    index,
                    virtio_queue::desc::split::Descriptor::new(addr, len, flags, next),
                );
            }
            for _ in 0..1 + rng.below(4) {
                ring.publish(pick(&[rng.below(16) as u16, rng.next_u64() as u16], &mut rng));
            }
        }
        for _ in 0..rng.below(4) {
            let len = pick(&[0, 5, 12, 60, 1514, 9000, MAX_FRAME - HDR_LEN], &mut rng);
            link.lock().unwrap().to_guest.push_back(pattern(len, round as u8));
        }
        engine.process_tx();
        engine.process_rx();
    }
}

#[test]
fn features_and_config_follow_the_backend() {
    let plain = Net::new("virtio-net0", MacAddress([0x52, 0x54, 0, 1, 2, 3]), fake(false).1);
    let offload = Net::new("virtio-net1", MacAddress([0x52, 0x54, 0, 1, 2, 4]), fake(true).1);
    assert_eq!(plain.device_type(), 1);
    assert_eq!(plain.queue_max_sizes(), &[256, 256]);
    let base = plain.device_features();
    assert_ne!(base & 1 << VIRTIO_NET_F_MRG_RXBUF, 0);
    assert_eq!(base & 1 << VIRTIO_NET_F_GUEST_CSUM, 0, "no offloads without vnet headers");
    assert_ne!(offload.device_features() & 1 << VIRTIO_NET_F_GUEST_CSUM, 0);
    let mut config = [0xffu8; 12];
    plain.read_config(0, &mut config);
    assert_eq!(config, [0x52, 0x54, 0, 1, 2, 3, 1, 0, 1, 0, 0, 0]);
    let mut status = [0u8; 2];
    plain.read_config(6, &mut status);
    assert_eq!(status, [1, 0], "link up");
    plain.read_config(u64::MAX, &mut status);
    assert_eq!(status, [0, 0]);
}

#[test]
fn mac_addresses_parse_and_derive_stably() {
    let mac: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
    assert_eq!(mac.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
    assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
    for bad in
        ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:00", "5:54:00:ab:cd:0f", "zz:54:00:ab:cd:0f"]
    {
        assert!(bad.parse::<MacAddress>().unwrap_err().contains("not a MAC address"), "{bad}");
    }
    assert!("01:00:5e:00:00:01".parse::<MacAddress>().unwrap_err().contains("multicast"));
    let a = MacAddress::derived("0:tap=tap0");
    assert_eq!(a, MacAddress::derived("0:tap=tap0"));
    assert_ne!(a, MacAddress::derived("1:tap=tap0"));
    assert_eq!(a.0[0] & 3, 2, "locally administered unicast");
}

#[test]
fn a_worker_moves_frames_both_ways_and_survives_a_reset() {
    let (host, device_end) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    let mut net =
        Net::new("virtio-net0", MacAddress::derived("t"), Box::new(DatagramBackend(device_end)));
    let mem = test_memory();
    net.ack_features(net.device_features() & !(1 << VIRTIO_NET_F_GUEST_CSUM));
    for round in 0..2u8 {
        let mut rx = TestRing::new(&mem);
        let mut tx = TestRing::at(&mem, 0x8000);
        let bells = [Arc::new(QueueEvent::new().unwrap()), Arc::new(QueueEvent::new().unwrap())];
        let interrupt = Arc::new(RecordingInterrupt::default());
        let queues = vec![
            ActiveQueue { index: 0, queue: rx.queue(), notify: Arc::clone(&bells[0]) },
            ActiveQueue { index: 1, queue: tx.queue(), notify: Arc::clone(&bells[1]) },
        ];
        net.activate(mem.clone(), queues, Arc::clone(&interrupt) as Arc<dyn VirtioInterrupt>)
            .unwrap();
        // Host to guest: the frame waits in the socket until the driver posts a buffer.
        host.send(&pattern(200, round)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        rx.add_chain(&[writable(DATA_BASE, 2048)]);
        bells[0].notify();
        assert!(wait_for(|| rx.used_count() == 1));
        assert_eq!(read_mem(&mem, DATA_BASE, 212), with_header(1, &pattern(200, round)));
        // Guest to host.
        mem.write_slice(&with_header(0, &pattern(64, round)), GuestAddress(DATA_BASE + 0x1000))
            .unwrap();
        tx.add_chain(&[readable(DATA_BASE + 0x1000, 76)]);
        bells[1].notify();
        let mut got = [0u8; 128];
        let n = host.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &pattern(64, round)[..]);
        assert!(wait_for(|| tx.used_count() == 1));
        net.reset();
        net.ack_features(net.device_features());
    }
}

#[test]
fn activation_needs_both_queues() {
    let mut net = Net::new("virtio-net0", MacAddress::derived("t"), fake(false).1);
    let mem = test_memory();
    let rx = TestRing::new(&mem);
    let bell = Arc::new(QueueEvent::new().unwrap());
    let interrupt = Arc::new(RecordingInterrupt::default()) as Arc<dyn VirtioInterrupt>;
    let only_rx = vec![ActiveQueue { index: 0, queue: rx.queue(), notify: Arc::clone(&bell) }];
    let err = net.activate(mem.clone(), only_rx, Arc::clone(&interrupt)).unwrap_err();
    assert!(err.to_string().contains("receive and transmit queues"), "{err}");
    let bad = vec![ActiveQueue { index: 2, queue: rx.queue(), notify: bell }];
    assert!(net.activate(mem, bad, interrupt).unwrap_err().to_string().contains("queue 2"));
}
