use super::*;
use crate::host::fake::FakeTree;
use crate::host::pci::BarKind;

const NVME: &str = "0000:01:00.0";
const GPU: &str = "0000:02:00.0";
const AUDIO: &str = "0000:02:00.1";
const PORT: &str = "0000:00:01.0";

const PCI_IDS: &str = "\
1b36  Red Hat, Inc.
\t0010  QEMU NVM Express Controller
10de  NVIDIA Corporation
\t2684  AD102 [GeForce RTX 4090]
";

/// NVMe on vfio-pci in group 3 (BAR0 16K, 64-bit), a GPU (bound to nouveau, BAR0 16M 32-bit,
/// BAR1 16G 64-bit prefetchable, BAR5 I/O 128, ROM 512K) and its audio function on
/// snd_hda_intel in group 7, and a root port; VFIO loaded.
fn tree() -> FakeTree {
    let tree = FakeTree::new();
    tree.vfio_host();
    tree.device(NVME, 0x1b36, 0x0010, 0x010802).group(NVME, 3).bind(NVME, "vfio-pci");
    tree.file(
        &format!("sys/bus/pci/devices/{NVME}/resource"),
        "0x0000000010000000 0x0000000010003fff 0x0000000000140204\n\
         0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
    );
    tree.device(GPU, 0x10de, 0x2684, 0x030000).group(GPU, 7).bind(GPU, "nouveau");
    tree.file(
        &format!("sys/bus/pci/devices/{GPU}/resource"),
        "0x00000000fb000000 0x00000000fbffffff 0x0000000000040200\n\
         0x0000006000000000 0x00000063ffffffff 0x000000000014220c\n\
         0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
         0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
         0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
         0x000000000000e000 0x000000000000e07f 0x0000000000040101\n\
         0x00000000fc000000 0x00000000fc07ffff 0x0000000000046200\n\
         0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
    );
    tree.device(AUDIO, 0x10de, 0x22ba, 0x040300).group(AUDIO, 7).bind(AUDIO, "snd_hda_intel");
    tree.device(PORT, 0x1b36, 0x000c, 0x060400).group(PORT, 1).bind(PORT, "pcieport");
    tree
}

fn by_address<'a>(devices: &'a [PciDevice], address: &str) -> &'a PciDevice {
    devices.iter().find(|d| d.address.to_string() == address).unwrap()
}

#[test]
fn scans_every_field() {
    let tree = tree();
    tree.file("usr/share/misc/pci.ids", PCI_IDS);
    let devices = scan(&tree.root).unwrap();
    let order: Vec<String> = devices.iter().map(|d| d.address.to_string()).collect();
    assert_eq!(order, [PORT, NVME, GPU, AUDIO]);
    let nvme = by_address(&devices, NVME);
    assert_eq!((nvme.vendor_id, nvme.device_id, nvme.class), (0x1b36, 0x0010, 0x010802));
    assert_eq!(nvme.vendor_name.as_deref(), Some("Red Hat, Inc."));
    assert_eq!(nvme.device_name.as_deref(), Some("QEMU NVM Express Controller"));
    assert_eq!(nvme.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(nvme.iommu_group, Some(3));
    assert_eq!(
        nvme.bars,
        [Bar {
            index: 0,
            kind: BarSpace::Memory(BarKind::Memory64),
            prefetchable: false,
            size: 0x4000
        }]
    );
    assert_eq!(nvme.assignable, Assignable::Yes);
    let gpu = by_address(&devices, GPU);
    assert_eq!(gpu.device_name.as_deref(), Some("AD102 [GeForce RTX 4090]"));
    assert_eq!(
        gpu.bars,
        [
            Bar {
                index: 0,
                kind: BarSpace::Memory(BarKind::Memory32),
                prefetchable: false,
                size: 16 << 20
            },
            Bar {
                index: 1,
                kind: BarSpace::Memory(BarKind::Memory64),
                prefetchable: true,
                size: 16 << 30
            },
            Bar { index: 5, kind: BarSpace::Io, prefetchable: false, size: 128 },
            Bar { index: 6, kind: BarSpace::Rom, prefetchable: false, size: 512 << 10 },
        ]
    );
    let Assignable::No { reason, message } = &gpu.assignable else { panic!("{gpu:?}") };
    assert_eq!(reason, "bound to nouveau, not vfio-pci");
    assert!(message.contains("driver_override"), "{message}");
    let audio = by_address(&devices, AUDIO);
    assert_eq!(
        (audio.vendor_name.as_deref(), audio.device_name.as_deref()),
        (Some("NVIDIA Corporation"), None)
    );
    assert!(audio.bars.is_empty());
    let port = by_address(&devices, PORT);
    assert_eq!(
        port.assignable,
        Assignable::No {
            reason: "bridges cannot be assigned".into(),
            message: "bridges cannot be assigned".into()
        }
    );
}

#[test]
fn assignable_reasons_come_from_the_host_checks() {
    let tree = tree();
    // The GPU on vfio-pci, its audio function still on the host driver: group 7 not viable.
    std::fs::remove_file(tree.path(&format!("sys/bus/pci/devices/{GPU}/driver"))).unwrap();
    tree.bind(GPU, "vfio-pci");
    let devices = scan(&tree.root).unwrap();
    let Assignable::No { reason, message } = &by_address(&devices, GPU).assignable else {
        panic!()
    };
    assert_eq!(
        reason,
        &format!("IOMMU group 7 shared with devices in use: {AUDIO} (snd_hda_intel)")
    );
    assert!(message.contains("is not viable"), "{message}");
    // No IOMMU group; no driver; VFIO not loaded.
    let tree = FakeTree::new();
    tree.vfio_host().device(NVME, 0x1b36, 0x0010, 0x010802).bind(NVME, "vfio-pci");
    tree.device(GPU, 0x10de, 0x2684, 0x030000).group(GPU, 7);
    let devices = scan(&tree.root).unwrap();
    let reason = |d: &PciDevice| match &d.assignable {
        Assignable::No { reason, .. } => reason.clone(),
        Assignable::Yes => "yes".into(),
    };
    assert_eq!(reason(by_address(&devices, NVME)), "no IOMMU group (IOMMU off)");
    assert_eq!(reason(by_address(&devices, GPU)), "no driver, not vfio-pci");
    std::fs::remove_file(tree.path("dev/vfio/vfio")).unwrap();
    let devices = scan(&tree.root).unwrap();
    assert_eq!(reason(&devices[0]), "VFIO not loaded (modprobe vfio-pci)");
}

#[test]
fn class_names_and_resources() {
    for (class, name) in [
        (0x010802, "NVMe"),
        (0x010601, "SATA"),
        (0x020000, "Ethernet"),
        (0x028000, "network"),
        (0x030000, "VGA"),
        (0x030200, "3D"),
        (0x038000, "display"),
        (0x040300, "audio"),
        (0x060000, "host bridge"),
        (0x060400, "PCI bridge"),
        (0x0c0330, "USB"),
        (0x120000, "accelerator"),
        (0xff0000, "other"),
    ] {
        assert_eq!(class_name(class), name, "{class:06x}");
    }
    assert!(parse_resources("").is_empty());
    assert!(parse_resources("garbage\n0x1 0x2\n").is_empty());
}

#[test]
fn missing_sysfs_is_an_error_and_no_pci_ids_means_ids_only() {
    let empty = FakeTree::new();
    let err = scan(&empty.root).unwrap_err();
    assert!(err.to_string().contains("is sysfs mounted"), "{err}");
    let tree = tree();
    let devices = scan(&tree.root).unwrap();
    assert!(devices.iter().all(|d| d.vendor_name.is_none() && d.device_name.is_none()));
    // A function whose ids cannot be read is skipped.
    tree.dir("sys/bus/pci/devices/0000:09:00.0");
    assert_eq!(scan(&tree.root).unwrap().len(), 4);
}

#[test]
fn table_is_aligned_with_names_below() {
    let tree = tree();
    tree.file("usr/share/hwdata/pci.ids", PCI_IDS);
    let text = table(&scan(&tree.root).unwrap());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "ADDRESS       IDS        CLASS              DRIVER         GROUP  BARS                                                            ASSIGNABLE"
    );
    assert_eq!(
        lines[1],
        "0000:00:01.0  1b36:000c  060400 PCI bridge  pcieport       1      -                                                               no: bridges cannot be assigned"
    );
    assert_eq!(lines[2], "              Red Hat, Inc. (device 000c)");
    assert_eq!(
        lines[3],
        "0000:01:00.0  1b36:0010  010802 NVMe        vfio-pci       3      0:mem64 16 KiB                                                  yes"
    );
    assert_eq!(lines[4], "              Red Hat, Inc. QEMU NVM Express Controller");
    assert_eq!(
        lines[5],
        "0000:02:00.0  10de:2684  030000 VGA         nouveau        7      0:mem32 16 MiB, 1:mem64-pf 16 GiB, 5:io 128 bytes, rom 512 KiB  no: bound to nouveau, not vfio-pci"
    );
    assert_eq!(lines[6], "              NVIDIA Corporation AD102 [GeForce RTX 4090]");
    assert!(
        lines[7].starts_with("0000:02:00.1  10de:22ba  040300 audio       snd_hda_intel  7      -")
    );
    assert_eq!(lines.len(), 9);
    assert_eq!(table(&[]), "no PCI devices in /sys/bus/pci/devices\n");
}

#[test]
fn json_has_stable_fields_and_escapes() {
    let tree = tree();
    tree.file("usr/share/misc/pci.ids", PCI_IDS);
    let text = json(&scan(&tree.root).unwrap());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    assert_eq!((lines[0], lines[5]), ("[", "]"));
    assert_eq!(
        lines[2],
        "  {\"address\":\"0000:01:00.0\",\"vendor_id\":\"1b36\",\"device_id\":\"0010\",\
         \"vendor_name\":\"Red Hat, Inc.\",\"device_name\":\"QEMU NVM Express Controller\",\
         \"class\":\"010802\",\"class_name\":\"NVMe\",\"driver\":\"vfio-pci\",\"iommu_group\":3,\
         \"bars\":[{\"index\":0,\"type\":\"mem64\",\"prefetchable\":false,\"size\":16384}],\
         \"assignable\":true,\"reason\":null,\"message\":null},"
    );
    assert!(lines[3].contains(
        "\"bars\":[{\"index\":0,\"type\":\"mem32\",\"prefetchable\":false,\"size\":16777216},\
         {\"index\":1,\"type\":\"mem64\",\"prefetchable\":true,\"size\":17179869184},\
         {\"index\":5,\"type\":\"io\",\"prefetchable\":false,\"size\":128},\
         {\"index\":6,\"type\":\"rom\",\"prefetchable\":false,\"size\":524288}]"
    ));
    assert!(lines[3].contains("\"assignable\":false,\"reason\":\"bound to nouveau, not vfio-pci\""));
    // The full message keeps its line breaks, escaped.
    assert!(lines[3].contains("hand it to VFIO with:\\n  modprobe vfio-pci\\n"), "{}", lines[3]);
    assert!(lines[4].contains("\"device_name\":null") && lines[4].ends_with('}'));
    assert_eq!(json(&[]), "[]\n");
    assert_eq!(render::json_string("a\"b\\c\nd\te\u{1}é"), "\"a\\\"b\\\\c\\nd\\te\\u0001é\"");
}
