//! Process memory from `/proc/self/status` (Linux): resident set size now and its peak.
//!
//! The peak (VmHWM) is process-wide and only grows, so a measurement that wants the peak
//! of one phase resets it first by writing `5` to `/proc/self/clear_refs`, and runs in a
//! process of its own so that memory freed by an earlier phase, but kept by the
//! allocator, cannot hide new allocations.

const STATUS: &str = "/proc/self/status";
const CLEAR_REFS: &str = "/proc/self/clear_refs";
/// `clear_refs` value that resets the peak RSS to the current RSS (Linux >= 4.0).
const RESET_PEAK: &str = "5";
const KIB: u64 = 1024;

/// Reads one `kB` field of `/proc/self/status`, in bytes; `None` off Linux.
fn status_field(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(STATUS).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * KIB)
    })
}

/// Current resident set size in bytes.
pub fn rss() -> Option<u64> {
    status_field("VmRSS")
}

/// Peak resident set size in bytes since start or the last [`reset_peak`].
pub fn peak_rss() -> Option<u64> {
    status_field("VmHWM")
}

/// Resets the peak to the current RSS; false when the kernel does not allow it.
pub fn reset_peak() -> bool {
    std::fs::write(CLEAR_REFS, RESET_PEAK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_follows_an_allocation_after_reset() {
        if rss().is_none() || !reset_peak() {
            return; // not Linux, or clear_refs not writable: nothing to check
        }
        // Other tests run on other threads and may free memory meanwhile, so only what is
        // guaranteed is asserted: the touched block is resident, and the peak is at least
        // the resident size seen after it.
        const BLOCK: usize = 64 << 20;
        let block = std::hint::black_box(vec![1u8; BLOCK]);
        let now = rss().unwrap();
        let peak = peak_rss().unwrap();
        assert!(
            now >= BLOCK as u64,
            "rss {now} below the {BLOCK}-byte block"
        );
        assert!(peak >= now, "peak {peak} below rss {now}");
        drop(block);
    }
}
