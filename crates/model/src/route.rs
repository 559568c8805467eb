//! Routes, and the route stream between orchestrators and gateways.
//!
//! `GET /v1/routes[?since=V]` on an orchestrator answers `application/x-ndjson`: one
//! JSON object per line, so a person can read it with `curl` and a gateway can parse a
//! million routes as a stream. Lines, in order:
//!
//! ```text
//! {"type":"snapshot","version":V,"routes":N}     a full table follows: N route lines
//! {"type":"route","app":..,"domains":[..],"backends":[..],"fail_open":false}
//! {"type":"ready","version":V}                   the snapshot is complete; apply it
//! {"type":"upsert","version":V2,"route":{..}}    then, live: an app's route changed
//! {"type":"remove","version":V3,"app":"id"}      an app is gone
//! {"type":"ping","version":V3}                   every few seconds when nothing changes
//! ```
//!
//! With `since=V`, an orchestrator whose change log reaches back to `V` skips the
//! snapshot: it sends `{"type":"resume","version":V}` and then the changes after `V`.
//! Versions are ZooKeeper zxids, one version space for every orchestrator, so a gateway
//! can resume from any of them. A line a reader does not know is an error, not skipped.

use serde::{Deserialize, Serialize};

use crate::{AppId, Backend, Domain};

/// Where one application's requests go: its domains and the backends to use now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The application.
    pub app: AppId,
    /// The names it answers on.
    pub domains: Vec<Domain>,
    /// Its healthy backends; all of them when none is healthy (see `fail_open`).
    pub backends: Vec<Backend>,
    /// Every backend failed its health check, so all are listed: better a request
    /// that may fail than a certain 503.
    #[serde(default)]
    pub fail_open: bool,
}

/// One line of the route stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamLine {
    /// A full table of `routes` routes follows, at `version`.
    Snapshot {
        /// The table's version.
        version: u64,
        /// How many `route` lines follow.
        routes: u64,
    },
    /// One route of a snapshot.
    Route(Route),
    /// The snapshot announced before is complete.
    Ready {
        /// The table's version.
        version: u64,
    },
    /// No snapshot: changes after `version` follow.
    Resume {
        /// The version the reader already has.
        version: u64,
    },
    /// An application's route was added or changed.
    Upsert {
        /// The table's version after the change.
        version: u64,
        /// The new route.
        route: Route,
    },
    /// An application was removed.
    Remove {
        /// The table's version after the change.
        version: u64,
        /// The removed application.
        app: AppId,
    },
    /// Nothing changed; the stream is alive.
    Ping {
        /// The current version.
        version: u64,
    },
}

impl StreamLine {
    /// One line of NDJSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("stream lines always serialise");
        line.push(b'\n');
        line
    }

    /// Parses one line (with or without its newline).
    pub fn parse(line: &[u8]) -> Result<StreamLine, serde_json::Error> {
        serde_json::from_slice(line)
    }
}
