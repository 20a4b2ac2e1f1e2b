//! Random configuration and BAR accesses: no panics, and nothing the policy keeps virtual
//! ever reaches the device.

use devices::pci::PciFunction;

use super::fake::{assign, gpu, gpu_forwardable, nvme, nvme_forwardable, XorShift};

const SIZES: [usize; 7] = [1, 2, 4, 8, 3, 0, 4];

#[test]
fn random_accesses_do_not_panic_or_leak_virtual_writes() {
    for seed in 1..=4u64 {
        let builder = if seed % 2 == 0 { gpu() } else { nvme(seed == 3) };
        let (mut f, fake, _) = assign(&builder);
        let mut rng = XorShift::new(seed);
        for _ in 0..20_000 {
            let len = SIZES[rng.below(SIZES.len() as u64) as usize];
            let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            match rng.below(10) {
                0..=2 => f.config_read(rng.below(4200) as u16, &mut data),
                3..=5 => {
                    // Bias towards the header and capabilities.
                    let offset = if rng.below(2) == 0 { rng.below(0x100) } else { rng.below(4200) };
                    f.config_write(offset as u16, &data);
                }
                6 => f.bar_read(rng.below(8) as usize, rng.below(1 << 25), &mut data),
                7 => f.bar_write(rng.below(8) as usize, rng.below(1 << 25), &data),
                8 => {
                    let offset = 0x2000 + rng.below(0x2000) / 4 * 4;
                    f.bar_write(if seed == 3 { 4 } else { 0 }, offset, &data);
                }
                _ => match rng.below(20) {
                    0 => f.reset(),
                    1 => f.set_requester_id(rng.next_u64() as u16),
                    _ => {
                        let _ = f.bar_regions();
                    }
                },
            }
        }
        let log = fake.log.lock().unwrap();
        assert!(!log.config_writes.is_empty(), "seed {seed}: nothing was forwarded");
        for (offset, data) in &log.config_writes {
            for at in *offset..*offset + data.len() as u16 {
                let allowed =
                    if seed % 2 == 0 { gpu_forwardable(at) } else { nvme_forwardable(at) };
                assert!(allowed, "seed {seed}: write at {at:#x} reached the device");
            }
        }
    }
}
