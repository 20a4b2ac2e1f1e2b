use std::sync::Arc;

use super::*;
use crate::testing::{fuzz_accesses, read32, write32, RecordingIrq};

fn rig() -> (Pl061, Arc<RecordingIrq>) {
    let irq = Arc::new(RecordingIrq::default());
    (Pl061::new(irq.clone()), irq)
}

/// GPIODATA alias that reaches exactly the lines in `mask`.
fn data(mask: u8) -> u64 {
    u64::from(mask) << 2
}

#[test]
fn identifies_as_a_pl061_primecell() {
    let (mut gpio, _) = rig();
    let ids: Vec<u32> = (0..8).map(|i| read32(&mut gpio, 0xfe0 + i * 4)).collect();
    assert_eq!(ids, [0x61, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
}

#[test]
fn data_reads_and_writes_are_masked_by_address_bits() {
    let (mut gpio, _) = rig();
    write32(&mut gpio, GPIODIR, 0x0f);
    write32(&mut gpio, data(0xff), 0xff);
    assert_eq!(read32(&mut gpio, data(0xff)), 0x0f, "only outputs are driven by writes");
    write32(&mut gpio, data(0x01), 0x00);
    assert_eq!(read32(&mut gpio, data(0xff)), 0x0e, "the write touched line 0 only");
    assert_eq!(read32(&mut gpio, data(0x06)), 0x06);
    assert_eq!(read32(&mut gpio, data(0x00)), 0x00);
    gpio.set_input(7, true);
    assert_eq!(read32(&mut gpio, data(0x80)), 0x80);
    assert_eq!(read32(&mut gpio, data(0x7f)), 0x0e);
}

#[test]
fn both_edges_latch_press_and_release_until_cleared() {
    let (mut gpio, irq) = rig();
    // What gpio-pl061 does for IRQ_TYPE_EDGE_BOTH on line 3, then unmask.
    write32(&mut gpio, GPIOIS, 0);
    write32(&mut gpio, GPIOIBE, 1 << 3);
    write32(&mut gpio, GPIOIE, 1 << 3);
    assert!(!irq.level());
    gpio.set_input(3, true);
    assert!(irq.level());
    assert_eq!(read32(&mut gpio, GPIORIS), 1 << 3);
    assert_eq!(read32(&mut gpio, GPIOMIS), 1 << 3);
    write32(&mut gpio, GPIOIC, 1 << 3);
    assert!(!irq.level());
    assert_eq!(read32(&mut gpio, GPIORIS), 0);
    gpio.set_input(3, true);
    assert!(!irq.level(), "no edge without a change");
    gpio.set_input(3, false);
    assert!(irq.level(), "release is an edge too");
    assert_eq!(irq.history(), [true, false, true]);
}

#[test]
fn single_edges_follow_iev_and_masked_edges_stay_latched() {
    let (mut gpio, irq) = rig();
    write32(&mut gpio, GPIOIEV, 1 << 0); // line 0 rising, line 1 falling
    gpio.set_input(0, true);
    gpio.set_input(1, true);
    assert_eq!(read32(&mut gpio, GPIORIS), 0b01);
    assert!(!irq.level(), "masked");
    gpio.set_input(1, false);
    gpio.set_input(0, false);
    assert_eq!(read32(&mut gpio, GPIORIS), 0b11);
    write32(&mut gpio, GPIOIE, 0b10);
    assert!(irq.level(), "unmasking a latched edge raises the line");
    assert_eq!(read32(&mut gpio, GPIOMIS), 0b10);
}

#[test]
fn level_lines_follow_the_input_and_ignore_clears() {
    let (mut gpio, irq) = rig();
    write32(&mut gpio, GPIOIS, 1 << 2);
    write32(&mut gpio, GPIOIEV, 1 << 2);
    write32(&mut gpio, GPIOIE, 1 << 2);
    assert!(!irq.level());
    gpio.set_input(2, true);
    assert!(irq.level());
    write32(&mut gpio, GPIOIC, 0xff);
    assert!(irq.level(), "a level interrupt stays while the level does");
    gpio.set_input(2, false);
    assert!(!irq.level());
    // Active-low: IEV clear.
    write32(&mut gpio, GPIOIEV, 0);
    assert!(irq.level());
}

#[test]
fn knows_when_the_guest_read_a_pressed_key() {
    let (mut gpio, _) = rig();
    gpio.set_input(3, true);
    assert!(!gpio.input_seen_high(3));
    read32(&mut gpio, data(1 << 2));
    assert!(!gpio.input_seen_high(3), "a read that masks line 3 out does not count");
    read32(&mut gpio, data(1 << 3));
    assert!(gpio.input_seen_high(3));
    gpio.set_input(3, false);
    assert!(!gpio.input_seen_high(3));
    assert!(!gpio.input_seen_high(99));
    gpio.set_input(99, true);
}

#[test]
fn reset_restores_power_on_state_but_keeps_external_inputs() {
    let (mut gpio, irq) = rig();
    write32(&mut gpio, GPIOIBE, 0xff);
    write32(&mut gpio, GPIOIE, 0xff);
    write32(&mut gpio, GPIODIR, 0x01);
    gpio.set_input(3, true);
    assert!(irq.level());
    gpio.reset();
    assert!(!irq.level());
    for reg in [GPIODIR, GPIOIS, GPIOIBE, GPIOIEV, GPIOIE, GPIORIS, GPIOMIS, GPIOAFSEL] {
        assert_eq!(read32(&mut gpio, reg), 0, "register {reg:#x}");
    }
    assert_eq!(read32(&mut gpio, data(0xff)), 1 << 3);
}

#[test]
fn odd_accesses_never_panic() {
    let (mut gpio, _) = rig();
    gpio.set_input(3, true);
    fuzz_accesses(&mut gpio);
    let _ = format!("{gpio:?}");
}
