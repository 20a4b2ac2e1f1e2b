//! Which extent serves each guest address: disjoint runs of guest addresses, each pointing at
//! the extent new requests there should use.

use std::collections::BTreeMap;

use super::extent::ExtentId;

/// A run `[start, end)` served by `extent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub start: u64,
    pub end: u64,
    pub extent: ExtentId,
}

/// Disjoint runs keyed by start.
#[derive(Debug, Default, Clone)]
pub(crate) struct CurrentRuns {
    runs: BTreeMap<u64, (u64, ExtentId)>,
}

impl CurrentRuns {
    /// Runs overlapping `[start, end)`, by address (not clipped).
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<Run> {
        let mut found = Vec::new();
        // The run starting before `start` may reach into the range.
        if let Some((&s, &(e, extent))) = self.runs.range(..start).next_back() {
            if e > start {
                found.push(Run { start: s, end: e, extent });
            }
        }
        for (&s, &(e, extent)) in self.runs.range(start..end) {
            found.push(Run { start: s, end: e, extent });
        }
        found
    }

    /// The one extent serving every byte of `[start, end)`, if there is one.
    pub fn sole_extent(&self, start: u64, end: u64) -> Option<ExtentId> {
        let runs = self.overlapping(start, end);
        let first = runs.first()?;
        let mut covered = start;
        for run in &runs {
            if run.start > covered || run.extent != first.extent {
                return None;
            }
            covered = run.end;
        }
        (covered >= end).then_some(first.extent)
    }

    /// The parts of `[start, end)` no run serves, by address.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = start;
        for run in self.overlapping(start, end) {
            if run.start > at {
                gaps.push((at, run.start));
            }
            at = at.max(run.end);
        }
        if at < end {
            gaps.push((at, end));
        }
        gaps
    }

    /// Makes `extent` serve `[start, end)`, trimming or removing the runs there. Returns the
    /// extents that lost addresses (each once).
    pub fn insert(&mut self, start: u64, end: u64, extent: ExtentId) -> Vec<ExtentId> {
        let mut lost = Vec::new();
        for run in self.overlapping(start, end) {
            self.runs.remove(&run.start);
            if run.start < start {
                self.runs.insert(run.start, (start, run.extent));
            }
            if run.end > end {
                self.runs.insert(end, (run.end, run.extent));
            }
            if !lost.contains(&run.extent) {
                lost.push(run.extent);
            }
        }
        self.runs.insert(start, (end, extent));
        lost
    }

    /// Removes every run of `extent` inside `[start, end)` (its guest range).
    pub fn remove_extent(&mut self, start: u64, end: u64, extent: ExtentId) {
        for run in self.overlapping(start, end) {
            if run.extent == extent {
                self.runs.remove(&run.start);
            }
        }
    }

    /// All runs, by address.
    #[cfg(test)]
    pub fn all(&self) -> Vec<Run> {
        self.runs.iter().map(|(&start, &(end, extent))| Run { start, end, extent }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_trims_and_reports_losers() {
        let mut runs = CurrentRuns::default();
        assert!(runs.insert(0, 100, 1).is_empty());
        assert!(runs.insert(200, 300, 2).is_empty());
        assert_eq!(runs.insert(50, 250, 3), vec![1, 2]);
        let all: Vec<_> = runs.all().iter().map(|r| (r.start, r.end, r.extent)).collect();
        assert_eq!(all, vec![(0, 50, 1), (50, 250, 3), (250, 300, 2)]);
        assert_eq!(runs.insert(100, 150, 4), vec![3]);
        let all: Vec<_> = runs.all().iter().map(|r| (r.start, r.end, r.extent)).collect();
        assert_eq!(
            all,
            vec![(0, 50, 1), (50, 100, 3), (100, 150, 4), (150, 250, 3), (250, 300, 2)]
        );
    }

    #[test]
    fn sole_extent_needs_full_single_coverage() {
        let mut runs = CurrentRuns::default();
        runs.insert(0, 100, 1);
        runs.insert(100, 200, 2);
        assert_eq!(runs.sole_extent(10, 90), Some(1));
        assert_eq!(runs.sole_extent(0, 100), Some(1));
        assert_eq!(runs.sole_extent(90, 110), None);
        assert_eq!(runs.sole_extent(150, 250), None);
        assert_eq!(runs.sole_extent(300, 400), None);
    }

    #[test]
    fn gaps_and_removal() {
        let mut runs = CurrentRuns::default();
        runs.insert(100, 200, 1);
        runs.insert(300, 400, 2);
        assert_eq!(runs.gaps(0, 500), vec![(0, 100), (200, 300), (400, 500)]);
        assert_eq!(runs.gaps(150, 350), vec![(200, 300)]);
        assert!(runs.gaps(100, 200).is_empty());
        runs.insert(150, 160, 3);
        runs.remove_extent(100, 200, 1);
        assert_eq!(runs.gaps(100, 200), vec![(100, 150), (160, 200)]);
    }
}
