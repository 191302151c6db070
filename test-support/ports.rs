//! Loopback ports for tests that must name a port before anything listens on it.
//!
//! Binding port 0 and dropping the listener hands out a port from the kernel's ephemeral
//! range, which the kernel also gives to every outgoing connection and every other
//! `bind(0)`: before the test's server binds it, another test's client may own it (CI saw
//! "127.0.0.1:42329 (for teacher0) is not free"). These ports come from outside that range,
//! where the kernel never picks on its own, walking from a per-process start so that test
//! threads never pick the same one; each is checked free just before it is handed out.
//!
//! Included by path (`#[path = "../../test-support/ports.rs"] mod ports;`) from the test
//! files of several crates.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// `(first, count)` of the ports handed out: below the ephemeral range when there is room
/// (Linux's default range is 32768-60999), else above it.
fn region() -> (u32, u32) {
    static REGION: OnceLock<(u32, u32)> = OnceLock::new();
    *REGION.get_or_init(|| {
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        if lo >= 12_000 {
            (10_000, lo - 10_000)
        } else if hi <= 63_000 {
            (hi + 1, 65_535 - hi)
        } else {
            (10_000, 20_000) // all ephemeral: the check below still guards each port
        }
    })
}

/// `count` consecutive loopback ports that are free now; returns the first.
pub fn free_ports(count: u16) -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let (first, span) = region();
    let count = u32::from(count.max(1));
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        AtomicU32::new((std::process::id().wrapping_mul(7_919) ^ nanos) % span)
    });
    for _ in 0..span {
        let at = next.fetch_add(count, Ordering::Relaxed) % span;
        if at + count > span {
            continue;
        }
        let p = first + at;
        if (p..p + count).all(|q| TcpListener::bind(("127.0.0.1", q as u16)).is_ok()) {
            return p as u16;
        }
    }
    panic!(
        "no {count} consecutive free loopback ports in {first}..{}",
        first + span
    )
}

/// One loopback port that is free now.
pub fn free_port() -> u16 {
    free_ports(1)
}
