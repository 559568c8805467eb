//! Free loopback ports for servers about to be started, picked outside the kernel's
//! ephemeral range.
//!
//! Asking the kernel for port 0 and closing the listener hands out a port from the
//! ephemeral range (`net.ipv4.ip_local_port_range`), the same range every outgoing
//! connection takes its local port from. Between the pick and the server's `bind`, any
//! `connect` on the machine may take it: a ZooKeeper ensemble started with such ports
//! was seen to fail with its election port in use. Ports below (or above) that range are
//! only ever taken by an explicit `bind`, so this module picks from there: a cursor that
//! starts at a place drawn from the process id and the clock, so processes picking at
//! once start far apart, and walks on, so one process never hands out a port twice.
//! Every port is checked free right before it is handed out.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Below this, ports are left to the well-known and registered services.
const FLOOR: u16 = 15_000;

/// A span outside the ephemeral range smaller than this is not worth walking: ports
/// then come from the kernel (and may, rarely, be taken before they are used).
const MIN_SPAN: u16 = 1_000;

/// A free port on 127.0.0.1 that this process has not handed out before.
pub fn free_port() -> io::Result<u16> {
    free_run(1)
}

/// The first of `n` consecutive ports on 127.0.0.1 that are all free, none of them
/// handed out by this process before.
pub fn free_run(n: u16) -> io::Result<u16> {
    assert!(n >= 1, "a run of ports has at least one");
    match pool() {
        Some(pool) => walk(pool, n),
        None => from_kernel(n),
    }
}

/// The span ports are walked in, or `None` when the ephemeral range leaves no span
/// of [`MIN_SPAN`] ports.
fn pool() -> Option<&'static Range<u16>> {
    static POOL: OnceLock<Option<Range<u16>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| parse_range(&text))
            .unwrap_or((32_768, 60_999));
        span_outside(low, high)
    })
    .as_ref()
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    match (fields.next(), fields.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Some((low, high)),
        _ => None,
    }
}

/// The larger of the spans below and above the ephemeral range `low..=high`.
fn span_outside(low: u16, high: u16) -> Option<Range<u16>> {
    let below = FLOOR..low.max(FLOOR);
    let above = high.saturating_add(1).max(FLOOR)..u16::MAX;
    let larger = if below.len() >= above.len() {
        below
    } else {
        above
    };
    (larger.len() >= MIN_SPAN as usize).then_some(larger)
}

fn walk(pool: &Range<u16>, n: u16) -> io::Result<u16> {
    static CURSOR: Mutex<Option<u16>> = Mutex::new(None);
    let mut cursor = CURSOR.lock().unwrap_or_else(|p| p.into_inner());
    let span = pool.len() as u32;
    let mut at = cursor.unwrap_or_else(|| pool.start + (seed() % span) as u16);
    let mut walked = 0u32;
    while walked < span {
        if at.checked_add(n).is_none_or(|end| end > pool.end) {
            walked += u32::from(pool.end - at);
            at = pool.start;
            continue;
        }
        match (at..at + n).position(|port| !is_free(port)) {
            None => {
                *cursor = Some(at + n);
                return Ok(at);
            }
            Some(taken) => {
                let skip = taken as u16 + 1;
                walked += u32::from(skip);
                at += skip;
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "no run of {n} free ports on 127.0.0.1 in {}..{}",
            pool.start, pool.end
        ),
    ))
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Differs between processes started together and between runs of one test binary.
fn seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos)
}

/// The fallback: a port from the kernel, then the ones after it.
fn from_kernel(n: u16) -> io::Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let base = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let Some(end) = base.checked_add(n) else {
            continue;
        };
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if (base..end).any(|port| given.contains(&port) || !is_free(port)) {
            continue;
        }
        given.extend(base..end);
        return Ok(base);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no run of {n} free ports on 127.0.0.1 after 100 tries"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_repeated() {
        let (low, high) = parse_range(
            &std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap(),
        )
        .unwrap();
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let port = free_port().unwrap();
            assert!(seen.insert(port), "{port} handed out twice");
            if pool().is_some() {
                assert!(
                    !(low..=high).contains(&port),
                    "{port} is in the ephemeral range {low}..={high}"
                );
            }
            assert!(is_free(port));
        }
    }

    #[test]
    fn a_run_is_consecutive_and_free_and_skips_a_taken_port() {
        let base = free_run(4).unwrap();
        // Hold the second port of the next run the walk would hand out.
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, base + 5));
        let next = free_run(3).unwrap();
        for port in next..next + 3 {
            assert!(is_free(port), "{port} of the run is taken");
        }
        assert!(next >= base + 4 || next + 3 <= base, "runs overlap");
        if taken.is_ok() {
            assert!(!(next..next + 3).contains(&(base + 5)));
        }
    }

    #[test]
    fn the_span_outside_is_the_larger_one_or_none() {
        assert_eq!(span_outside(32_768, 60_999), Some(15_000..32_768));
        assert_eq!(span_outside(1_024, 60_999), Some(61_000..u16::MAX));
        assert_eq!(span_outside(15_500, 65_000), None);
        assert_eq!(parse_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("garbage"), None);
    }
}
