//! vCPU register access: typed wrappers over `hv_vcpu_{get,set}_{reg,sys_reg}` and the
//! [`VcpuRegs`] adapter the portable exit handlers of `arch` work through.

use std::cell::RefCell;

use applevisor_sys::{
    hv_reg_t, hv_sys_reg_t, hv_vcpu_get_reg, hv_vcpu_get_sys_reg, hv_vcpu_set_reg,
    hv_vcpu_set_sys_reg, hv_vcpu_t,
};
use arch::vcpu_regs::VcpuRegs;

use crate::hypervisor::hvf::status;
use crate::hypervisor::{HypervisorError, Result};

/// X0..X30 in register-number order.
const X: [hv_reg_t; 31] = {
    use hv_reg_t::*;
    [
        X0, X1, X2, X3, X4, X5, X6, X7, X8, X9, X10, X11, X12, X13, X14, X15, X16, X17, X18, X19,
        X20, X21, X22, X23, X24, X25, X26, X27, X28, X29, X30,
    ]
};

/// General-purpose register Xn, `n` in 0..=30.
pub fn x(n: u8) -> Option<hv_reg_t> {
    X.get(usize::from(n)).copied()
}

/// Reads a core register of `vcpu` (on its thread).
pub fn get(vcpu: hv_vcpu_t, reg: hv_reg_t) -> Result<u64> {
    let mut value = 0;
    // SAFETY: `value` is a valid out-pointer; HVF checks the vCPU id and the calling thread.
    let ret = unsafe { hv_vcpu_get_reg(vcpu, reg, &mut value) };
    status::check(ret, || format!("reading {reg:?} of vCPU {vcpu}"))?;
    Ok(value)
}

/// Writes a core register of `vcpu` (on its thread).
pub fn set(vcpu: hv_vcpu_t, reg: hv_reg_t, value: u64) -> Result<()> {
    // SAFETY: plain values; HVF checks the vCPU id and the calling thread.
    let ret = unsafe { hv_vcpu_set_reg(vcpu, reg, value) };
    status::check(ret, || format!("setting {reg:?} of vCPU {vcpu}"))
}

/// Reads a system register of `vcpu` (on its thread).
pub fn get_sys(vcpu: hv_vcpu_t, reg: hv_sys_reg_t) -> Result<u64> {
    let mut value = 0;
    // SAFETY: `value` is a valid out-pointer; HVF checks the vCPU id and the calling thread.
    let ret = unsafe { hv_vcpu_get_sys_reg(vcpu, reg, &mut value) };
    status::check(ret, || format!("reading {reg:?} of vCPU {vcpu}"))?;
    Ok(value)
}

/// Writes a system register of `vcpu` (on its thread).
pub fn set_sys(vcpu: hv_vcpu_t, reg: hv_sys_reg_t, value: u64) -> Result<()> {
    // SAFETY: plain values; HVF checks the vCPU id and the calling thread.
    let ret = unsafe { hv_vcpu_set_sys_reg(vcpu, reg, value) };
    status::check(ret, || format!("setting {reg:?} of vCPU {vcpu} to {value:#x}"))
}

/// [`VcpuRegs`] over a live vCPU. The trait's accessors cannot fail, so the first failure is
/// kept and reported by [`Regs::finish`]; reads after it give 0.
#[derive(Debug)]
pub struct Regs {
    vcpu: hv_vcpu_t,
    failure: RefCell<Option<HypervisorError>>,
}

impl Regs {
    /// Register access for `vcpu`, on its thread.
    pub fn new(vcpu: hv_vcpu_t) -> Self {
        Self { vcpu, failure: RefCell::new(None) }
    }

    fn record<T: Default>(&self, result: Result<T>) -> T {
        result.unwrap_or_else(|e| {
            self.failure.borrow_mut().get_or_insert(e);
            T::default()
        })
    }

    /// The first register access that failed, if any.
    pub fn finish(&self) -> Result<()> {
        self.failure.take().map_or(Ok(()), Err)
    }
}

fn bad_register(n: u8) -> HypervisorError {
    HypervisorError::call(
        format!("accessing register x{n}"),
        std::io::Error::other("no such general-purpose register"),
    )
}

impl VcpuRegs for Regs {
    fn x(&self, n: u8) -> u64 {
        self.record(x(n).ok_or_else(|| bad_register(n)).and_then(|reg| get(self.vcpu, reg)))
    }

    fn set_x(&mut self, n: u8, v: u64) {
        let vcpu = self.vcpu;
        self.record(x(n).ok_or_else(|| bad_register(n)).and_then(|reg| set(vcpu, reg, v)));
    }

    fn pc(&self) -> u64 {
        self.record(get(self.vcpu, hv_reg_t::PC))
    }

    fn set_pc(&mut self, v: u64) {
        let vcpu = self.vcpu;
        self.record(set(vcpu, hv_reg_t::PC, v));
    }
}
