//! `switchyard gateway --check`: what a start with a configuration would find, found
//! without binding, serving or writing anything (as `nginx -t` and `haproxy -c` do), so
//! that an operator can try a change, or the folder a restart will load, beside a
//! running gateway.
//!
//! It takes the steps of [`Gateway::start`](crate::Gateway::start) up to the bind, and
//! fails where a start would: the settings, the listen addresses' IPs (not their ports:
//! binding one beside a running gateway would take some of its connections), the
//! orchestrator URLs, the certificate folder, the access log, and the state folder's
//! snapshot, decoded whole. What it adds is the report: the table a start would serve,
//! where from, and any file skipped on the way to it.
//!
//! **Invariant:** touches nothing a running gateway owns. It binds port 0 alone (to try
//! each listen address's IP). The state folder is opened as a start opens it (a probe
//! file of this process's own, created and removed at once) only if it exists; the
//! access log is opened for appending only if it exists, and otherwise its folder is
//! checked for write access.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use crate::snapshot::{Generation, Rejected};
use crate::{config, tls, Config, Error};

/// The table a start would serve before any orchestrator answers.
#[derive(Debug)]
pub struct CheckedTable {
    /// The snapshot file it comes from.
    pub path: PathBuf,
    /// That file's generation: `previous` when the current one was skipped or is missing.
    pub generation: Generation,
    /// Its table version.
    pub version: u64,
    /// Its routes.
    pub routes: usize,
    /// When the file was written (its modification time).
    pub written: std::time::SystemTime,
    /// Files skipped on the way to it, and why.
    pub rejected: Vec<Rejected>,
}

/// What [`check`] found.
#[derive(Debug)]
pub struct Checked {
    /// The state folder.
    pub state_dir: PathBuf,
    /// The table on disk; `None` when the folder holds none (a fresh gateway, served by
    /// its orchestrators once one answers).
    pub table: Option<CheckedTable>,
    /// Whether the state folder has yet to be created (a start creates it).
    pub state_dir_missing: bool,
    /// Orchestrator URLs configured.
    pub orchestrators: usize,
    /// Certificate files in the TLS folder, and when the first of them expires (seconds
    /// since the Unix epoch), with TLS configured.
    pub certificates: Option<(usize, Option<i64>)>,
}

/// Checks `config` as [`Gateway::start`](crate::Gateway::start) would, without binding,
/// serving or writing (see the module docs). Blocking: it reads and decodes the whole
/// snapshot.
pub fn check(config: &Config) -> Result<Checked, Error> {
    config.validate()?;
    for url in &config.orchestrators {
        config::parse_orchestrator_url(url)?;
    }
    // The ports are not bound (a listener with SO_REUSEPORT beside the running gateway
    // would take some of its connections, and drop them on exit), but an address this
    // host does not have fails here as it would at start.
    let mut listeners = vec![(config.listen, "proxy"), (config.admin, "admin API")];
    listeners.extend(config.tls_listen.map(|addr| (addr, "TLS proxy")));
    for (addr, what) in listeners {
        local_address(addr).map_err(|source| Error::Bind { what, addr, source })?;
    }
    let certificates = match &config.tls_certs {
        Some(dir) => {
            let folder = tls::CertFolder::load(dir)?;
            Some((folder.files(), folder.earliest_expiry()))
        }
        None => None,
    };
    if let Some(path) = &config.access_log {
        writable_log(path).map_err(|source| Error::AccessLog {
            path: path.clone(),
            source,
        })?;
    }

    let dir = &config.state_dir;
    let state_dir_missing =
        std::fs::symlink_metadata(dir).is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
    let table = if state_dir_missing {
        creatable(dir).map_err(|source| {
            Error::Snapshot(crate::snapshot::Error::Folder {
                path: dir.clone(),
                source,
            })
        })?;
        None
    } else {
        let (_, loaded) = crate::load(dir)?;
        loaded.map(|loaded| CheckedTable {
            path: loaded.path,
            generation: loaded.generation,
            version: loaded.table.version(),
            routes: loaded.table.len(),
            written: loaded.modified,
            rejected: loaded.rejected,
        })
    };
    if table.is_none() && config.orchestrators.is_empty() {
        return Err(Error::NothingToServe { dir: dir.clone() });
    }
    Ok(Checked {
        state_dir: dir.clone(),
        table,
        state_dir_missing,
        orchestrators: config.orchestrators.len(),
        certificates,
    })
}

/// Whether `addr`'s IP is one this host can listen on: bound with port 0, which takes
/// no port anyone uses.
fn local_address(addr: std::net::SocketAddr) -> io::Result<()> {
    std::net::TcpListener::bind((addr.ip(), 0)).map(drop)
}

/// Whether the access log could be opened as a start opens it, without creating it.
fn writable_log(path: &Path) -> io::Result<()> {
    match OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            writable_dir(parent)
        }
        Err(e) => Err(e),
    }
}

/// Whether `dir`, missing, could be created: its nearest existing ancestor is a folder
/// this process may write to.
fn creatable(dir: &Path) -> io::Result<()> {
    let mut ancestor = dir.parent();
    while let Some(path) = ancestor {
        if path.as_os_str().is_empty() {
            return writable_dir(Path::new("."));
        }
        if path.exists() {
            return writable_dir(path);
        }
        ancestor = path.parent();
    }
    writable_dir(Path::new("."))
}

/// Whether `dir` is a folder this process may create files in.
fn writable_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let metadata = std::fs::metadata(dir)?;
    if !metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a folder", dir.display()),
        ));
    }
    let mut bytes = dir.as_os_str().as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: a NUL-terminated path that outlives the call.
    let allowed = unsafe { libc::access(bytes.as_ptr().cast(), libc::W_OK | libc::X_OK) } == 0;
    if allowed {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
