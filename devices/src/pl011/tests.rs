use std::sync::Arc;

use super::*;
use crate::testing::{fuzz_accesses, read32, write32, RecordingIrq, SharedOutput};

struct Rig {
    uart: Pl011,
    irq: Arc<RecordingIrq>,
    out: SharedOutput,
}

fn rig() -> Rig {
    let irq = Arc::new(RecordingIrq::default());
    let out = SharedOutput::default();
    let uart = Pl011::new(irq.clone(), Box::new(out.clone()));
    Rig { uart, irq, out }
}

impl Rig {
    fn read(&mut self, offset: u64) -> u32 {
        read32(&mut self.uart, offset)
    }

    fn write(&mut self, offset: u64, value: u32) {
        write32(&mut self.uart, offset, value);
    }

    fn enable_fifo(&mut self) {
        self.write(LCR_H, LCR_H_FEN | 0x60); // 8 bits, FIFO on
    }

    /// Reads DR until FR.RXFE, as the Linux driver does.
    fn drain(&mut self) -> Vec<u8> {
        let mut bytes = Vec::new();
        while self.read(FR) & FR_RXFE == 0 {
            bytes.push(self.read(DR) as u8);
        }
        bytes
    }
}

#[test]
fn reset_state() {
    let mut r = rig();
    assert_eq!(r.read(FR), FR_TXFE | FR_RXFE | FR_CTS | FR_DSR | FR_DCD);
    assert_eq!(r.read(CR), 0x300);
    assert_eq!(r.read(IFLS), 0x12);
    assert_eq!(r.read(IMSC), 0);
    assert_eq!(r.read(RIS), 0);
    assert_eq!(r.read(MIS), 0);
    assert_eq!(r.read(LCR_H), 0);
    assert_eq!(r.read(RSR_ECR), 0);
    assert_eq!(r.read(DR), 0, "empty FIFO reads as 0");
    assert!(r.irq.history().is_empty(), "line untouched while low");
}

#[test]
fn id_registers() {
    let mut r = rig();
    let ids: Vec<u32> = (0..8).map(|i| r.read(0xfe0 + i * 4)).collect();
    assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    r.write(0xfe0, 0xff);
    assert_eq!(r.read(0xfe0), 0x11, "ID registers are read-only");
}

#[test]
fn plain_registers_round_trip_with_their_widths() {
    let mut r = rig();
    for (offset, mask) in [
        (ILPR, 0xff),
        (IBRD, 0xffff),
        (FBRD, 0x3f),
        (LCR_H, 0xff),
        (CR, 0xffff),
        (IFLS, 0x3f),
        (IMSC, 0x7ff),
        (DMACR, 0x7),
    ] {
        r.write(offset, 0xffff_ffff);
        assert_eq!(r.read(offset), mask, "register {offset:#x}");
        r.write(offset, 0);
        assert_eq!(r.read(offset), 0, "register {offset:#x}");
    }
}

#[test]
fn status_registers_are_read_only() {
    let mut r = rig();
    r.write(FR, 0);
    r.write(RIS, 0x7ff);
    r.write(MIS, 0x7ff);
    assert_eq!(r.read(FR) & FR_TXFE, FR_TXFE);
    assert_eq!(r.read(RIS), 0);
    assert_eq!(r.read(MIS), 0);
    assert_eq!(r.read(ICR), 0, "ICR is write-only");
}

#[test]
fn transmit_writes_and_flushes_every_byte() {
    let mut r = rig();
    for &b in b"hi\n" {
        r.write(DR, u32::from(b) | 0xf00); // upper bits ignored
    }
    assert_eq!(r.out.bytes(), b"hi\n");
    assert_eq!(r.out.flushes(), 3);
    assert_eq!(r.read(RIS) & INT_TX, INT_TX, "TX raised after a write");
    let fr = r.read(FR);
    assert_eq!(fr & FR_TXFE, FR_TXFE, "TX FIFO always empty");
    assert_eq!(fr & ((1 << 5) | (1 << 3)), 0, "never TXFF, never BUSY");
}

#[test]
fn earlycon_byte_and_halfword_accesses() {
    let mut r = rig();
    // earlycon=pl011,mmio: 8-bit DR writes; the driver: 16-bit register accesses.
    r.uart.write(DR, b"A");
    r.uart.write(DR, &[b'B', 0]);
    let mut fr = [0u8; 2];
    r.uart.read(FR, &mut fr);
    assert_eq!(u16::from_le_bytes(fr), (FR_TXFE | FR_RXFE | FR_CTS | FR_DSR | FR_DCD) as u16);
    let mut byte = [0u8; 1];
    r.uart.read(FR, &mut byte);
    assert_eq!(byte[0] & FR_TXFE as u8, FR_TXFE as u8);
    assert_eq!(r.out.bytes(), b"AB");
}

#[test]
fn unexpected_accesses_read_zero_and_are_ignored() {
    let mut r = rig();
    let mut wide = [0xffu8; 8];
    r.uart.read(FR, &mut wide);
    assert_eq!(wide, [0; 8], "64-bit access");
    let mut byte = [0xffu8; 1];
    r.uart.read(FR + 1, &mut byte);
    assert_eq!(byte, [0], "inside a register");
    r.uart.read(0x1c, &mut byte);
    assert_eq!(byte, [0], "reserved offset");
    r.uart.write(DR, &[b'x'; 8]);
    r.uart.write(DR + 1, b"y");
    r.uart.write(0x800, &[1, 2, 3, 4]);
    assert!(r.out.bytes().is_empty());
}

#[test]
fn fifo_fills_to_32_and_queues_the_rest_in_order() {
    let mut r = rig();
    r.enable_fifo();
    let input: Vec<u8> = (0..40).collect();
    r.uart.enqueue_input(&input[..31]);
    let fr = r.read(FR);
    assert_eq!(fr & (FR_RXFE | FR_RXFF), 0, "31 bytes: neither empty nor full");
    r.uart.enqueue_input(&input[31..]);
    assert_eq!(r.read(FR) & FR_RXFF, FR_RXFF);
    assert_eq!(r.uart.rx_fifo.len(), 32);
    assert_eq!(r.uart.input_queue.len(), 8);
    assert_eq!(r.drain(), input);
    assert_eq!(r.read(FR) & (FR_RXFE | FR_RXFF), FR_RXFE);
}

#[test]
fn without_fen_the_holding_register_holds_one_byte() {
    let mut r = rig();
    r.uart.enqueue_input(b"ab");
    assert_eq!(r.read(FR) & (FR_RXFE | FR_RXFF), FR_RXFF);
    assert_eq!(r.uart.rx_fifo.len(), 1);
    assert_eq!(r.read(DR), u32::from(b'a'));
    assert_eq!(r.read(FR) & FR_RXFF, FR_RXFF, "refilled from the queue");
    assert_eq!(r.read(DR), u32::from(b'b'));
    assert_eq!(r.read(FR) & (FR_RXFE | FR_RXFF), FR_RXFE);
}

#[test]
fn enabling_the_fifo_pulls_in_queued_input() {
    let mut r = rig();
    r.uart.enqueue_input(b"hello");
    assert_eq!(r.uart.rx_fifo.len(), 1);
    r.enable_fifo();
    assert_eq!(r.uart.rx_fifo.len(), 5);
    assert_eq!(r.drain(), b"hello");
}

#[test]
fn input_queue_is_bounded() {
    let mut r = rig();
    r.enable_fifo();
    let total = FIFO_DEPTH + INPUT_QUEUE_CAPACITY + 100;
    let input: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    r.uart.enqueue_input(&input);
    r.uart.enqueue_input(b"more");
    let read = r.drain();
    assert_eq!(read.len(), FIFO_DEPTH + INPUT_QUEUE_CAPACITY);
    assert_eq!(read, input[..read.len()]);
    // Once drained there is room again.
    r.uart.enqueue_input(b"ok");
    assert_eq!(r.drain(), b"ok");
}

#[test]
fn rx_interrupt_follows_the_trigger_level() {
    let mut r = rig();
    r.enable_fifo();
    r.write(IMSC, INT_RX);
    r.uart.enqueue_input(&[b'x'; 15]);
    assert!(!r.irq.level(), "below the half-full trigger");
    assert_eq!(r.read(RIS) & INT_RT, INT_RT, "RT raised on any arrival");
    r.uart.enqueue_input(b"x");
    assert!(r.irq.level(), "16 bytes reach the trigger");
    assert_eq!(r.read(MIS), INT_RX);
    r.read(DR);
    assert!(!r.irq.level(), "back below the trigger");
    assert_eq!(r.read(RIS) & INT_RX, 0);

    // 1/8 full = 4 bytes.
    r.drain();
    r.write(IFLS, 0);
    r.uart.enqueue_input(b"abc");
    assert!(!r.irq.level());
    r.uart.enqueue_input(b"d");
    assert!(r.irq.level());
}

#[test]
fn rx_interrupt_without_fifo_fires_on_one_byte() {
    let mut r = rig();
    r.write(IMSC, INT_RX);
    r.uart.enqueue_input(b"z");
    assert!(r.irq.level());
    assert_eq!(r.read(DR), u32::from(b'z'));
    assert!(!r.irq.level());
}

#[test]
fn receive_timeout_drains_partial_fifos() {
    let mut r = rig();
    r.enable_fifo();
    r.write(IMSC, INT_RT);
    r.uart.enqueue_input(b"a");
    assert!(r.irq.level());
    assert_eq!(r.read(MIS), INT_RT);
    assert_eq!(r.drain(), b"a");
    assert!(!r.irq.level(), "RT clears when the FIFO empties");
    assert_eq!(r.read(RIS) & INT_RT, 0);
}

#[test]
fn icr_clears_only_the_bits_written() {
    let mut r = rig();
    r.enable_fifo();
    r.write(IMSC, INT_RX | INT_RT | INT_TX);
    r.uart.enqueue_input(&[0; 16]);
    assert_eq!(r.read(RIS), INT_RX | INT_RT | INT_TX);
    r.write(ICR, INT_TX);
    assert_eq!(r.read(RIS), INT_RX | INT_RT);
    assert!(r.irq.level());
    r.write(ICR, INT_RX | INT_RT);
    assert_eq!(r.read(RIS), 0);
    assert!(!r.irq.level());
    assert_eq!(r.uart.rx_fifo.len(), 16, "ICR does not touch the data");
}

#[test]
fn mis_is_ris_masked() {
    let mut r = rig();
    r.write(DR, u32::from(b'.'));
    assert_eq!(r.read(RIS), INT_TX);
    assert_eq!(r.read(MIS), 0);
    assert!(!r.irq.level());
}

/// Linux 5.x/6.x `pl011_start_tx_pio`: write while FR.TXFF is clear; if characters remain,
/// set TXIM and expect the TX interrupt; the handler writes up to fifosize/2 bytes per pass
/// and masks TXIM (`pl011_stop_tx`) once the buffer is empty.
#[test]
fn linux_tx_interrupt_sequence() {
    let mut r = rig();
    // pl011_hwinit: clear everything, mask everything.
    r.write(ICR, INT_ALL);
    r.write(IMSC, 0);
    // pl011_startup.
    r.write(IFLS, 0x12);
    r.enable_fifo();
    r.write(CR, 0x301);
    r.write(ICR, INT_RT | INT_RX);
    let mut im = INT_RT | INT_RX;
    r.write(IMSC, im);
    assert!(!r.irq.level());

    let message: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
    let mut pending = message.as_slice();

    // start_tx from process context: fill the FIFO (as if only the first 8 fit), then TXIM.
    for _ in 0..8 {
        assert_eq!(r.read(FR) & (1 << 5), 0, "TXFF clear");
        r.write(DR, u32::from(pending[0]));
        pending = &pending[1..];
    }
    assert!(!r.irq.level(), "TX is masked");
    im |= INT_TX;
    r.write(IMSC, im);
    assert!(r.irq.level(), "unmasking TXIM must raise the TX interrupt");

    // The interrupt handler loop.
    let mut passes = 0;
    while r.irq.level() {
        passes += 1;
        assert!(passes < 100, "handler never finished");
        let status = r.read(MIS);
        assert_eq!(status & INT_TX, INT_TX);
        r.write(ICR, status & !(INT_TX | INT_RT | INT_RX));
        for _ in 0..FIFO_DEPTH / 2 {
            let Some((&b, rest)) = pending.split_first() else { break };
            r.write(DR, u32::from(b));
            pending = rest;
        }
        if pending.is_empty() {
            im &= !INT_TX; // pl011_stop_tx
            r.write(IMSC, im);
        }
    }
    assert_eq!(r.out.bytes(), message);
    assert!(pending.is_empty());
    assert!(!r.irq.level());

    // The next write from process context: TXIM set again, interrupt again.
    r.write(DR, u32::from(b'!'));
    r.write(IMSC, im | INT_TX);
    assert!(r.irq.level());
}

/// Older kernels enable TXIM first and write from the interrupt handler only.
#[test]
fn tx_interrupt_after_unmask_with_nothing_written() {
    let mut r = rig();
    r.write(ICR, INT_ALL);
    r.write(IMSC, INT_TX);
    assert!(r.irq.level());
    r.write(DR, u32::from(b'k'));
    assert!(r.irq.level(), "still at or below the trigger after the write");
    r.write(IMSC, 0);
    assert!(!r.irq.level());
    assert_eq!(r.out.bytes(), b"k");
}

/// Linux `pl011_enable_interrupts` drains the FIFO, then `pl011_int` reads until RXFE on each
/// RX/RT interrupt; input arriving later must interrupt again.
#[test]
fn linux_rx_sequence() {
    let mut r = rig();
    r.enable_fifo();
    r.uart.enqueue_input(b"typed before the driver started");
    r.write(ICR, INT_RT | INT_RX);
    for _ in 0..FIFO_DEPTH * 2 {
        if r.read(FR) & FR_RXFE != 0 {
            break;
        }
        r.read(DR);
    }
    r.write(IMSC, INT_RT | INT_RX);
    assert!(!r.irq.level());

    for line in [&b"ls\r"[..], &[b'q'; 100][..]] {
        r.uart.enqueue_input(line);
        assert!(r.irq.level());
        let mut got = Vec::new();
        while r.irq.level() {
            let status = r.read(MIS);
            assert_ne!(status & (INT_RT | INT_RX), 0);
            got.extend(r.drain());
        }
        assert_eq!(got, line);
    }
}

#[test]
fn loopback_sends_tx_to_rx() {
    let mut r = rig();
    r.enable_fifo();
    r.write(CR, 0x301 | CR_LBE);
    r.write(DR, u32::from(b'L'));
    assert!(r.out.bytes().is_empty());
    assert_eq!(r.read(DR), u32::from(b'L'));
    r.write(CR, 0x301);
    r.write(DR, u32::from(b'M'));
    assert_eq!(r.out.bytes(), b"M");
}

#[test]
fn irq_line_driven_only_on_changes() {
    let mut r = rig();
    r.write(IMSC, INT_TX);
    for _ in 0..10 {
        r.write(DR, u32::from(b'x'));
    }
    r.write(IMSC, 0);
    assert_eq!(r.irq.history(), [true, false]);
}

struct BrokenSink;

impl Write for BrokenSink {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

#[test]
fn failing_output_is_survivable() {
    let irq = Arc::new(RecordingIrq::default());
    let mut uart = Pl011::new(irq, Box::new(BrokenSink));
    for _ in 0..3 {
        write32(&mut uart, DR, u32::from(b'x'));
    }
    assert_eq!(read32(&mut uart, RIS) & INT_TX, INT_TX);
}

#[test]
fn random_accesses_never_panic() {
    let mut r = rig();
    r.uart.enqueue_input(&[b'i'; 100]);
    fuzz_accesses(&mut r.uart);
    r.uart.enqueue_input(&[b'i'; 100]);
    fuzz_accesses(&mut r.uart);
    let _ = format!("{:?}", r.uart);
}

impl Rig {
    /// Checks that the register image is what trapped reads of every word return (reading
    /// DR only while reads are pure: then it pops nothing) and returns it.
    fn assert_image_matches_reads(&mut self, when: &str) -> [u32; FRAME_WORDS] {
        let image = self.uart.register_image();
        assert!(self.uart.reads_are_pure(), "{when}: reads would change the UART");
        for (index, word) in image.iter().enumerate() {
            let offset = index as u64 * 4;
            assert_eq!(*word, self.read(offset), "{when}: word at {offset:#x}");
        }
        assert!(self.uart.reads_are_pure(), "{when}: reading the frame changed the UART");
        assert_eq!(self.uart.register_image(), image, "{when}: reading the frame changed it");
        assert_eq!(self.uart.registers(), image[..REGISTER_WORDS], "{when}: the registers");
        assert_eq!(image[REGISTER_WORDS..], rig().uart.register_image()[REGISTER_WORDS..]);
        image
    }
}

#[test]
fn the_register_image_is_what_every_read_returns() {
    let mut r = rig();
    let image = r.assert_image_matches_reads("reset");
    assert_eq!(image[(FR / 4) as usize], FR_TXFE | FR_RXFE | FR_CTS | FR_DSR | FR_DCD);
    assert_eq!(image[(CR / 4) as usize], CR_RESET);
    let ids: Vec<u32> = image[0xfe0 / 4..].to_vec();
    assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    assert!(image[0x4c / 4..0xfe0 / 4].iter().all(|&w| w == 0), "holes read 0");
    // What Linux's driver writes as it starts and prints: each write changes the image.
    r.enable_fifo();
    r.write(CR, 0x301);
    r.write(IMSC, INT_RX | INT_RT);
    let image = r.assert_image_matches_reads("configured");
    assert_eq!(image[(LCR_H / 4) as usize], LCR_H_FEN | 0x60);
    assert_eq!(image[(IMSC / 4) as usize], INT_RX | INT_RT);
    assert_eq!(image[(RIS / 4) as usize], 0);
    r.write(DR, u32::from(b'x'));
    r.write(IMSC, INT_RX | INT_RT | INT_TX);
    let image = r.assert_image_matches_reads("transmitting");
    assert_eq!(image[(RIS / 4) as usize], INT_TX);
    assert_eq!(image[(MIS / 4) as usize], INT_TX);
    assert_eq!(image[(DR / 4) as usize], 0, "DR reads 0 with RXFE set");
    r.write(ICR, INT_TX);
    let image = r.assert_image_matches_reads("TX cleared");
    assert_eq!((image[(RIS / 4) as usize], image[(MIS / 4) as usize]), (0, 0));
}

#[test]
fn reads_are_pure_only_while_nothing_is_received_or_queued() {
    let mut r = rig();
    assert!(r.uart.reads_are_pure());
    // Without the FIFO one byte is held and the rest queued: impure until both drain.
    r.uart.enqueue_input(b"ab");
    assert!(!r.uart.reads_are_pure());
    let image = r.uart.register_image();
    assert_eq!(image[(FR / 4) as usize] & FR_RXFE, 0, "the image shows data to read");
    assert_eq!(r.read(DR), u32::from(b'a'));
    assert!(!r.uart.reads_are_pure(), "b moved from the queue into the holding register");
    assert_eq!(r.read(DR), u32::from(b'b'));
    assert!(r.uart.reads_are_pure());
    r.assert_image_matches_reads("drained");
    // A looped-back byte is received too.
    r.write(CR, 0x301 | CR_LBE);
    r.write(DR, u32::from(b'L'));
    assert!(!r.uart.reads_are_pure());
    assert_eq!(r.drain(), b"L");
    r.assert_image_matches_reads("loopback drained");
}
