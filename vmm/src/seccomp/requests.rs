//! The ioctl request numbers the allowlists name, encoded as linux/kvm.h and linux/vfio.h
//! define them (the generic `_IOC` encoding, the same on x86_64 and arm64).

#![allow(missing_docs)]

use kvm_bindings::{
    kvm_device_attr, kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqfd, kvm_msi,
    kvm_one_reg, kvm_userspace_memory_region, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_userspace_memory_region);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_one_reg);
ioctl_iow_nr!(KVM_SET_ONE_REG, KVMIO, 0xac, kvm_one_reg);
/// arm64's `struct kvm_vcpu_init` (kvm_bindings has it only on arm64; the filter is built and
/// tested on every host): its size is what the request number encodes.
#[allow(dead_code)]
#[repr(C)]
struct KvmVcpuInit {
    target: u32,
    features: [u32; 7],
}
ioctl_iow_nr!(KVM_ARM_VCPU_INIT, KVMIO, 0xae, KvmVcpuInit);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);

/// linux/vfio.h: `VFIO_TYPE` (';') and `VFIO_BASE`, as passthrough/src/vfio/ioctls.rs.
const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);
// On a device fd; the same numbers as VFIO_IOMMU_GET_INFO and VFIO_IOMMU_MAP_DMA on a
// container fd.
ioctl_io_nr!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_TYPE, VFIO_BASE + 12);
ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, VFIO_TYPE, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE, VFIO_BASE + 14);

/// Terminal attributes: `tcgetattr` (and `isatty`), `tcsetattr(TCSANOW)`.
pub const TCGETS: u64 = libc::TCGETS;
pub const TCSETS: u64 = libc::TCSETS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // Values from linux/kvm.h and linux/vfio.h as the kernel builds them on x86_64 and
        // arm64 (strace prints the same numbers).
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_IRQ_LINE(), 0x4008_ae61);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_SIGNAL_MSI(), 0x4020_aea5);
        assert_eq!(KVM_GET_ONE_REG(), 0x4010_aeab);
        assert_eq!(KVM_SET_ONE_REG(), 0x4010_aeac);
        assert_eq!(KVM_ARM_VCPU_INIT(), 0x4020_aeae);
        assert_eq!(KVM_SET_DEVICE_ATTR(), 0x4018_aee1);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(), 0x3b70);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET(), 0x3b71);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
        assert_eq!((TCGETS, TCSETS), (0x5401, 0x5402));
    }
}
