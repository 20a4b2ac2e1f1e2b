//! [`VtimerGate`]: what to do with the virtual timer after a `VTIMER_ACTIVATED` exit.
//!
//! Hypervisor.framework masks the vCPU's virtual timer when it reports the exit. With the
//! in-kernel GIC the exit should never come (QEMU asserts so), but if it does, unmasking at
//! once while the guest's timer condition still holds makes the next entry exit again: a
//! storm. QEMU's `hvf_sync_vtimer` (target/arm/hvf/hvf.c) instead keeps the timer masked and,
//! before each entry, reads CNTV_CTL_EL0: only once the timer no longer asserts (disabled,
//! masked by the guest, or not yet expired) does it unmask. This is that logic, portable.

/// CNTV_CTL_EL0.ENABLE.
pub const CNTV_CTL_ENABLE: u64 = 1 << 0;
/// CNTV_CTL_EL0.IMASK.
pub const CNTV_CTL_IMASK: u64 = 1 << 1;
/// CNTV_CTL_EL0.ISTATUS.
pub const CNTV_CTL_ISTATUS: u64 = 1 << 2;

/// Whether the virtual timer asserts its interrupt with CNTV_CTL_EL0 = `ctl`: enabled, not
/// masked by the guest, and its condition met.
pub fn timer_asserts(ctl: u64) -> bool {
    ctl & (CNTV_CTL_ENABLE | CNTV_CTL_IMASK | CNTV_CTL_ISTATUS)
        == CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS
}

/// The per-vCPU vtimer state: masked by the framework after an exit, until the guest's timer
/// stops asserting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VtimerGate {
    masked: bool,
}

impl VtimerGate {
    /// A `VTIMER_ACTIVATED` exit: the framework masked the timer.
    pub fn activated(&mut self) {
        self.masked = true;
    }

    /// Whether the timer is masked, so the vCPU must read CNTV_CTL_EL0 before entering.
    pub fn masked(&self) -> bool {
        self.masked
    }

    /// Before entering the guest, with CNTV_CTL_EL0 = `ctl` (read only when [`Self::masked`]):
    /// whether to unmask the timer now.
    pub fn unmask_before_entry(&mut self, ctl: u64) -> bool {
        if !self.masked || timer_asserts(ctl) {
            return false;
        }
        self.masked = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_masked_while_the_timer_asserts_then_unmasks_once() {
        let mut gate = VtimerGate::default();
        assert!(!gate.masked());
        assert!(!gate.unmask_before_entry(CNTV_CTL_ENABLE), "nothing to unmask");
        gate.activated();
        assert!(gate.masked());
        let firing = CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS;
        // The guest has not handled it yet: unmasking now would exit again at once.
        assert!(!gate.unmask_before_entry(firing));
        assert!(!gate.unmask_before_entry(firing));
        assert!(gate.masked());
        // The guest reprogrammed CVAL into the future: the condition cleared.
        assert!(gate.unmask_before_entry(CNTV_CTL_ENABLE));
        assert!(!gate.masked());
        assert!(!gate.unmask_before_entry(CNTV_CTL_ENABLE), "once");
    }

    #[test]
    fn a_disabled_or_guest_masked_timer_does_not_assert() {
        assert!(timer_asserts(CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS));
        assert!(!timer_asserts(CNTV_CTL_ISTATUS), "disabled");
        assert!(!timer_asserts(CNTV_CTL_ENABLE | CNTV_CTL_IMASK | CNTV_CTL_ISTATUS), "IMASK");
        assert!(!timer_asserts(CNTV_CTL_ENABLE), "not expired");
        for ctl in [CNTV_CTL_ISTATUS, CNTV_CTL_ENABLE | CNTV_CTL_IMASK | CNTV_CTL_ISTATUS] {
            let mut gate = VtimerGate::default();
            gate.activated();
            assert!(gate.unmask_before_entry(ctl), "{ctl:#x}");
        }
    }
}
