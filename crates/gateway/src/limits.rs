//! The process's limit on open files. Every client connection and every pooled backend
//! connection is a file descriptor, and the usual soft limit (1024, systemd's default
//! for services too) would hold a gateway to about 500 proxied connections, with
//! accepts failing past it.

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
