//! The limit on open files, raised at start by the daemons and the benchmark.
//!
//! Every client connection and every pooled backend connection is a file descriptor,
//! and the usual soft limit (1024, systemd's default for services too) would hold a
//! gateway to about 500 proxied connections, with accepts failing past it.

use std::io;

/// Under this many open files, [`raise`]'s caller should warn: about half as many
/// proxied connections fit (a client's and its backend's).
pub const LOW: u64 = 16_384;

/// Raises the soft limit on open files to the hard limit, as Go's runtime does at start:
/// the hard limit is what the operator allowed (`LimitNOFILE=` in systemd, `ulimit -Hn`),
/// the soft one a default kept low for programs that use `select(2)`, which this one
/// does not. Returns the limit now in force.
pub fn raise() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit(2) with a valid, initialised struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
