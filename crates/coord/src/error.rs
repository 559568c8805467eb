//! The layer's one error type: every variant says what an operator needs to act.

use std::time::Duration;

use crate::codec::DecodeError;

/// The underlying client's error codes, re-exported for matching.
pub use zookeeper_client::Error as ZkError;

/// An error from the ZooKeeper layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A write whose encoded payload is over the limit was refused before it was sent.
    #[error("refused to write {path}: encoded payload is {size_bytes} bytes, over the {limit_bytes}-byte limit (jute.maxbuffer less request overhead); split the data or raise jute.maxbuffer on servers and clients alike")]
    NodeTooLarge {
        /// The node.
        path: String,
        /// Its encoded size.
        size_bytes: usize,
        /// The largest allowed encoded size for this path.
        limit_bytes: usize,
    },
    /// Creating one more ephemeral node would exceed the session's budget.
    #[error("refused to create ephemeral {path}: this session already holds {held} ephemeral nodes, its budget is {budget} (a session closing with too many ephemerals can take ZooKeeper down, ZOOKEEPER-4306)")]
    EphemeralBudget {
        /// The node that was not created.
        path: String,
        /// Ephemerals held (or being created) by this session.
        held: usize,
        /// The budget.
        budget: usize,
    },
    /// A node's data could not be decoded.
    #[error("cannot decode {path}: {source}")]
    Decode {
        /// The node.
        path: String,
        /// Why.
        source: DecodeError,
    },
    /// The session that held an ephemeral node or an ownership expired; what it held is gone.
    #[error("ZooKeeper session expired while working on {path}; ephemeral nodes of that session are gone")]
    SessionExpired {
        /// The node being worked on.
        path: String,
    },
    /// ZooKeeper could not be reached for longer than the retry budget.
    #[error("ZooKeeper unreachable for {waited:?} while working on {path}: {source}")]
    Unavailable {
        /// The node being worked on.
        path: String,
        /// How long the request was retried.
        waited: Duration,
        /// The last error.
        source: ZkError,
    },
    /// ZooKeeper answered with an error (no node, node exists, bad version, ...).
    #[error("ZooKeeper refused the request on {path}: {source}")]
    Zk {
        /// The node.
        path: String,
        /// ZooKeeper's answer.
        source: ZkError,
    },
    /// A write fenced on an ownership was refused: the owner lost it (its session
    /// expired, or another member claimed the node since).
    #[error("refused a write fenced on {path}: this member no longer owns it (claimed at epoch {epoch})")]
    Fenced {
        /// The owned node.
        path: String,
        /// The epoch of the lost claim.
        epoch: i32,
    },
    /// ZooKeeper's answer did not match the request (a bug on one side or the other).
    #[error("unexpected answer from ZooKeeper on {path}: {detail}")]
    Unexpected {
        /// The node.
        path: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The layer was closed.
    #[error("the ZooKeeper client is closed")]
    Closed,
}

impl Error {
    /// ZooKeeper's error code, when ZooKeeper answered with one.
    pub fn zk_code(&self) -> Option<&ZkError> {
        match self {
            Error::Zk { source, .. } | Error::Unavailable { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the node did not exist.
    pub fn is_no_node(&self) -> bool {
        matches!(self.zk_code(), Some(ZkError::NoNode))
    }

    /// Whether the node already existed.
    pub fn is_node_exists(&self) -> bool {
        matches!(self.zk_code(), Some(ZkError::NodeExists))
    }

    /// Whether a version or fencing check failed.
    pub fn is_bad_version(&self) -> bool {
        matches!(
            self.zk_code(),
            Some(ZkError::BadVersion | ZkError::RuntimeInconsistent)
        )
    }

    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NodeTooLarge { .. } => "node_too_large",
            Error::EphemeralBudget { .. } => "ephemeral_budget",
            Error::Decode { .. } => "decode",
            Error::SessionExpired { .. } => "session_expired",
            Error::Unavailable { .. } => "unavailable",
            Error::Zk { .. } => "zk",
            Error::Fenced { .. } => "fenced",
            Error::Unexpected { .. } => "unexpected",
            Error::Closed => "closed",
        }
    }
}

/// A result of the layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
