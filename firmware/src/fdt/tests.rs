use super::*;
use ::fdt::Fdt;

fn config(cpus: usize) -> FdtConfig {
    FdtConfig {
        cpu_mpidrs: (0..cpus as u64).map(|i| ((i / 16) << 8) | (i % 16)).collect(),
        ram: (0x4000_0000, 0x1000_0000),
        cmdline: "console=ttyAMA0 panic=-1".into(),
        initrd: Some((0x4f00_0000, 0x20_0000)),
        rng_seed: [7; 64],
        kaslr_seed: Some(0x1234_5678_9abc_def0),
        gic: GicConfig {
            dist: (0x0800_0000, 0x1_0000),
            redists: (0x080a_0000, 0x2_0000 * cpus as u64),
            its: Some((0x0808_0000, 0x2_0000)),
            msi_frame: None,
        },
        timer_ppis: [13, 14, 11, 10],
        uart: MmioDeviceNode {
            base: 0x0900_0000,
            size: 0x1000,
            spi: Some(1),
            periph_id: Some(0x0014_1011),
        },
        rtc: MmioDeviceNode { base: 0x0901_0000, size: 0x1000, spi: Some(2), periph_id: None },
        test_exit: MmioDeviceNode { base: 0x0902_0000, size: 0x1000, spi: None, periph_id: None },
        pci: Some(PciHostNode {
            ecam: (0x3000_0000, 0x1000_0000),
            mmio32: (0x1000_0000, 0x2000_0000),
            mmio64: (0x80_0000_0000, 0x80_0000_0000),
            intx_spis: None,
        }),
        power_key: Some(PowerKeyNode {
            gpio: MmioDeviceNode {
                base: 0x0903_0000,
                size: 0x1000,
                spi: Some(3),
                periph_id: Some(0x0004_1061),
            },
            line: 3,
        }),
    }
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect()
}

fn u64s(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect()
}

fn prop<'a>(fdt: &'a Fdt, path: &str, name: &str) -> &'a [u8] {
    fdt.find_node(path)
        .unwrap_or_else(|| panic!("no node {path}"))
        .property(name)
        .unwrap_or_else(|| panic!("no {name} in {path}"))
        .value
}

#[test]
fn memory_and_chosen() {
    let blob = create_fdt(&config(1)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let regions: Vec<_> = fdt.memory().regions().collect();
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].starting_address as u64, 0x4000_0000);
    assert_eq!(regions[0].size, Some(0x1000_0000));
    assert_eq!(fdt.chosen().bootargs(), Some("console=ttyAMA0 panic=-1"));
    assert_eq!(u64s(prop(&fdt, "/chosen", "linux,initrd-start")), [0x4f00_0000]);
    assert_eq!(u64s(prop(&fdt, "/chosen", "linux,initrd-end")), [0x4f20_0000]);
    assert_eq!(prop(&fdt, "/chosen", "rng-seed"), &[7u8; 64]);
    assert_eq!(u64s(prop(&fdt, "/chosen", "kaslr-seed")), [0x1234_5678_9abc_def0]);
    // stdout-path names a node that exists and is the UART.
    let stdout = fdt.chosen().stdout().unwrap();
    assert_eq!(stdout.name, "pl011@9000000");
    assert!(fdt.find_node("/pl011@9000000").is_some());
}

#[test]
fn no_kaslr_seed_leaves_the_property_out() {
    let mut cfg = config(1);
    cfg.kaslr_seed = None;
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let chosen = fdt.find_node("/chosen").unwrap();
    assert!(chosen.property("kaslr-seed").is_none());
    assert_eq!(prop(&fdt, "/chosen", "rng-seed"), &[7u8; 64]);
}

#[test]
fn no_initrd_no_initrd_properties() {
    let mut cfg = config(1);
    cfg.initrd = None;
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert!(fdt.find_node("/chosen").unwrap().property("linux,initrd-start").is_none());
}

#[test]
fn cpus_match_mpidrs() {
    for count in [1usize, 4, 17] {
        let blob = create_fdt(&config(count)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let regs: Vec<u64> = fdt
            .find_all_nodes("/cpus/cpu")
            .map(|cpu| u64s(cpu.property("reg").unwrap().value)[0])
            .collect();
        assert_eq!(regs.len(), count);
        assert_eq!(regs, config(count).cpu_mpidrs);
        let cpu = fdt.find_node("/cpus/cpu@0").unwrap();
        assert_eq!(cpu.property("enable-method").unwrap().as_str(), Some("psci"));
    }
    // vCPU 16 sits in Aff1 cluster 1.
    let blob = create_fdt(&config(17)).unwrap();
    assert!(Fdt::new(&blob).unwrap().find_node("/cpus/cpu@100").is_some());
}

#[test]
fn cpus_with_aff1_and_aff3() {
    let mut cfg = config(4);
    cfg.cpu_mpidrs = vec![0, 1, 0x100, 0x1_0000_0101];
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let cpus = fdt.find_node("/cpus").unwrap();
    assert_eq!(u32s(cpus.property("#address-cells").unwrap().value), [2]);
    assert_eq!(u32s(cpus.property("#size-cells").unwrap().value), [0]);
    assert_eq!(fdt.cpus().count(), 4);
    for (name, mpidr) in [("cpu@100", 0x100u64), ("cpu@100000101", 0x1_0000_0101)] {
        let cpu = fdt.find_node(&format!("/cpus/{name}")).unwrap();
        assert_eq!(u64s(cpu.property("reg").unwrap().value), [mpidr]);
        assert_eq!(cpu.compatible().unwrap().first(), "arm,arm-v8");
        assert_eq!(cpu.property("device_type").unwrap().as_str(), Some("cpu"));
    }
}

#[test]
fn psci_uses_hvc() {
    let blob = create_fdt(&config(2)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let psci = fdt.find_node("/psci").unwrap();
    assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
    let compatible: Vec<_> = psci.compatible().unwrap().all().collect();
    assert_eq!(compatible, ["arm,psci-1.0", "arm,psci-0.2"]);
}

#[test]
fn root_node() {
    let blob = create_fdt(&config(1)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let root = fdt.root();
    assert!(root.compatible().all().any(|c| c == "linux,dummy-virt"));
    assert_eq!(root.model(), "Aperture");
    assert_eq!(u32s(prop(&fdt, "/", "#address-cells")), [2]);
    assert_eq!(u32s(prop(&fdt, "/", "#size-cells")), [2]);
}

#[test]
fn gic_and_its() {
    let blob = create_fdt(&config(2)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let gic = fdt.find_node("/intc@8000000").unwrap();
    assert_eq!(gic.compatible().unwrap().first(), "arm,gic-v3");
    assert_eq!(
        u64s(prop(&fdt, "/intc@8000000", "reg")),
        [0x0800_0000, 0x1_0000, 0x080a_0000, 0x4_0000]
    );
    assert_eq!(u32s(prop(&fdt, "/", "interrupt-parent")), [PHANDLE_GIC]);
    assert_eq!(fdt.find_phandle(PHANDLE_GIC).unwrap().name, "intc@8000000");
    let its = fdt.find_phandle(PHANDLE_ITS).unwrap();
    assert_eq!(its.compatible().unwrap().first(), "arm,gic-v3-its");
    assert!(its.property("msi-controller").is_some());
    assert_eq!(u32s(its.property("#msi-cells").unwrap().value), [1]);
    assert_eq!(u64s(its.property("reg").unwrap().value), [0x0808_0000, 0x2_0000]);
    assert_eq!(u32s(prop(&fdt, "/intc@8000000", "interrupts")), [1, 9, 4]);
    assert_eq!(u32s(prop(&fdt, "/intc@8000000", "#interrupt-cells")), [3]);
    assert!(gic.property("interrupt-controller").is_some());

    let mut cfg = config(1);
    cfg.gic.its = None;
    cfg.gic.msi_frame = Some((0x0802_0000, 0x1_0000, 64, 64));
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert!(fdt.find_phandle(PHANDLE_ITS).is_none());
    let v2m = fdt.find_phandle(PHANDLE_MSI_FRAME).unwrap();
    assert_eq!(v2m.compatible().unwrap().first(), "arm,gic-v2m-frame");
    assert_eq!(u32s(v2m.property("arm,msi-base-spi").unwrap().value), [64]);
    assert_eq!(u32s(v2m.property("arm,msi-num-spis").unwrap().value), [64]);
    assert!(v2m.property("msi-controller").is_some());

    cfg.gic.msi_frame = None;
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let gic = fdt.find_node("/intc@8000000").unwrap();
    assert_eq!(gic.children().count(), 0);
}

#[test]
fn timer_interrupts() {
    let blob = create_fdt(&config(1)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(u32s(prop(&fdt, "/timer", "interrupts")), [1, 13, 8, 1, 14, 8, 1, 11, 8, 1, 10, 8]);
}

#[test]
fn primecell_devices_and_clock() {
    let blob = create_fdt(&config(1)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(u64s(prop(&fdt, "/pl011@9000000", "reg")), [0x0900_0000, 0x1000]);
    assert_eq!(u32s(prop(&fdt, "/pl011@9000000", "interrupts")), [0, 1, 4]);
    // PrimeCell IDs from the tree: Linux reads no ID registers (none given: no property).
    assert_eq!(u32s(prop(&fdt, "/pl011@9000000", "arm,primecell-periphid")), [0x0014_1011]);
    assert_eq!(u32s(prop(&fdt, "/pl061@9030000", "arm,primecell-periphid")), [0x0004_1061]);
    let rtc_node = fdt.find_node("/pl031@9010000").unwrap();
    assert!(rtc_node.property("arm,primecell-periphid").is_none());
    let clocks = u32s(prop(&fdt, "/pl011@9000000", "clocks"));
    assert_eq!(clocks, [PHANDLE_CLOCK, PHANDLE_CLOCK]);
    let clock = fdt.find_phandle(clocks[0]).unwrap();
    assert_eq!(clock.compatible().unwrap().first(), "fixed-clock");
    assert_eq!(u32s(clock.property("clock-frequency").unwrap().value), [24_000_000]);
    assert_eq!(u32s(prop(&fdt, "/pl031@9010000", "interrupts")), [0, 2, 4]);
    let rtc = fdt.find_node("/pl031@9010000").unwrap();
    assert!(rtc.compatible().unwrap().all().any(|c| c == "arm,primecell"));
    let exit = fdt.find_node("/test-exit@9020000").unwrap();
    assert_eq!(exit.compatible().unwrap().first(), "aperture,test-exit");
    assert!(exit.property("interrupts").is_none());
}

#[test]
fn rejects_bad_input() {
    let mut cfg = config(1);
    cfg.cpu_mpidrs.clear();
    assert!(matches!(create_fdt(&cfg), Err(FdtError::NoCpus)));
    let mut cfg = config(1);
    cfg.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
    let err = create_fdt(&cfg).unwrap_err();
    assert!(err.to_string().contains("--cmdline"), "{err}");
    assert!(err.to_string().contains("COMMAND_LINE_SIZE"), "{err}");
    cfg.cmdline = "x".repeat(CMDLINE_MAX_SIZE - 1);
    assert!(create_fdt(&cfg).is_ok());
    cfg.cmdline = "console=ttyAMA0\0 quiet".into();
    assert!(matches!(create_fdt(&cfg), Err(FdtError::CmdlineHasNul(15))));

    let mut cfg = config(1);
    cfg.initrd = Some((u64::MAX - 0xfff, 0x2000));
    assert!(matches!(create_fdt(&cfg), Err(FdtError::InitrdOutOfRange { .. })));
}

#[test]
fn rejects_blob_over_2mib() {
    // About 100 bytes per cpu node: 30000 of them cannot fit in 2 MiB.
    let mut cfg = config(1);
    cfg.cpu_mpidrs = (0..30_000).collect();
    let err = create_fdt(&cfg).unwrap_err();
    assert!(matches!(err, FdtError::TooLarge(len) if len > FDT_MAX_SIZE), "{err}");
    assert!(err.to_string().contains("--cpus"), "{err}");
}

#[test]
fn pci_host_bridge() {
    let blob = create_fdt(&config(1)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let pci = fdt.find_node("/pcie@30000000").unwrap();
    assert_eq!(pci.compatible().unwrap().first(), "pci-host-ecam-generic");
    assert_eq!(u64s(prop(&fdt, "/pcie@30000000", "reg")), [0x3000_0000, 0x1000_0000]);
    assert_eq!(u32s(prop(&fdt, "/pcie@30000000", "bus-range")), [0, 255]);
    assert_eq!(
        u32s(prop(&fdt, "/pcie@30000000", "ranges")),
        [
            0x0200_0000,
            0,
            0x1000_0000,
            0,
            0x1000_0000,
            0,
            0x2000_0000, //
            0x4300_0000,
            0x80,
            0,
            0x80,
            0,
            0x80,
            0,
        ]
    );
    assert_eq!(u32s(prop(&fdt, "/pcie@30000000", "msi-map")), [0, PHANDLE_ITS, 0, 0x1_0000]);
    // The ITS takes a device-id cell, so a bare msi-parent to it would be malformed.
    assert!(pci.property("msi-parent").is_none());
    assert!(pci.property("dma-coherent").is_some());
    assert!(pci.property("interrupt-map").is_none());

    // Hypervisor.framework: MSIs go to the v2m frame.
    let mut cfg = config(1);
    cfg.gic.its = None;
    cfg.gic.msi_frame = Some((0x0802_0000, 0x1_0000, 64, 64));
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let msi_map = u32s(prop(&fdt, "/pcie@30000000", "msi-map"));
    assert_eq!(msi_map, [0, PHANDLE_MSI_FRAME, 0, 0x1_0000]);
    assert!(fdt.find_phandle(msi_map[1]).is_some());

    cfg.gic.msi_frame = None;
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert!(fdt.find_node("/pcie@30000000").unwrap().property("msi-map").is_none());
    cfg.pci = None;
    let blob = create_fdt(&cfg).unwrap();
    assert!(Fdt::new(&blob).unwrap().find_node("/pcie@30000000").is_none());
}

#[test]
fn pci_bus_range_follows_ecam_size() {
    let mut cfg = config(1);
    cfg.pci = cfg.pci.map(|pci| PciHostNode { ecam: (0x3000_0000, 16 << 20), ..pci });
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert_eq!(u32s(prop(&fdt, "/pcie@30000000", "bus-range")), [0, 15]);
}

#[test]
fn pci_intx_routing() {
    let mut cfg = config(1);
    cfg.pci = cfg.pci.map(|pci| PciHostNode { intx_spis: Some([16, 17, 18, 19]), ..pci });
    let blob = create_fdt(&cfg).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let mask = u32s(prop(&fdt, "/pcie@30000000", "interrupt-map-mask"));
    assert_eq!(mask, [0x1800, 0, 0, 7]);
    let map = u32s(prop(&fdt, "/pcie@30000000", "interrupt-map"));
    // 3 address + 1 pin + phandle + 2 GIC address + 3 GIC specifier cells per entry.
    let entries: Vec<&[u32]> = map.chunks_exact(10).collect();
    assert_eq!(entries.len(), 16);
    let spi_of = |slot: u32, pin: u32| {
        let entry = entries.iter().find(|e| e[0] == slot << 11 && e[3] == pin).unwrap();
        assert_eq!(entry[4], PHANDLE_GIC);
        assert_eq!([entry[5], entry[6], entry[7], entry[9]], [0, 0, 0, 4]);
        entry[8]
    };
    assert_eq!(spi_of(0, 1), 16);
    assert_eq!(spi_of(0, 4), 19);
    assert_eq!(spi_of(1, 1), 17);
    assert_eq!(spi_of(3, 2), 16);
    assert_eq!(u32s(prop(&fdt, "/intc@8000000", "#address-cells")), [2]);
}

#[test]
fn power_key_is_a_gpio_key_on_the_pl061() {
    let blob = create_fdt(&config(1)).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    let gpio = "/pl061@9030000";
    assert_eq!(prop(&fdt, gpio, "compatible"), b"arm,pl061\0arm,primecell\0");
    assert_eq!(u64s(prop(&fdt, gpio, "reg")), [0x0903_0000, 0x1000]);
    assert_eq!(u32s(prop(&fdt, gpio, "interrupts")), [0, 3, 4]);
    assert_eq!(u32s(prop(&fdt, gpio, "#gpio-cells")), [2]);
    assert!(fdt.find_node(gpio).unwrap().property("gpio-controller").is_some());
    assert_eq!(u32s(prop(&fdt, gpio, "phandle")), [PHANDLE_GPIO]);
    assert_eq!(u32s(prop(&fdt, gpio, "clocks")), [PHANDLE_CLOCK]);
    assert_eq!(prop(&fdt, "/gpio-keys", "compatible"), b"gpio-keys\0");
    let key = "/gpio-keys/poweroff";
    assert_eq!(u32s(prop(&fdt, key, "linux,code")), [116]);
    assert_eq!(u32s(prop(&fdt, key, "gpios")), [PHANDLE_GPIO, 3, 0]);

    let mut without = config(1);
    without.power_key = None;
    let blob = create_fdt(&without).unwrap();
    let fdt = Fdt::new(&blob).unwrap();
    assert!(fdt.find_node("/gpio-keys").is_none());
    assert!(fdt.find_node(gpio).is_none());
}
