//! The process's own resources, as `/metrics` reports them under the Prometheus client
//! libraries' usual names: open files and their limit, resident memory, CPU time.
//!
//! Every client connection and every pooled backend connection is a file descriptor,
//! and the usual soft limit (1024, systemd's default for services too) would hold a
//! gateway to about 500 proxied connections, with accepts failing past it: hence
//! [`raise_open_files_limit`].

use std::io;

/// Under this many open files, [`raise_open_files_limit`]'s caller should warn: about
/// half as many proxied connections fit (a client's and its backend's).
pub const LOW_OPEN_FILES_LIMIT: u64 = 16_384;

/// Raises the soft limit on open files to the hard limit, as Go's runtime does at start:
/// the hard limit is what the operator allowed (`LimitNOFILE=` in systemd, `ulimit -Hn`),
/// the soft one a default kept low for programs that use `select(2)`, which this one
/// does not. Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = get()?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit(2) with a valid, initialised struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// The soft limit on open files: opening one more than this fails.
pub fn open_files_limit() -> io::Result<u64> {
    Ok(get()?.rlim_cur)
}

/// Files the process has open now (the entries of `/proc/self/fd`, less the one that
/// reading it opens).
pub fn open_files() -> io::Result<u64> {
    let entries = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok(entries.saturating_sub(1))
}

fn get() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Resident memory, in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/self/statm: {statm:?}")))?;
    Ok(pages * sysconf(libc::_SC_PAGESIZE)?)
}

/// CPU time used, user and system, in seconds (`/proc/self/stat`).
pub fn cpu_seconds() -> io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // state is the third field of the line, utime and stime the 14th and 15th.
    let ticks: Option<u64> = stat.rsplit_once(')').and_then(|(_, rest)| {
        let mut fields = rest.split_whitespace().skip(11);
        let user: u64 = fields.next()?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        Some(user + system)
    });
    let ticks =
        ticks.ok_or_else(|| io::Error::other(format!("unexpected /proc/self/stat: {stat:?}")))?;
    Ok(ticks as f64 / sysconf(libc::_SC_CLK_TCK)? as f64)
}

fn sysconf(name: libc::c_int) -> io::Result<u64> {
    // SAFETY: sysconf(3) reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value)
        .ok()
        .filter(|value| *value > 0)
        .ok_or_else(io::Error::last_os_error)
}
