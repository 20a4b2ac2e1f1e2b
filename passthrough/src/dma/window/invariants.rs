//! Internal consistency checks of the window manager, run by the tests after every step.

use std::collections::BTreeMap;

use super::WindowManager;
use crate::dma::extent::{ExtentId, WindowInfo};
use crate::dma::mapper::{AddressPolicy, HostMapper};

impl<M: HostMapper> WindowManager<M> {
    /// Checks every internal invariant; returns what is broken.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut users: BTreeMap<ExtentId, u64> = BTreeMap::new();
        let mut live_requests = 0;
        for (key, live) in &self.requests {
            if live.is_empty() {
                return Err(format!("request {key:x?} has no uses"));
            }
            for uses in live {
                live_requests += 1;
                for id in uses {
                    if !self.extents.contains_key(id) {
                        return Err(format!("request {key:x?} uses missing extent {id}"));
                    }
                    *users.entry(*id).or_default() += 1;
                }
            }
        }
        if live_requests != self.stats.live_requests {
            return Err(format!(
                "{live_requests} live requests, stats say {}",
                self.stats.live_requests
            ));
        }
        let (mut bytes, mut pinned_bytes, mut pinned_maps) = (0, 0, 0);
        for (id, e) in &self.extents {
            bytes += e.len;
            let expected = users.get(id).copied().unwrap_or(0);
            if e.users != expected {
                return Err(format!("extent {id} has {} users, requests say {expected}", e.users));
            }
            if (e.users == 0) != self.cache.contains(*id) {
                return Err(format!(
                    "extent {id} has {} users but cached is the opposite",
                    e.users
                ));
            }
            if e.users > 0 {
                pinned_bytes += e.len;
                pinned_maps += 1;
            }
            if self.by_device.get(&e.device_addr) != Some(id) {
                return Err(format!("extent {id} is not indexed by its device address"));
            }
            let own = self.runs.overlapping(e.gpa, e.gpa_end());
            let own: Vec<_> = own.iter().filter(|r| r.extent == *id).collect();
            if !e.shadowed && (own.len() != 1 || own[0].start != e.gpa || own[0].end != e.gpa_end())
            {
                return Err(format!(
                    "extent {id} is not shadowed but does not serve all of its range"
                ));
            }
            if e.shadowed && e.users == 0 && !own.is_empty() {
                return Err(format!("extent {id} is shadowed, unused and still serving"));
            }
        }
        for run in self.runs.all() {
            match self.extents.get(&run.extent) {
                Some(e) if run.start >= e.gpa && run.end <= e.gpa_end() => {}
                _ => return Err(format!("run {run:x?} points outside its extent")),
            }
        }
        let s = &self.stats;
        let counted = (s.live_bytes, s.live_mappings, s.pinned_bytes, s.pinned_mappings);
        let actual = (bytes, self.extents.len() as u64, pinned_bytes, pinned_maps);
        if counted != actual {
            return Err(format!("stats {counted:x?} but extents add up to {actual:x?}"));
        }
        if s.live_bytes > self.limits.max_mapped_bytes
            || s.live_mappings > u64::from(self.limits.max_mappings)
        {
            return Err(format!("over budget: {} in {} mappings", s.live_bytes, s.live_mappings));
        }
        // Guest ranges of live mappings overlap only with a shadowed one (host-picks only),
        // which goes when its users do.
        let windows = self.windows();
        let mut open: Vec<WindowInfo> = Vec::new();
        for w in &windows {
            open.retain(|o| o.gpa + o.len > w.gpa);
            for o in &open {
                if self.limits.policy == AddressPolicy::Identity || !(o.shadowed || w.shadowed) {
                    return Err(format!("windows {o:x?} and {w:x?} overlap"));
                }
            }
            open.push(*w);
        }
        Ok(())
    }
}
