//! The "90% of maps are 4 KiB" workload, measured with and without coalescing and for several
//! window sizes. Run with `cargo test -p passthrough workload -- --nocapture` to see the table;
//! add `--ignored` (and `--release` for meaningful ns/req) for the full sweep.
//!
//! The guest is modelled as Linux's page allocator serving DMA buffers: single pages come
//! first from a LIFO list of recently freed pages (as the per-CPU page lists do), else are
//! carved in order from a 2 MiB block picked at random (as the buddy allocator splits a
//! large block); larger buffers are naturally aligned chunks at random places. A "scattered"
//! variant places every page at random, the worst case for coalescing.

use std::time::Instant;

use super::*;
use crate::dma::{DmaStats, FailureReason};

/// The DART's limits at a host that places maps where the window manager asks (as the VFIO
/// mapper imitating it does), so large aligned maps get aligned device addresses.
const DART_LIKE: MapperLimits =
    MapperLimits { policy: AddressPolicy::HostPicksWithin, ..MapperLimits::APPLE_DART };

const RAM_SIZE: u64 = 4 << 30;
/// Requests in flight once warmed up (queues, rings, pinned buffers of a busy device).
const IN_FLIGHT: usize = 2_000;

/// The guest-side allocator model.
struct GuestPages {
    rng: XorShift,
    scattered: bool,
    freed: Vec<u64>,
    block: u64,
    block_used: u64,
}

impl GuestPages {
    fn new(seed: u64, scattered: bool) -> Self {
        Self {
            rng: XorShift::new(seed),
            scattered,
            freed: Vec::new(),
            block: 0,
            block_used: 2 * M1,
        }
    }

    fn page(&mut self) -> u64 {
        if self.scattered {
            return RAM_BASE + self.rng.below(RAM_SIZE / K4) * K4;
        }
        if let Some(page) = self.freed.pop() {
            return page;
        }
        if self.block_used == 2 * M1 {
            self.block = RAM_BASE + self.rng.below(RAM_SIZE / (2 * M1)) * 2 * M1;
            self.block_used = 0;
        }
        self.block_used += K4;
        self.block + self.block_used - K4
    }

    fn chunk(&mut self, len: u64) -> u64 {
        let align = len.next_power_of_two().min(2 * M1);
        RAM_BASE + self.rng.below((RAM_SIZE - len) / align) * align
    }

    fn free(&mut self, gpa: u64, len: u64) {
        if len == K4 && !self.scattered {
            self.freed.push(gpa);
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / M1 as f64)
}

/// What one run measured.
struct Measured {
    stats: DmaStats,
    avg_pinned_mappings: f64,
    avg_live_mappings: f64,
    ns_per_request: f64,
}

fn run(window_size: u64, cache: bool, scattered: bool, steps: u32) -> Measured {
    let ram = [GuestRamRange { start: RAM_BASE, len: RAM_SIZE }];
    let mut m = manager_with_ram(DART_LIKE, window_size, cache, &ram);
    let mut pages = GuestPages::new(7, scattered);
    let mut rng = XorShift::new(11);
    // (gpa, len, device, long-lived)
    let mut live: Vec<(u64, u64, u64, bool)> = Vec::new();
    let (mut pinned_sum, mut live_sum) = (0u64, 0u64);
    let mut long_lived_count = 0;
    let started = Instant::now();
    for _ in 0..steps {
        let (gpa, len) = if rng.chance(90) {
            (pages.page(), K4)
        } else {
            let len = [2 * K4, K16, 32 << 10, 64 << 10, 128 << 10, K256, 512 << 10, M1]
                [rng.below(8) as usize];
            (pages.chunk(len), len)
        };
        let device = m.map(gpa, len).unwrap();
        // Up to a fifth of the requests in flight stay mapped to the end (rings, descriptors).
        let long_lived = long_lived_count < IN_FLIGHT / 5 && rng.chance(20);
        long_lived_count += usize::from(long_lived);
        live.push((gpa, len, device, long_lived));
        if live.len() > IN_FLIGHT {
            // Retire a random short-lived request.
            loop {
                let i = rng.below(live.len() as u64) as usize;
                if !live[i].3 {
                    let (gpa, len, device, _) = live.swap_remove(i);
                    m.unmap(device, len).unwrap();
                    pages.free(gpa, len);
                    break;
                }
            }
        }
        let s = m.stats();
        pinned_sum += s.pinned_mappings;
        live_sum += s.live_mappings;
    }
    let elapsed = started.elapsed();
    let requests = m.stats().map_requests + m.stats().unmap_requests;
    check(&m);
    Measured {
        stats: m.stats(),
        avg_pinned_mappings: pinned_sum as f64 / f64::from(steps),
        avg_live_mappings: live_sum as f64 / f64::from(steps),
        ns_per_request: elapsed.as_nanos() as f64 / requests as f64,
    }
}

/// Prints the table for `windows` and returns, for clustered pages with the cache on, the
/// average live (pinned) mappings per window size.
fn sweep(windows: &[u64], steps: u32) -> Vec<(u64, f64)> {
    let mut clustered = Vec::new();
    for scattered in [false, true] {
        println!(
            "\n{} pages, {steps} maps (90% 4 KiB), {IN_FLIGHT} in flight, DART limits:",
            if scattered { "scattered" } else { "clustered" }
        );
        println!(
            "{:>8} {:>5} | {:>9} {:>9} {:>11} | {:>9} {:>9} {:>11} | {:>7} {:>6} {:>6} {:>8}",
            "window",
            "cache",
            "avg pin",
            "peak pin",
            "peak pin B",
            "avg live",
            "peak live",
            "peak live B",
            "maps/rq",
            "hit%",
            "evict",
            "ns/req"
        );
        for &window in windows {
            for cache in [false, true] {
                let r = run(window, cache, scattered, steps);
                let s = &r.stats;
                let hits = 100.0 * (s.cache_hits + s.shared_hits) as f64 / s.map_requests as f64;
                println!(
                    "{:>8} {:>5} | {:>9.0} {:>9} {:>11} | {:>9.0} {:>9} {:>11} | {:>7.3} {:>6.1} {:>6} {:>8.0}",
                    format!("{} KiB", window >> 10),
                    cache,
                    r.avg_pinned_mappings,
                    s.peak_pinned_mappings,
                    mib(s.peak_pinned_bytes),
                    r.avg_live_mappings,
                    s.peak_live_mappings,
                    mib(s.peak_live_bytes),
                    s.host_map_calls as f64 / s.map_requests as f64,
                    hits,
                    s.evictions,
                    r.ns_per_request,
                );
                if !scattered && cache {
                    clustered.push((window, r.avg_pinned_mappings));
                }
            }
        }
    }
    clustered
}

/// Maps 4 KiB pages and never unmaps until the first refusal: how many buffers the DART
/// limits hold, and which limit ends it.
fn capacity(windows: &[u64]) {
    println!("\ncapacity: 4 KiB maps held until the first refusal (DART limits):");
    println!("{:>8} | {:>20} | {:>20}", "window", "clustered", "scattered");
    for &window in windows {
        let mut cells = Vec::new();
        for scattered in [false, true] {
            let ram = [GuestRamRange { start: RAM_BASE, len: RAM_SIZE }];
            let mut m = manager_with_ram(DART_LIKE, window, true, &ram);
            let mut pages = GuestPages::new(5, scattered);
            let err = loop {
                if let Err(e) = m.map(pages.page(), K4) {
                    break e;
                }
            };
            let s = m.stats();
            let why = match err.reason() {
                FailureReason::NoRoom => "bytes",
                FailureReason::NoMappingSlots => "slots",
                _ => "other",
            };
            cells.push(format!("{:>7} maps, {:>5} out", s.live_requests, why));
        }
        println!("{:>4} KiB | {} | {}", window >> 10, cells[0], cells[1]);
    }
}

#[test]
fn four_kib_workload_with_and_without_coalescing() {
    capacity(&[K16, K256]);
    let clustered = sweep(&[K16, 64 << 10, K256, M1], 25_000);
    let pinned = |w: u64| clustered.iter().find(|(rw, _)| *rw == w).map(|(_, p)| *p).unwrap();
    let (off, on) = (pinned(K16), pinned(K256));
    println!("live (pinned) host mappings, 16 KiB vs 256 KiB windows: {:.1}x fewer", off / on);
    assert!(on * 2.0 < off, "coalescing should at least halve live mappings");
}

#[test]
#[ignore = "full sweep for choosing the window size; run with --ignored --release"]
fn four_kib_workload_full_sweep() {
    let windows = [K16, 32 << 10, 64 << 10, 128 << 10, K256, 512 << 10, M1, 2 * M1];
    capacity(&windows);
    sweep(&windows, 60_000);
}
