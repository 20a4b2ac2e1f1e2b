//! The rig's GPU-like stand-in: QEMU's `edu` (MSI with one vector, no PCIe capability, no
//! FLR, a DMA engine that drops address bits above its `dma_mask`, set to 40 bits like a
//! Turing GPU's) as function 0 and an `ich9-intel-hda` (a GPU's HDMI audio) as function 1
//! of one slot behind an L1 root port of its own, after the NVMe controllers' (bus 3, so
//! their BDFs and IOMMU groups stay as they were).

/// Slot of the L1 root port the edu and the audio function sit behind (`0000:00:03.0`).
pub const EDU_ROOT_PORT: u8 = 3;
/// The edu's DMA mask: 2^40 - 1.
pub const EDU_DMA_MASK: u64 = (1 << 40) - 1;

/// Shell helpers for case scripts, after `NVME_PRELUDE` (they use its `dev_behind`):
/// `$E` and `$H`, the L1 BDFs of the edu (function 0) and of the audio function (1).
pub const EDU_PRELUDE: &str = r#"
E=$(dev_behind 03 | grep '\.0$') H=$(dev_behind 03 | grep '\.1$')
"#;

/// L1's QEMU arguments for the stand-in: a root port, the edu (multi-function) and the
/// audio function in its slot.
pub fn edu_qemu_args() -> Vec<String> {
    let slot = EDU_ROOT_PORT;
    [
        "-device".to_string(),
        format!("pcie-root-port,id=rpgpu,bus=pcie.0,addr={slot:#x},chassis={slot},slot={slot}"),
        "-device".to_string(),
        format!("edu,bus=rpgpu,addr=00.0,multifunction=on,dma_mask={EDU_DMA_MASK}"),
        "-device".to_string(),
        "ich9-intel-hda,id=gpuhda,bus=rpgpu,addr=00.1".to_string(),
        // An output codec, as HDMI audio has: without a codec snd_hda_intel gives up.
        "-audiodev".to_string(),
        "none,id=gpusnd".to_string(),
        "-device".to_string(),
        "hda-output,bus=gpuhda.0,audiodev=gpusnd".to_string(),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_is_one_slot_behind_its_own_root_port() {
        let args = edu_qemu_args().join(" ");
        assert!(args.contains("pcie-root-port,id=rpgpu,bus=pcie.0,addr=0x3,chassis=3,slot=3"));
        assert!(args.contains("edu,bus=rpgpu,addr=00.0,multifunction=on,dma_mask=1099511627775"));
        assert!(args.contains("ich9-intel-hda,id=gpuhda,bus=rpgpu,addr=00.1"));
        assert!(args.contains("hda-output,bus=gpuhda.0,audiodev=gpusnd"));
        assert!(EDU_PRELUDE.contains(&format!("dev_behind {EDU_ROOT_PORT:02x}")));
    }
}
