use std::sync::atomic::Ordering;

use devices::IrqLine;

use super::*;
use crate::hypervisor::slots::MemoryKind;
use crate::readonly::testing::{guest_reads, SlotVm};

const BASE: u64 = 0x0900_0000;
const DR: u64 = 0x00;
const FR: u64 = 0x18;
const LCR_H: u64 = 0x2c;
const IMSC: u64 = 0x38;
const RIS: u64 = 0x3c;
const MIS: u64 = 0x40;
/// FR with nothing received: TXFE, RXFE, CTS, DSR, DCD.
const FR_IDLE: u32 = 0x97;
const FR_RXFE: u32 = 1 << 4;
const INT_RX_RT: u32 = (1 << 4) | (1 << 6);
const INT_TX: u32 = 1 << 5;

struct NoIrq;

impl IrqLine for NoIrq {
    fn set_level(&self, _asserted: bool) {}
}

fn console(slots: &Arc<SlotVm>) -> ConsoleUart {
    let vm: Arc<dyn Vm> = slots.clone();
    ConsoleUart::new(&vm, BASE, Pl011::new(Arc::new(NoIrq), Box::new(std::io::sink())))
}

/// The 32-bit word the guest reads from the page at `offset`.
fn page_word(slots: &SlotVm, offset: usize) -> u32 {
    let host = slots.mapped.lock().unwrap().last().unwrap().2;
    u32::from_le_bytes(guest_reads(host, offset, 4).try_into().unwrap())
}

fn trapped_read(uart: &ConsoleUart, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    MmioTarget::read(uart, offset, &mut data);
    u32::from_le_bytes(data)
}

fn trapped_write(uart: &ConsoleUart, offset: u64, value: u32) {
    MmioTarget::write(uart, offset, &value.to_le_bytes());
}

#[test]
fn the_page_is_mapped_read_only_and_follows_every_write() {
    let slots = Arc::new(SlotVm::default());
    let uart = console(&slots);
    let (guest, size, _, kind) = slots.mapped.lock().unwrap()[0];
    assert_eq!((guest, size, kind), (BASE, 0x1000, MemoryKind::ReadOnly));
    assert_eq!(page_word(&slots, FR as usize), FR_IDLE);
    assert_eq!(page_word(&slots, 0x30), 0x300, "CR after reset");
    let ids: Vec<u32> = (0..8).map(|i| page_word(&slots, 0xfe0 + i * 4)).collect();
    assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    // Writes exit and change what the page holds before the vCPU resumes.
    trapped_write(&uart, LCR_H, 0x70);
    trapped_write(&uart, IMSC, INT_RX_RT);
    assert_eq!(page_word(&slots, LCR_H as usize), 0x70);
    assert_eq!(page_word(&slots, IMSC as usize), INT_RX_RT);
    trapped_write(&uart, DR, u32::from(b'x'));
    assert_eq!(page_word(&slots, RIS as usize), INT_TX);
    assert_eq!(page_word(&slots, MIS as usize), 0, "TX is masked");
    trapped_write(&uart, IMSC, INT_RX_RT | INT_TX);
    assert_eq!(page_word(&slots, MIS as usize), INT_TX);
    // Every word of the page is what a trapped read returns.
    for offset in (0..0x1000).step_by(4) {
        assert_eq!(page_word(&slots, offset as usize), trapped_read(&uart, offset), "{offset:#x}");
    }
    assert_eq!(slots.mapped.lock().unwrap().len(), 1, "mapped once");
    assert!(slots.unmapped.lock().unwrap().is_empty());
    assert_eq!(uart.page_summary(), "mapped 1 times, unmapped 0 times for input");
    drop(uart);
    assert!(!slots.is_mapped(), "dropping the UART removes its slot");
}

#[test]
fn input_unmaps_the_page_until_the_guest_has_read_it_all() {
    let slots = Arc::new(SlotVm::default());
    let uart = console(&slots);
    trapped_write(&uart, IMSC, INT_RX_RT);
    uart.enqueue_input(b"");
    assert!(slots.is_mapped(), "no input, no change");
    // Without the FIFO one byte is held, the other queued.
    uart.enqueue_input(b"hi");
    assert!(!slots.is_mapped(), "unmapped before the guest can see the input");
    assert_eq!(trapped_read(&uart, MIS) & INT_RX_RT, INT_RX_RT);
    assert_eq!(trapped_read(&uart, FR) & FR_RXFE, 0);
    assert_eq!(trapped_read(&uart, DR), u32::from(b'h'));
    assert!(!slots.is_mapped(), "one byte left");
    uart.enqueue_input(b"!");
    assert_eq!(slots.unmapped.lock().unwrap().len(), 1, "already unmapped");
    assert_eq!(trapped_read(&uart, DR), u32::from(b'i'));
    assert!(!slots.is_mapped(), "one byte left");
    assert_eq!(trapped_read(&uart, DR), u32::from(b'!'));
    // Drained: the page is back, with the receive side empty.
    assert!(slots.is_mapped());
    assert_eq!(slots.mapped.lock().unwrap().len(), 2);
    assert_eq!(page_word(&slots, FR as usize), FR_IDLE);
    assert_eq!(page_word(&slots, MIS as usize), 0);
    assert_eq!(page_word(&slots, DR as usize), 0);
    assert_eq!(uart.page_summary(), "mapped 2 times, unmapped 1 times for input");
    // A looped-back byte is input too.
    trapped_write(&uart, 0x30, 0x381);
    trapped_write(&uart, DR, u32::from(b'L'));
    assert!(!slots.is_mapped());
    assert_eq!(trapped_read(&uart, DR), u32::from(b'L'));
    assert!(slots.is_mapped());
}

#[test]
fn a_page_that_cannot_be_mapped_leaves_every_access_trapping() {
    let slots = Arc::new(SlotVm::default());
    slots.refuse.store(true, Ordering::Relaxed);
    let uart = console(&slots);
    assert!(slots.mapped.lock().unwrap().is_empty());
    assert_eq!(uart.page_summary(), "off: every access traps");
    // Off for good: no retry once mapping works again, and the model works as before.
    slots.refuse.store(false, Ordering::Relaxed);
    uart.enqueue_input(b"a");
    assert_eq!(trapped_read(&uart, DR), u32::from(b'a'));
    assert_eq!(trapped_read(&uart, FR), FR_IDLE);
    assert!(slots.mapped.lock().unwrap().is_empty());
    // The same without read-only memory (Hypervisor.framework).
    let fake = crate::hypervisor::fake::FakeHypervisor::default();
    let spec = crate::hypervisor::VmSpec { ipa_bits: 40, tso: false };
    let vm = crate::hypervisor::Hypervisor::create_vm(&fake, &spec).unwrap();
    let uart = ConsoleUart::new(&vm, BASE, Pl011::new(Arc::new(NoIrq), Box::new(std::io::sink())));
    assert_eq!(uart.page_summary(), "off: every access traps");
}

#[test]
fn a_page_that_cannot_be_unmapped_stays_and_is_unmapped_at_the_next_change() {
    let slots = Arc::new(SlotVm::default());
    let uart = console(&slots);
    slots.refuse_unmap.store(true, Ordering::Relaxed);
    uart.enqueue_input(b"a");
    assert!(slots.is_mapped(), "kept: the slot could not be removed");
    // The page still shows an empty receive side, never the input as DR's 0.
    assert_eq!(page_word(&slots, FR as usize), FR_IDLE);
    assert_eq!(uart.page_summary(), "mapped 1 times, unmapped 0 times for input");
    // The next trapped access tries again.
    slots.refuse_unmap.store(false, Ordering::Relaxed);
    assert_eq!(trapped_read(&uart, FR) & FR_RXFE, 0);
    assert!(!slots.is_mapped());
    assert_eq!(trapped_read(&uart, DR), u32::from(b'a'));
    assert!(slots.is_mapped());
    assert_eq!(uart.page_summary(), "mapped 2 times, unmapped 1 times for input");
}
