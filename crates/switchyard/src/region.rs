//! `region.json`: what `switchyard up` runs and where, written in its state folder so
//! that `status`, `upgrade` and `app` find the local region without flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file's name inside the state folder.
pub const FILE: &str = "region.json";

/// One process of the region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    /// A stable name: `zookeeper-1`, `orchestrator-2`, `gateway-1`, `backend-3`.
    pub name: String,
    /// Its main address: a ZooKeeper client address (`127.0.0.1:2181`) or an HTTP base
    /// URL (`http://127.0.0.1:7001`).
    pub url: String,
    /// A gateway's admin base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Its process id while `up` runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The local region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Region {
    /// The ZooKeeper connect string.
    pub zk: String,
    /// The region's name (its ZooKeeper root is `/switchyard/<region>`).
    pub region: String,
    /// The file holding the orchestrators' write token.
    pub token_file: PathBuf,
    /// The process id of `switchyard up` itself.
    pub supervisor_pid: u32,
    /// ZooKeeper servers.
    pub zookeeper: Vec<Component>,
    /// Orchestrators.
    pub orchestrators: Vec<Component>,
    /// Gateways (`url` is the proxy, `admin` the admin port).
    pub gateways: Vec<Component>,
    /// Demo backends.
    pub backends: Vec<Component>,
}

impl Region {
    /// Reads `dir/region.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Region> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is `switchyard up` running with --dir {}?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes `dir/region.json` atomically.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("the region serialises");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}
