//! Switchyard's ZooKeeper layer: the only crate that speaks the ZooKeeper protocol.
//!
//! Start at [`Zk`]: a handle whose every request passes one bounded in-flight window
//! (load makes callers wait; it never becomes an error or a dropped connection), whose
//! payloads are encoded and size-checked before they are sent ([`codec`]), and which
//! survives connection losses and session expiries. Bulk writes go through
//! [`Zk::write_many`] as `multi` transactions under the size limit.
//!
//! Recipes on top: [`Membership`] (an ephemeral node per member, the live set watched),
//! ownership ([`Zk::claim`], [`Zk::fenced`], [`Zk::release`]: an ephemeral `&owner`
//! child with an epoch that fences writes), and [`TreeCache`] (a subtree in memory from
//! one persistent recursive watch and a pipelined walk).
//!
//! Built on the `zookeeper-client` crate; the wire protocol is not re-implemented.

#![warn(missing_docs)]

pub mod audit;
mod batch;
pub mod cache;
mod coalesce;
pub mod codec;
mod config;
mod error;
mod membership;
pub mod metrics;
pub mod mntr;
mod ownership;
mod zk;

pub use audit::{AuditOptions, AuditReport, NodeSize};
pub use batch::{BatchOutcome, Op, Refused};
pub use cache::TreeCache;
pub use config::{Config, DEFAULT_JUTE_MAXBUFFER, REQUEST_OVERHEAD_BYTES};
pub use error::{Error, Result, ZkError};
pub use membership::Membership;
pub use ownership::{Claim, OWNER_NODE};
pub use zk::{CreateMode, Session, SessionState, SessionStats, Stat, Watch, Zk};
