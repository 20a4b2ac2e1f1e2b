//! The in-kernel GIC functions (macOS 15 and later), resolved at run time.
//!
//! Linked directly, these symbols would stop Aperture from loading at all on macOS 13 and 14
//! (dyld: symbol not found). Resolved with `dlsym`, their absence becomes the clear error
//! "macOS 15 or later is needed". The Hypervisor framework itself is loaded already: the rest
//! of the backend links against it.

use std::ffi::c_void;

use applevisor_sys as hv;

type ConfigCreate = unsafe extern "C" fn() -> hv::hv_gic_config_t;
type ConfigSetAddr = unsafe extern "C" fn(hv::hv_gic_config_t, hv::hv_ipa_t) -> hv::hv_return_t;
type ConfigSetRange = unsafe extern "C" fn(hv::hv_gic_config_t, u32, u32) -> hv::hv_return_t;
type Create = unsafe extern "C" fn(hv::hv_gic_config_t) -> hv::hv_return_t;
type SetSpi = unsafe extern "C" fn(u32, bool) -> hv::hv_return_t;
type SendMsi = unsafe extern "C" fn(hv::hv_ipa_t, u32) -> hv::hv_return_t;
type GetSize = unsafe extern "C" fn(*mut usize) -> hv::hv_return_t;
type GetRange = unsafe extern "C" fn(*mut u32, *mut u32) -> hv::hv_return_t;
type Reset = unsafe extern "C" fn() -> hv::hv_return_t;

// The signatures above are the bindings' declarations, checked by the compiler. Constants are
// not code: they put no reference to the symbols into the binary.
const _: ConfigCreate = hv::hv_gic_config_create;
const _: ConfigSetAddr = hv::hv_gic_config_set_distributor_base;
const _: ConfigSetAddr = hv::hv_gic_config_set_redistributor_base;
const _: ConfigSetAddr = hv::hv_gic_config_set_msi_region_base;
const _: ConfigSetRange = hv::hv_gic_config_set_msi_interrupt_range;
const _: Create = hv::hv_gic_create;
const _: SetSpi = hv::hv_gic_set_spi;
const _: SendMsi = hv::hv_gic_send_msi;
const _: GetSize = hv::hv_gic_get_distributor_size;
const _: GetSize = hv::hv_gic_get_distributor_base_alignment;
const _: GetSize = hv::hv_gic_get_redistributor_region_size;
const _: GetSize = hv::hv_gic_get_redistributor_base_alignment;
const _: GetSize = hv::hv_gic_get_msi_region_size;
const _: GetSize = hv::hv_gic_get_msi_region_base_alignment;
const _: GetRange = hv::hv_gic_get_spi_interrupt_range;
const _: Reset = hv::hv_gic_reset;

/// Looks up a symbol in the loaded images and types it as the function pointer `$ty`.
macro_rules! resolve {
    ($name:literal, $ty:ty) => {{
        // SAFETY: dlsym with RTLD_DEFAULT only searches the loaded images; the name is a
        // NUL-terminated literal.
        let ptr: *mut c_void = unsafe { libc::dlsym(libc::RTLD_DEFAULT, $name.as_ptr()) };
        if ptr.is_null() {
            None
        } else {
            // SAFETY: the symbol is Hypervisor.framework's function of that name, whose C
            // signature `$ty` matches (checked against the bindings above); a function pointer
            // has the size of a data pointer on arm64 macOS.
            Some(unsafe { std::mem::transmute::<*mut c_void, $ty>(ptr) })
        }
    }};
}

/// The GIC functions of Hypervisor.framework.
#[derive(Debug, Clone, Copy)]
pub struct GicApi {
    pub config_create: ConfigCreate,
    pub config_set_distributor_base: ConfigSetAddr,
    pub config_set_redistributor_base: ConfigSetAddr,
    pub config_set_msi_region_base: ConfigSetAddr,
    pub config_set_msi_interrupt_range: ConfigSetRange,
    pub create: Create,
    pub set_spi: SetSpi,
    pub send_msi: SendMsi,
    pub distributor_size: GetSize,
    pub distributor_base_alignment: GetSize,
    pub redistributor_region_size: GetSize,
    pub redistributor_base_alignment: GetSize,
    pub msi_region_size: GetSize,
    pub msi_region_base_alignment: GetSize,
    pub spi_interrupt_range: GetRange,
    /// `hv_gic_reset` (macOS 15, like the rest): distributor, redistributors and the
    /// device's internal state (the MSI frame included) back to boot state.
    pub reset: Reset,
}

impl GicApi {
    /// The functions, or `None` when this macOS has no in-kernel GIC (before macOS 15).
    pub fn resolve() -> Option<Self> {
        Some(Self {
            config_create: resolve!(c"hv_gic_config_create", ConfigCreate)?,
            config_set_distributor_base: resolve!(
                c"hv_gic_config_set_distributor_base",
                ConfigSetAddr
            )?,
            config_set_redistributor_base: resolve!(
                c"hv_gic_config_set_redistributor_base",
                ConfigSetAddr
            )?,
            config_set_msi_region_base: resolve!(
                c"hv_gic_config_set_msi_region_base",
                ConfigSetAddr
            )?,
            config_set_msi_interrupt_range: resolve!(
                c"hv_gic_config_set_msi_interrupt_range",
                ConfigSetRange
            )?,
            create: resolve!(c"hv_gic_create", Create)?,
            set_spi: resolve!(c"hv_gic_set_spi", SetSpi)?,
            send_msi: resolve!(c"hv_gic_send_msi", SendMsi)?,
            distributor_size: resolve!(c"hv_gic_get_distributor_size", GetSize)?,
            distributor_base_alignment: resolve!(
                c"hv_gic_get_distributor_base_alignment",
                GetSize
            )?,
            redistributor_region_size: resolve!(c"hv_gic_get_redistributor_region_size", GetSize)?,
            redistributor_base_alignment: resolve!(
                c"hv_gic_get_redistributor_base_alignment",
                GetSize
            )?,
            msi_region_size: resolve!(c"hv_gic_get_msi_region_size", GetSize)?,
            msi_region_base_alignment: resolve!(c"hv_gic_get_msi_region_base_alignment", GetSize)?,
            spi_interrupt_range: resolve!(c"hv_gic_get_spi_interrupt_range", GetRange)?,
            reset: resolve!(c"hv_gic_reset", Reset)?,
        })
    }
}
