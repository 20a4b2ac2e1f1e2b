//! Aperture's test-exit device: a guest ends the VM with an exit status of its choice.
//!
//! Meant for scripted boot tests: the guest's `/init` runs its checks and reports the result as
//! Aperture's own process exit status, with no need to parse console output.
//!
//! # Registers
//!
//! One 4 KiB frame. Registers are 32 bits wide and take 32-bit accesses only; other offsets
//! read as 0 and ignore writes.
//!
//! | Offset | Name  | Access     | Meaning                                                       |
//! |--------|-------|------------|---------------------------------------------------------------|
//! | `0x0`  | EXIT  | write-only | Writing a status 0-255 ends the VM with that exit status.     |
//! | `0x4`  | MAGIC | read-only  | Reads `0x41505458` (`"APTX"`): the device is present.         |
//!
//! A write to EXIT of a value above 255, or of any width other than 32 bits, is rejected with a
//! warning in Aperture's log and the VM keeps running, so a stray write cannot end the VM with a
//! surprising status. EXIT reads as 0.
//!
//! # Guest usage
//!
//! Aperture places the device at guest physical address `0x0902_0000` (`TEST_EXIT_BASE` in the
//! `arch` crate's `layout.rs`). With busybox, whose `devmem` needs `/dev/mem` in the guest
//! kernel (`CONFIG_DEVMEM=y`):
//!
//! ```sh
//! # Is the device there?
//! [ "$(devmem 0x09020004 32)" = 0x41505458 ] && echo "test-exit present"
//! # End the VM: `aperture` exits with status 3.
//! devmem 0x09020000 32 3
//! ```
//!
//! The width argument must be `32` (busybox's default when only an address is given);
//! `devmem 0x09020000 8 3` is rejected. A typical `/init` ends with
//! `run_tests; devmem 0x09020000 32 $?`.

use std::sync::Arc;

use log::{debug, warn};

use crate::bus::MmioDevice;

/// Offset of the EXIT register.
pub const EXIT_OFFSET: u64 = 0x0;
/// Offset of the MAGIC register.
pub const MAGIC_OFFSET: u64 = 0x4;
/// What MAGIC reads: `"APTX"` in ASCII.
pub const MAGIC_VALUE: u32 = 0x4150_5458;
/// Size of the device's MMIO frame.
pub const FRAME_SIZE: u64 = 0x1000;

/// Receives the guest's request to end the VM.
pub trait ExitRequest: Send + Sync {
    /// The guest asked to end the VM with exit status `status`.
    fn request_exit(&self, status: u8);
}

/// The test-exit device.
pub struct TestExit {
    sink: Arc<dyn ExitRequest>,
}

impl std::fmt::Debug for TestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestExit").finish_non_exhaustive()
    }
}

impl TestExit {
    /// A device that passes accepted exit requests to `sink`.
    pub fn new(sink: Arc<dyn ExitRequest>) -> Self {
        Self { sink }
    }

    fn write_exit(&self, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                "test-exit: ignored a {}-byte write to EXIT; write the status as 32 bits \
                 (devmem <base> 32 <status>)",
                data.len()
            );
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match u8::try_from(value) {
            Ok(status) => {
                debug!("test-exit: guest requested exit status {status}");
                self.sink.request_exit(status);
            }
            Err(_) => warn!(
                "test-exit: ignored EXIT value {value:#x}; the exit status must be 0-255, \
                 the VM keeps running"
            ),
        }
    }
}

impl MmioDevice for TestExit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == MAGIC_OFFSET && data.len() == 4 {
            data.copy_from_slice(&MAGIC_VALUE.to_le_bytes());
        } else if offset != EXIT_OFFSET || data.len() != 4 {
            debug!("test-exit: {}-byte read at offset {offset:#x} reads 0", data.len());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == EXIT_OFFSET {
            self.write_exit(data);
        } else {
            debug!("test-exit: ignored {}-byte write at offset {offset:#x}", data.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::testing::{fuzz_accesses, read32, write32};

    #[derive(Debug, Default)]
    struct Requests(Mutex<Vec<u8>>);

    impl ExitRequest for Requests {
        fn request_exit(&self, status: u8) {
            self.0.lock().unwrap().push(status);
        }
    }

    fn rig() -> (TestExit, Arc<Requests>) {
        let requests = Arc::new(Requests::default());
        (TestExit::new(requests.clone()), requests)
    }

    #[test]
    fn accepts_statuses_0_to_255() {
        let (mut dev, requests) = rig();
        for status in [0, 1, 3, 42, 255] {
            write32(&mut dev, EXIT_OFFSET, status);
        }
        assert_eq!(*requests.0.lock().unwrap(), [0, 1, 3, 42, 255]);
    }

    #[test]
    fn rejects_values_above_255() {
        let (mut dev, requests) = rig();
        for value in [256, 0x100_0003, 0x4150_0003, u32::MAX] {
            write32(&mut dev, EXIT_OFFSET, value);
        }
        assert!(requests.0.lock().unwrap().is_empty());
    }

    #[test]
    fn rejects_other_widths_and_offsets() {
        let (mut dev, requests) = rig();
        dev.write(EXIT_OFFSET, &[3]);
        dev.write(EXIT_OFFSET, &[3, 0]);
        dev.write(EXIT_OFFSET, &[3, 0, 0, 0, 0, 0, 0, 0]);
        dev.write(EXIT_OFFSET, &[]);
        for offset in [1, 2, MAGIC_OFFSET, 8, 0xffc, FRAME_SIZE] {
            write32(&mut dev, offset, 3);
        }
        assert!(requests.0.lock().unwrap().is_empty());
    }

    #[test]
    fn magic_identifies_the_device() {
        let (mut dev, _) = rig();
        assert_eq!(read32(&mut dev, MAGIC_OFFSET), MAGIC_VALUE);
        assert_eq!(&MAGIC_VALUE.to_be_bytes(), b"APTX");
        let mut narrow = [0xffu8; 1];
        dev.read(MAGIC_OFFSET, &mut narrow);
        assert_eq!(narrow, [0], "32-bit reads only");
        let mut wide = [0xffu8; 8];
        dev.read(MAGIC_OFFSET, &mut wide);
        assert_eq!(wide, [0; 8]);
    }

    #[test]
    fn other_registers_read_zero() {
        let (mut dev, _) = rig();
        assert_eq!(read32(&mut dev, EXIT_OFFSET), 0);
        assert_eq!(read32(&mut dev, 8), 0);
        assert_eq!(read32(&mut dev, 0xffc), 0);
    }

    #[test]
    fn random_accesses_never_panic() {
        let (mut dev, _) = rig();
        fuzz_accesses(&mut dev);
        let _ = format!("{dev:?}");
    }
}
