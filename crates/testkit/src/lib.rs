//! Test harness: real Apache ZooKeeper servers on demand.
//!
//! `Zk::standalone()` and `Zk::ensemble()` start servers from the installed Apache
//! ZooKeeper in a fresh temporary folder, on free loopback ports, and return once they
//! serve. Dropping the handle kills every server's process group, also when the test
//! panics; a panicking test also prints the end of each server's log and keeps the
//! folder for a post-mortem.
//!
//! **Invariant:** nothing here fakes ZooKeeper. A machine without ZooKeeper fails the
//! test with a message that says how to install it; no test skips silently.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

pub use zkserver::ports::{free_port, free_run};
pub use zkserver::{Config, Ensemble, Mode, Ports, Server};

/// Running ZooKeeper servers in a temporary folder.
pub struct Zk {
    ensemble: Option<Ensemble>,
    dir: Option<tempfile::TempDir>,
}

impl Zk {
    /// A standalone server with default settings.
    pub fn standalone() -> Zk {
        Zk::start(|_| {})
    }

    /// A 3-node ensemble with default settings.
    pub fn ensemble() -> Zk {
        Zk::start(|c| c.servers = 3)
    }

    /// Servers configured by `configure`, which sees a standalone configuration in a
    /// fresh temporary folder. Panics, with what to do, when they cannot start.
    pub fn start(configure: impl FnOnce(&mut Config)) -> Zk {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-zk-")
            .tempdir()
            .expect("cannot create a temporary folder for ZooKeeper");
        let mut config = Config::standalone(dir.path());
        configure(&mut config);
        match Ensemble::start(&config) {
            Ok(ensemble) => Zk {
                ensemble: Some(ensemble),
                dir: Some(dir),
            },
            Err(err) => panic!("cannot start ZooKeeper for this test: {err}"),
        }
    }

    /// Waits until the running servers serve again and one of them leads.
    pub fn wait_ready(&mut self) {
        let timeout = Duration::from_secs(60);
        if let Err(err) = self.deref_mut().wait_ready(timeout) {
            panic!("ZooKeeper did not recover: {err}");
        }
    }

    /// The folder the servers live in.
    pub fn path(&self) -> PathBuf {
        self.deref().dir().to_path_buf()
    }
}

impl Deref for Zk {
    type Target = Ensemble;
    fn deref(&self) -> &Ensemble {
        self.ensemble.as_ref().expect("ensemble present until drop")
    }
}

impl DerefMut for Zk {
    fn deref_mut(&mut self) -> &mut Ensemble {
        self.ensemble.as_mut().expect("ensemble present until drop")
    }
}

impl Drop for Zk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(ensemble) = &self.ensemble {
                for server in ensemble.servers() {
                    eprintln!(
                        "--- ZooKeeper server {} log ({}), last lines:\n{}",
                        server.id(),
                        server.log_path().display(),
                        server.log_tail(40)
                    );
                }
            }
            // Keep the folder (data and logs) for whoever reads the failure.
            if let Some(dir) = self.dir.take() {
                eprintln!("--- ZooKeeper folder kept: {}", dir.keep().display());
            }
        }
        // Servers die here, before their folder is removed.
        self.ensemble = None;
    }
}
