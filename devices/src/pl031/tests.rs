use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::testing::{fuzz_accesses, read32, write32, RecordingIrq};

struct Rig {
    rtc: Pl031,
    irq: Arc<RecordingIrq>,
    now: Arc<AtomicU64>,
}

/// 2024-01-01T00:00:00Z.
const START: u64 = 1_704_067_200;

fn rig() -> Rig {
    let irq = Arc::new(RecordingIrq::default());
    let now = Arc::new(AtomicU64::new(START));
    let clock_now = now.clone();
    let rtc = Pl031::new(Box::new(move || clock_now.load(Ordering::SeqCst)), irq.clone());
    Rig { rtc, irq, now }
}

impl Rig {
    fn read(&mut self, offset: u64) -> u32 {
        read32(&mut self.rtc, offset)
    }

    fn write(&mut self, offset: u64, value: u32) {
        write32(&mut self.rtc, offset, value);
    }

    fn advance(&self, seconds: u64) {
        self.now.fetch_add(seconds, Ordering::SeqCst);
    }
}

#[test]
fn reads_host_time_and_follows_it() {
    let mut r = rig();
    assert_eq!(r.read(RTCDR), START as u32);
    r.advance(5);
    assert_eq!(r.read(RTCDR), START as u32 + 5);
    assert_eq!(r.read(RTCCR), 1, "always running");
}

#[test]
fn load_sets_the_time_now_and_it_keeps_running() {
    let mut r = rig();
    r.write(RTCLR, 1000);
    assert_eq!(r.read(RTCDR), 1000);
    assert_eq!(r.read(RTCLR), 1000);
    r.advance(7);
    assert_eq!(r.read(RTCDR), 1007);
    // Loading an earlier time than the host's wraps the offset, not the reading.
    r.write(RTCLR, u32::MAX);
    assert_eq!(r.read(RTCDR), u32::MAX);
    r.advance(2);
    assert_eq!(r.read(RTCDR), 1, "the 32-bit counter wraps");
}

#[test]
fn control_register_cannot_stop_the_clock() {
    let mut r = rig();
    r.write(RTCCR, 0);
    assert_eq!(r.read(RTCCR), 1);
    r.advance(1);
    assert_eq!(r.read(RTCDR), START as u32 + 1);
}

#[test]
fn id_registers() {
    let mut r = rig();
    let ids: Vec<u32> = (0..8).map(|i| r.read(0xfe0 + i * 4)).collect();
    assert_eq!(ids, [0x31, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
}

#[test]
fn registers_round_trip() {
    let mut r = rig();
    r.write(RTCMR, 0xdead_beef);
    assert_eq!(r.read(RTCMR), 0xdead_beef);
    r.write(RTCIMSC, 0xffff_ffff);
    assert_eq!(r.read(RTCIMSC), 1);
    r.write(RTCRIS, 1);
    r.write(RTCMIS, 1);
    r.write(RTCDR, 5);
    assert_eq!(r.read(RTCRIS), 0, "read-only");
    assert_eq!(r.read(RTCMIS), 0, "read-only");
    assert_eq!(r.read(RTCDR), START as u32, "RTCDR is read-only");
    assert_eq!(r.read(RTCICR), 0, "write-only");
}

#[test]
fn match_interrupt_latches_masks_and_clears() {
    let mut r = rig();
    let alarm = START as u32 + 10;
    r.write(RTCMR, alarm);
    r.write(RTCIMSC, 1);
    r.advance(9);
    r.rtc.check_alarm();
    assert_eq!(r.read(RTCRIS), 0);
    assert!(!r.irq.level());
    r.advance(1);
    r.rtc.check_alarm();
    assert!(r.irq.level(), "counter reached the match value");
    assert_eq!(r.read(RTCMIS), 1);
    r.advance(3);
    assert_eq!(r.read(RTCRIS), 1, "latched after the counter moves on");
    r.write(RTCIMSC, 0);
    assert!(!r.irq.level(), "masked");
    assert_eq!(r.read(RTCRIS), 1);
    assert_eq!(r.read(RTCMIS), 0);
    r.write(RTCICR, 1);
    assert_eq!(r.read(RTCRIS), 0);
    r.write(RTCIMSC, 1);
    assert!(!r.irq.level());
}

#[test]
fn match_passed_between_accesses_is_seen_on_the_next_access() {
    let mut r = rig();
    r.write(RTCIMSC, 1);
    r.write(RTCMR, START as u32 + 3);
    r.advance(100);
    assert_eq!(r.read(RTCMIS), 1);
    assert!(r.irq.level());
}

#[test]
fn loading_past_the_match_or_clock_going_back_does_not_fire() {
    let mut r = rig();
    r.write(RTCIMSC, 1);
    r.write(RTCMR, 500);
    r.write(RTCLR, 400);
    r.write(RTCLR, 600);
    assert_eq!(r.read(RTCRIS), 0, "a load jumps over the match");
    r.write(RTCLR, 100);
    r.now.store(START - 50, Ordering::SeqCst);
    r.rtc.check_alarm();
    assert_eq!(r.read(RTCRIS), 0, "host clock set back");
    r.advance(450);
    r.rtc.check_alarm();
    assert_eq!(r.read(RTCDR), 500);
    assert_eq!(r.read(RTCRIS), 1);
}

#[test]
fn unexpected_accesses_read_zero() {
    let mut r = rig();
    let mut wide = [0xffu8; 8];
    r.rtc.read(RTCDR, &mut wide);
    assert_eq!(wide, [0; 8]);
    let mut byte = [0xffu8; 1];
    r.rtc.read(RTCDR + 1, &mut byte);
    assert_eq!(byte, [0]);
    r.rtc.read(0x20, &mut byte);
    assert_eq!(byte, [0]);
    r.rtc.write(RTCLR, &[0; 8]);
    assert_eq!(r.read(RTCDR), START as u32, "64-bit load ignored");
}

#[test]
fn random_accesses_never_panic() {
    let mut r = rig();
    fuzz_accesses(&mut r.rtc);
    r.now.store(u64::MAX, Ordering::SeqCst);
    fuzz_accesses(&mut r.rtc);
    let _ = format!("{:?}", r.rtc);
}
