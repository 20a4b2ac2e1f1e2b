//! Threads of the VMM: named, with a stack smaller than a huge page.

/// Stack of every thread the VMM starts (vCPUs, device workers, loaders). Below 2 MiB on
/// purpose: Rust's default 2 MiB stack that happens to start on a 2 MiB boundary (e.g. right
/// below a 2 MiB-aligned mapping such as guest RAM or the PCI configuration mirror) is backed
/// by one transparent huge page on its first touch where THP is `always` (Debian's default):
/// 2 MiB resident for the few KiB a thread uses. Seen in the rig (one such stack among four
/// threads). The threads keep their data on the heap; their deepest stacks are a few KiB.
pub const STACK_BYTES: usize = 1 << 20;
// A stack mapping under 2 MiB never holds an aligned huge page.
const _: () = assert!(STACK_BYTES < 2 << 20);

/// A thread builder named `name`, with [`STACK_BYTES`] of stack.
pub fn named(name: impl Into<String>) -> std::thread::Builder {
    std::thread::Builder::new().name(name.into()).stack_size(STACK_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_thread_has_its_name_and_runs() {
        let name = named("probe")
            .spawn(|| std::thread::current().name().map(String::from))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(name.as_deref(), Some("probe"));
    }
}
