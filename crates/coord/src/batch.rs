//! Writes in bulk and atomically: `multi` transactions that stay under the size limit,
//! pipelined through the same window as every other request.
//!
//! A `multi` is all or nothing, which also makes its retry safe: when a connection
//! drops mid-flight and the retry fails on its first operation, reading that one node
//! tells whether the whole earlier attempt landed.

use tokio::task::JoinSet;
use zookeeper_client as zkc;

use crate::error::{Error, Result, ZkError};
use crate::zk::{CreateMode, Retry, Zk};
use crate::REQUEST_OVERHEAD_BYTES;

/// Bytes a `multi` spends on one operation besides its path and data.
const OP_OVERHEAD_BYTES: usize = 64;

/// One write of a `multi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a node holding `payload`.
    Create {
        /// The node.
        path: String,
        /// Its payload, before encoding.
        payload: Vec<u8>,
        /// Persistent or ephemeral.
        mode: CreateMode,
    },
    /// Replace a node's payload, at `version` if given.
    Set {
        /// The node.
        path: String,
        /// Its payload, before encoding.
        payload: Vec<u8>,
        /// The version the node must be at.
        version: Option<i32>,
    },
    /// Delete a node, at `version` if given.
    Delete {
        /// The node.
        path: String,
        /// The version the node must be at.
        version: Option<i32>,
    },
    /// Require a node to be at `version` (fencing).
    Check {
        /// The node.
        path: String,
        /// The version it must be at.
        version: i32,
    },
}

impl Op {
    /// The node the operation is about.
    pub fn path(&self) -> &str {
        match self {
            Op::Create { path, .. }
            | Op::Set { path, .. }
            | Op::Delete { path, .. }
            | Op::Check { path, .. } => path,
        }
    }
}

/// What a bulk write did: how many operations landed, and each one that did not.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Operations applied.
    pub succeeded: usize,
    /// Operations refused, with the node and the reason.
    pub failed: Vec<(String, Error)>,
}

impl BatchOutcome {
    fn merge(&mut self, other: BatchOutcome) {
        self.succeeded += other.succeeded;
        self.failed.extend(other.failed);
    }
}

/// An operation with its payload encoded and size-checked.
#[derive(Debug)]
struct Encoded {
    op: Op,
    data: Vec<u8>,
}

impl Encoded {
    fn size(&self) -> usize {
        self.op.path().len() + self.data.len() + OP_OVERHEAD_BYTES
    }

    fn add_to(&self, writer: &mut zkc::MultiWriter<'_>) -> Result<(), ZkError> {
        match &self.op {
            Op::Create { path, mode, .. } => writer.add_create(path, &self.data, mode.options()),
            Op::Set { path, version, .. } => writer.add_set_data(path, &self.data, *version),
            Op::Delete { path, version } => writer.add_delete(path, *version),
            Op::Check { path, version } => writer.add_check_version(path, *version),
        }
    }

    fn is_ephemeral(&self) -> bool {
        matches!(
            self.op,
            Op::Create {
                mode: CreateMode::Ephemeral,
                ..
            }
        )
    }
}

impl Zk {
    fn encode_op(&self, op: Op) -> Result<Encoded> {
        let data = match &op {
            Op::Create { path, payload, .. } | Op::Set { path, payload, .. } => {
                self.encode(path, payload)?
            }
            Op::Delete { .. } | Op::Check { .. } => Vec::new(),
        };
        Ok(Encoded { op, data })
    }

    fn multi_limit(&self) -> usize {
        self.config()
            .jute_maxbuffer
            .saturating_sub(REQUEST_OVERHEAD_BYTES)
    }

    /// Applies `ops` as one atomic transaction: all land or none does.
    ///
    /// Refused with [`Error::NodeTooLarge`] (naming the first node) when the whole
    /// transaction is over the size limit; a failed operation is reported with its node.
    pub async fn multi(&self, ops: Vec<Op>) -> Result<()> {
        self.multi_bound(ops, None).await
    }

    /// [`Zk::multi`], refused with [`Error::SessionExpired`] unless it runs on session
    /// generation `bound` (when given): work tied to a session must not cross an expiry.
    pub(crate) async fn multi_bound(&self, ops: Vec<Op>, bound: Option<u64>) -> Result<()> {
        let encoded = ops
            .into_iter()
            .map(|op| self.encode_op(op))
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = encoded.first() else {
            return Ok(());
        };
        let size: usize = encoded.iter().map(Encoded::size).sum();
        if size > self.multi_limit() {
            return Err(Error::NodeTooLarge {
                path: first.op.path().to_string(),
                size_bytes: size,
                limit_bytes: self.multi_limit(),
            });
        }
        let ephemerals = encoded.iter().filter(|e| e.is_ephemeral()).count();
        let _reservation = match ephemerals {
            0 => None,
            n => Some(self.reserve_ephemerals(first.op.path(), n)?),
        };
        match self.commit(&encoded, bound).await {
            Ok(()) => {
                self.settle(&encoded);
                Ok(())
            }
            Err(Failure::Op(index, err)) => Err(err).inspect_err(|_| {
                tracing::debug!(index, "multi operation refused");
            }),
            Err(Failure::All(err)) => Err(err),
        }
    }

    /// Applies `ops` in bulk: `multi` transactions of up to `multi_ops` operations
    /// under the size limit, `multi_in_flight` of them at once. Each operation is
    /// applied or reported in [`BatchOutcome::failed`]; one refused operation does not
    /// stop the others. Ops are consumed lazily, so a caller may stream millions.
    pub async fn write_many<I>(&self, ops: I) -> BatchOutcome
    where
        I: IntoIterator<Item = Op>,
    {
        let mut outcome = BatchOutcome::default();
        let mut tasks = JoinSet::new();
        let max_ops = self.config().multi_ops.max(1);
        let max_in_flight = self.config().multi_in_flight.max(1);
        let limit = self.multi_limit();
        let mut chunk: Vec<Encoded> = Vec::with_capacity(max_ops);
        let mut bytes = 0;
        for op in ops {
            let path = op.path().to_string();
            let encoded = match self.encode_op(op) {
                Ok(encoded) => encoded,
                Err(err) => {
                    outcome.failed.push((path, err));
                    continue;
                }
            };
            if !chunk.is_empty() && (chunk.len() >= max_ops || bytes + encoded.size() > limit) {
                while tasks.len() >= max_in_flight {
                    outcome.merge(joined(tasks.join_next().await));
                }
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(max_ops));
                tasks.spawn(commit_chunk(self.clone(), full));
                bytes = 0;
            }
            bytes += encoded.size();
            chunk.push(encoded);
        }
        if !chunk.is_empty() {
            tasks.spawn(commit_chunk(self.clone(), chunk));
        }
        while let Some(done) = tasks.join_next().await {
            outcome.merge(joined(Some(done)));
        }
        outcome
    }

    /// Sends one transaction, retrying across connection losses.
    ///
    /// A transaction that creates ephemerals stays on the session of its first attempt;
    /// with `bound`, on that session generation.
    async fn commit(&self, ops: &[Encoded], bound: Option<u64>) -> Result<(), Failure> {
        let path = ops[0].op.path();
        let has_ephemeral = ops.iter().any(Encoded::is_ephemeral);
        let session_bound = has_ephemeral || bound.is_some();
        let mut retry = Retry::new(self, "multi", path);
        let mut generation = bound;
        loop {
            let _bulk = self.inner().multi_window.acquire().await;
            let slot = self.slot().await.map_err(Failure::All)?;
            if session_bound && *generation.get_or_insert(slot.generation) != slot.generation {
                return Err(Failure::All(retry.expired()));
            }
            let mut writer = slot.client.new_multi_writer();
            for (index, op) in ops.iter().enumerate() {
                if let Err(source) = op.add_to(&mut writer) {
                    return Err(Failure::Op(index, retry.refused(source)));
                }
            }
            let result = writer.commit().await;
            drop(slot);
            match result {
                Ok(_) => {
                    retry.done();
                    return Ok(());
                }
                Err(zkc::MultiWriteError::OperationFailed { index, source }) => {
                    if index == first_verifiable(ops)
                        && retry.after_loss()
                        && self.applied(&ops[index]).await
                    {
                        retry.done();
                        return Ok(());
                    }
                    return Err(Failure::Op(
                        index,
                        Error::Zk {
                            path: ops[index].op.path().to_string(),
                            source,
                        },
                    ));
                }
                Err(zkc::MultiWriteError::RequestFailed { source })
                    if session_bound && source == ZkError::SessionExpired =>
                {
                    return Err(Failure::All(retry.expired()));
                }
                Err(zkc::MultiWriteError::RequestFailed { source }) => {
                    retry.failed(source).await.map_err(Failure::All)?;
                }
            }
        }
    }

    /// Books a committed transaction's ephemeral creates and deletes.
    fn settle(&self, ops: &[Encoded]) {
        for op in ops {
            if let Op::Delete { path, .. } = &op.op {
                self.release_ephemeral(path);
            }
        }
        self.hold_ephemerals(ops.iter().filter(|e| e.is_ephemeral()).map(|e| e.op.path()));
    }

    /// Whether `op` is visibly applied: the check made after a lost connection.
    async fn applied(&self, op: &Encoded) -> bool {
        match &op.op {
            Op::Create { path, .. } => {
                matches!(self.get_raw(path).await, Ok(Some((data, _))) if data == op.data)
            }
            Op::Set { path, version, .. } => matches!(
                self.get_raw(path).await,
                Ok(Some((data, stat))) if data == op.data && version.is_none_or(|v| stat.version == v + 1)
            ),
            Op::Delete { path, .. } => matches!(self.exists(path).await, Ok(None)),
            Op::Check { .. } => false,
        }
    }
}

/// The index of the first operation whose effect can be read back (not a check).
fn first_verifiable(ops: &[Encoded]) -> usize {
    ops.iter()
        .position(|op| !matches!(op.op, Op::Check { .. }))
        .unwrap_or(0)
}

enum Failure {
    /// Operation `index` was refused; nothing of the transaction landed.
    Op(usize, Error),
    /// The transaction could not be sent.
    All(Error),
}

/// Commits a chunk; a refused operation is set aside and the rest committed again.
async fn commit_chunk(zk: Zk, mut ops: Vec<Encoded>) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    let ephemerals = ops.iter().filter(|e| e.is_ephemeral()).count();
    let _reservation = match ephemerals {
        0 => None,
        n => match zk.reserve_ephemerals(ops[0].op.path(), n) {
            Ok(reservation) => Some(reservation),
            Err(err) => {
                for op in ops {
                    outcome.failed.push((op.op.path().to_string(), err.clone()));
                }
                return outcome;
            }
        },
    };
    while !ops.is_empty() {
        match zk.commit(&ops, None).await {
            Ok(()) => {
                zk.settle(&ops);
                outcome.succeeded += ops.len();
                break;
            }
            Err(Failure::Op(index, err)) => {
                let refused = ops.remove(index);
                outcome.failed.push((refused.op.path().to_string(), err));
            }
            Err(Failure::All(err)) => {
                for op in ops.drain(..) {
                    outcome.failed.push((op.op.path().to_string(), err.clone()));
                }
            }
        }
    }
    outcome
}

fn joined(done: Option<Result<BatchOutcome, tokio::task::JoinError>>) -> BatchOutcome {
    match done {
        Some(Ok(outcome)) => outcome,
        Some(Err(err)) => std::panic::resume_unwind(err.into_panic()),
        None => BatchOutcome::default(),
    }
}
