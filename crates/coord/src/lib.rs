//! Switchyard's ZooKeeper layer: the only crate that speaks the ZooKeeper protocol.
//!
//! Start at [`Zk`]: a handle whose every request passes one bounded in-flight window
//! (load makes callers wait; it never becomes an error or a dropped connection), whose
//! payloads are encoded and size-checked before they are sent ([`codec`]), and which
//! survives connection losses and session expiries. Bulk writes go through
//! [`Zk::write_many`] as `multi` transactions under the size limit.
//!
//! Built on the `zookeeper-client` crate; the wire protocol is not re-implemented.

#![warn(missing_docs)]

mod batch;
pub mod codec;
mod config;
mod error;
pub mod metrics;
mod zk;

pub use batch::{BatchOutcome, Op};
pub use config::{Config, DEFAULT_JUTE_MAXBUFFER, REQUEST_OVERHEAD_BYTES};
pub use error::{Error, Result, ZkError};
pub use zk::{CreateMode, Session, SessionState, SessionStats, Stat, Zk};
