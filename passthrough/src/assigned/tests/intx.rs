//! INTx: the pin offered when the host can deliver it or the function has MSI, the guest's Interrupt Line, and the
//! COMMAND and STATUS bits that reach or come from the device.

use devices::pci::PciFunction;

use super::fake::{assign, gpu, msi_only, nvme, region, ConfigBuilder, MSI_64BIT};
use super::{read16, read32, write16};
use crate::assigned::intx_pin_name;

fn pin_and_line(f: &mut crate::assigned::AssignedFunction) -> (u8, u8) {
    let dword = read32(f, 0x3c);
    ((dword >> 8) as u8, dword as u8)
}

#[test]
fn pin_is_offered_only_when_the_host_delivers_intx() {
    let (mut f, _, _) = assign(nvme(false).intx());
    assert_eq!(pin_and_line(&mut f), (1, 0));
    assert_eq!(f.intx_pin(), Some(1));

    // The same device on a host without INTx: no pin.
    let (mut f, _, _) = assign(&nvme(false));
    assert_eq!(pin_and_line(&mut f), (0, 0));
    assert_eq!(f.intx_pin(), None);

    // INTC as the device reports it.
    let (mut f, _, _) = assign(nvme(false).intx().u8(0x3d, 3));
    assert_eq!(pin_and_line(&mut f).0, 3);
    assert_eq!(f.intx_pin(), Some(3));
}

#[test]
fn msi_functions_show_a_pin_even_without_host_intx() {
    // A GeForce-like MSI-only function that reports no pin, on a host without INTx
    // (DriverKit): INTA is shown so that the guest's irq is non-zero (nvidia.ko's probe
    // fails without one before it tries MSI), but it is not delivered.
    let (mut f, _, _) = assign(&msi_only(MSI_64BIT));
    assert_eq!(pin_and_line(&mut f), (1, 0));
    assert_eq!(f.intx_pin(), Some(1));
    assert!(!f.intx_delivered());
    assert!(f.has_interrupts(), "through MSI");
    // The device's own pin when it reports one.
    let (mut f, _, _) = assign(msi_only(MSI_64BIT).u8(0x3d, 2));
    assert_eq!(pin_and_line(&mut f).0, 2);
    // A GPU with MSI and MSI-X keeps its pin, delivered only where the host has INTx.
    let (mut f, _, _) = assign(&gpu());
    assert_eq!((pin_and_line(&mut f).0, f.intx_delivered()), (1, false));
    let (mut f, _, _) = assign(gpu().intx());
    assert_eq!((pin_and_line(&mut f).0, f.intx_delivered()), (1, true));
    // The shown pin survives a reset and ignores writes.
    f.config_write(0x3d, &[0]);
    f.reset();
    assert_eq!(pin_and_line(&mut f).0, 1);
    // An invalid pin value is not shown, MSI or not.
    let (mut f, _, _) = assign(msi_only(MSI_64BIT).u8(0x3d, 9));
    assert_eq!((pin_and_line(&mut f).0, f.intx_pin()), (0, None));
}

#[test]
fn devices_without_a_valid_pin_offer_none() {
    for pin in [0, 5, 0xff] {
        let (mut f, _, _) = assign(nvme(false).intx().u8(0x3d, pin));
        assert_eq!(pin_and_line(&mut f).0, 0, "device pin {pin:#x}");
        assert_eq!(f.intx_pin(), None);
    }
}

#[test]
fn interrupt_line_is_virtual_and_pin_read_only() {
    let (mut f, fake, _) = assign(nvme(false).intx());
    f.config_write(0x3c, &[0x2a]);
    f.config_write(0x3d, &[0x04]);
    assert_eq!(pin_and_line(&mut f), (1, 0x2a));
    // A dword write (Max_Lat/Min_Gnt are read-only 0 on PCIe).
    f.config_write(0x3c, &0xffff_ff07u32.to_le_bytes());
    assert_eq!(read32(&mut f, 0x3c), 0x0000_0107);
    let log = fake.log.lock().unwrap();
    assert!(log.config_writes.is_empty(), "{:?}", log.config_writes);
    assert_eq!(log.config[0x3c], 0, "the device's line is untouched");
    drop(log);
    // Reset keeps the pin and clears the line.
    f.reset();
    assert_eq!(pin_and_line(&mut f), (1, 0));
}

#[test]
fn interrupt_disable_reaches_the_device() {
    let (mut f, fake, _) = assign(nvme(false).intx());
    fake.log.lock().unwrap().config[0x04] = 0x02; // memory decoding set by the host
    write16(&mut f, 0x04, 0x0406);
    assert_eq!(fake.log.lock().unwrap().config_writes, vec![(0x04, vec![0x06, 0x04])]);
    assert_eq!(read16(&mut f, 0x04), 0x0406);
    write16(&mut f, 0x04, 0x0006);
    assert_eq!(fake.log.lock().unwrap().config_writes[1], (0x04, vec![0x06, 0x00]));
    // A byte write of the high half alone.
    f.config_write(0x05, &[0x04]);
    assert_eq!(fake.log.lock().unwrap().config_writes[2], (0x05, vec![0x04]));
    assert_eq!(read16(&mut f, 0x04) & 0x0400, 0x0400);
}

#[test]
fn interrupt_status_comes_from_the_device() {
    let (mut f, fake, _) = assign(nvme(false).intx());
    assert_eq!(read16(&mut f, 0x06) & 0x08, 0);
    fake.log.lock().unwrap().config[0x06] |= 0x08;
    assert_eq!(read16(&mut f, 0x06) & 0x08, 0x08);
    assert_eq!(read32(&mut f, 0x04) >> 16 & 0x08, 0x08, "in a dword read too");
    // Read-only: a guest write does not reach the device.
    write16(&mut f, 0x06, 0x0008);
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
    fake.log.lock().unwrap().config[0x06] &= !0x08;
    assert_eq!(read16(&mut f, 0x06) & 0x08, 0);
}

#[test]
fn an_intx_only_device_has_interrupts() {
    let mut b = ConfigBuilder::new(0x1234, 0x5678, 0x0c0330, 0);
    b.bar(0, 0xfe00_0000, region(0x1000)).u8(0x3d, 2);
    let (f, _, _) = assign(&b);
    assert!(!f.has_interrupts(), "no MSI, MSI-X or deliverable INTx");
    assert_eq!(f.intx_pin(), None, "no MSI: a pin that never fires is not shown");
    let (f, _, _) = assign(b.intx());
    assert!(f.has_interrupts());
    assert_eq!(f.intx_pin(), Some(2));
    assert!(f.intx_delivered());
}

#[test]
fn pin_names() {
    assert_eq!(intx_pin_name(1), "INTA");
    assert_eq!(intx_pin_name(4), "INTD");
    assert_eq!(intx_pin_name(0), "pin 0");
}
