//! [`VcpuHandle`]: a vCPU's current Hypervisor.framework id, shared with its kicker.
//!
//! A reboot in place re-creates each vCPU ([`super::reset`]), and the new vCPU may get
//! another id. The kicker (`hv_vcpus_exit`, from any thread) must name the vCPU that exists
//! now: never the destroyed one, whose id the framework may already have handed to another
//! vCPU. So the id lives behind a lock that a kick holds while it names the vCPU, and the
//! vCPU thread clears it (waiting out any kick in flight) before it destroys the vCPU.

use std::sync::Mutex;

/// A vCPU's framework id (`hv_vcpu_t`), or none while the vCPU is being re-created.
#[derive(Debug)]
pub struct VcpuHandle {
    id: Mutex<Option<u64>>,
}

impl VcpuHandle {
    /// The handle of the vCPU with framework id `id`.
    pub fn new(id: u64) -> Self {
        Self { id: Mutex::new(Some(id)) }
    }

    /// Runs `kick` with the vCPU's id, the id staying valid until it returns; does nothing
    /// while there is no vCPU (the kick's other half, the power-state flag, still ends any
    /// wait of the vCPU's thread, and a re-created vCPU has not entered the guest yet).
    pub fn with_id(&self, kick: impl FnOnce(u64)) {
        let id = self.id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = *id {
            kick(id);
        }
    }

    /// The vCPU is about to be destroyed: no kick names it from now on. Returns after any
    /// kick in flight, with the id it had.
    pub fn clear(&self) -> Option<u64> {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The vCPU now has framework id `id`.
    pub fn set(&self, id: u64) {
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn kicked(handle: &VcpuHandle) -> Option<u64> {
        let mut seen = None;
        handle.with_id(|id| seen = Some(id));
        seen
    }

    #[test]
    fn kicks_name_the_current_vcpu_and_none_while_it_is_recreated() {
        let handle = VcpuHandle::new(3);
        assert_eq!(kicked(&handle), Some(3));
        assert_eq!(handle.clear(), Some(3));
        assert_eq!(kicked(&handle), None);
        handle.set(0);
        assert_eq!(kicked(&handle), Some(0));
    }

    #[test]
    fn clearing_waits_for_a_kick_in_flight() {
        let handle = Arc::new(VcpuHandle::new(1));
        let finished = Arc::new(AtomicBool::new(false));
        let (inside_tx, inside_rx) = std::sync::mpsc::channel();
        let kicker = {
            let (handle, finished) = (handle.clone(), finished.clone());
            std::thread::spawn(move || {
                handle.with_id(|_| {
                    inside_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                    finished.store(true, Ordering::SeqCst);
                });
            })
        };
        inside_rx.recv().unwrap();
        handle.clear();
        assert!(finished.load(Ordering::SeqCst), "the id was cleared while a kick still used it");
        kicker.join().unwrap();
    }
}
