//! Reboot in place for Hypervisor.framework vCPUs: each is destroyed and created again on its
//! own thread.
//!
//! Why re-create rather than write registers back: the framework has no vCPU reset call, and
//! a new vCPU starts in the architectural reset state with *everything* the framework keeps
//! per vCPU (general, FP/SIMD, system and debug registers, pointer-authentication keys, the
//! GIC CPU interface, the timer, and whatever newer chips and macOS versions add). A table of
//! system registers and their reset values would have to know all of that on every chip; a
//! register it missed would carry the last boot's state into the next one. Re-creating costs
//! a framework call or two per vCPU, and what Aperture gives each vCPU after creation (MPIDR,
//! ID registers, TSO) is redone by the very code that did it at first creation.
//!
//! [`recreate`] is the order of it, portable and unit-tested; the backend supplies the
//! framework calls ([`RecreateOps`]).

use super::handle::VcpuHandle;
use super::power::VcpuPower;
use crate::hypervisor::{HypervisorError, Result};

/// The framework calls that re-creating a vCPU takes, on the vCPU's own thread.
pub trait RecreateOps {
    /// Destroys the vCPU (`hv_vcpu_destroy`).
    fn destroy(&mut self) -> Result<()>;
    /// Creates the new vCPU (`hv_vcpu_create`) and returns its framework id.
    fn create(&mut self) -> Result<u64>;
    /// Sets the new vCPU's virtual-counter offset (`hv_vcpu_set_vtimer_offset`).
    fn set_vtimer_offset(&mut self, offset: u64) -> Result<()>;
    /// Gives the new vCPU what the backend gives every vCPU after creation: MPIDR, ID
    /// registers, TSO.
    fn configure(&mut self) -> Result<()>;
}

/// Puts vCPU `index` back to its power-on state for a reboot in place by re-creating it,
/// after [`VcpuPower::power_on_reset`] (which left it powered off).
///
/// - vCPUs are re-created one at a time in index order ([`VcpuPower::wait_reset_turn`]), as
///   at first creation, so the framework hands out ids as it did then.
/// - The kicker never names a destroyed vCPU: `handle` is cleared before the destroy and set
///   once the new vCPU exists.
/// - `vtimer_offset` (the old vCPU's) is carried over: the guest's virtual counter neither
///   jumps back nor differs between vCPUs (all of them keep the offset they had), as on KVM,
///   whose reset leaves the counter alone.
pub fn recreate(
    index: u32,
    vtimer_offset: u64,
    power: &VcpuPower,
    handle: &VcpuHandle,
    ops: &mut impl RecreateOps,
) -> Result<()> {
    if !power.wait_reset_turn(index) {
        return Err(HypervisorError::call(
            format!("re-creating vCPU {index}"),
            std::io::Error::other("the VM stopped while the vCPU waited for its turn"),
        ));
    }
    let result = steps(vtimer_offset, handle, ops);
    power.end_reset_turn(index);
    result
}

fn steps(vtimer_offset: u64, handle: &VcpuHandle, ops: &mut impl RecreateOps) -> Result<()> {
    let old = handle.clear();
    if let Err(e) = ops.destroy() {
        // The old vCPU is still there: keep it kickable while the VM stops.
        if let Some(id) = old {
            handle.set(id);
        }
        return Err(e);
    }
    let id = ops.create()?;
    handle.set(id);
    ops.set_vtimer_offset(vtimer_offset)?;
    ops.configure()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Records the calls, and what a kick would have named during each.
    #[derive(Debug)]
    struct Fake {
        handle: Arc<VcpuHandle>,
        next_id: u64,
        fail: Option<&'static str>,
        calls: Vec<(String, Option<u64>)>,
    }

    impl Fake {
        fn new(handle: Arc<VcpuHandle>, next_id: u64) -> Self {
            Self { handle, next_id, fail: None, calls: Vec::new() }
        }

        fn call(&mut self, what: String) -> Result<()> {
            let mut kick = None;
            self.handle.with_id(|id| kick = Some(id));
            let failed = self.fail.is_some_and(|f| what.starts_with(f));
            self.calls.push((what.clone(), kick));
            if failed {
                return Err(HypervisorError::call(what, std::io::Error::other("scripted")));
            }
            Ok(())
        }
    }

    impl RecreateOps for Fake {
        fn destroy(&mut self) -> Result<()> {
            self.call("destroy".into())
        }
        fn create(&mut self) -> Result<u64> {
            self.call("create".into())?;
            Ok(self.next_id)
        }
        fn set_vtimer_offset(&mut self, offset: u64) -> Result<()> {
            self.call(format!("offset {offset:#x}"))
        }
        fn configure(&mut self) -> Result<()> {
            self.call("configure".into())
        }
    }

    fn power(vcpus: u32) -> VcpuPower {
        let power = VcpuPower::default();
        for i in 0..vcpus {
            power.add(i, 0x8000_0000 | u64::from(i));
        }
        power.power_on_reset();
        power
    }

    fn calls(fake: &Fake) -> Vec<(&str, Option<u64>)> {
        fake.calls.iter().map(|(what, kick)| (what.as_str(), *kick)).collect()
    }

    #[test]
    fn the_vcpu_is_destroyed_created_and_configured_with_its_old_counter() {
        let power = power(1);
        let handle = Arc::new(VcpuHandle::new(7));
        let mut fake = Fake::new(handle.clone(), 2);
        recreate(0, 0x1234, &power, &handle, &mut fake).unwrap();
        assert_eq!(
            calls(&fake),
            [
                // No kick can name the vCPU being destroyed, nor the id before the new one.
                ("destroy", None),
                ("create", None),
                // The new vCPU is kickable from here on.
                ("offset 0x1234", Some(2)),
                ("configure", Some(2)),
            ]
        );
        let mut kick = None;
        handle.with_id(|id| kick = Some(id));
        assert_eq!(kick, Some(2));
    }

    #[test]
    fn failures_stop_the_sequence_and_pass_the_turn_on() {
        // The destroy fails: the old vCPU stays kickable.
        let power = power(2);
        let handle = Arc::new(VcpuHandle::new(7));
        let mut fake = Fake::new(handle.clone(), 2);
        fake.fail = Some("destroy");
        let err = recreate(0, 0, &power, &handle, &mut fake).unwrap_err().to_string();
        assert!(err.contains("destroy"), "{err}");
        assert_eq!(calls(&fake), [("destroy", None)]);
        let mut kick = None;
        handle.with_id(|id| kick = Some(id));
        assert_eq!(kick, Some(7));
        // vCPU 1 gets its turn all the same; its create fails: no vCPU, nothing to kick.
        let handle = Arc::new(VcpuHandle::new(8));
        let mut fake = Fake::new(handle.clone(), 3);
        fake.fail = Some("create");
        assert!(recreate(1, 0, &power, &handle, &mut fake).is_err());
        assert_eq!(calls(&fake), [("destroy", None), ("create", None)]);
        let mut kick = None;
        handle.with_id(|id| kick = Some(id));
        assert_eq!(kick, None);
    }

    #[test]
    fn a_stop_while_waiting_for_the_turn_touches_nothing() {
        let power = power(2);
        power.kick(1);
        let handle = Arc::new(VcpuHandle::new(8));
        let mut fake = Fake::new(handle.clone(), 3);
        let err = recreate(1, 0, &power, &handle, &mut fake).unwrap_err().to_string();
        assert!(err.contains("re-creating vCPU 1") && err.contains("stopped"), "{err}");
        assert!(fake.calls.is_empty());
    }
}
