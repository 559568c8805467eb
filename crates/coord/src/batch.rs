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

/// What a bulk write did: how many operations (or groups) landed, and each one that
/// did not.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Operations (for [`Zk::write_groups`], groups) applied.
    pub succeeded: usize,
    /// Operations (groups) refused.
    pub failed: Vec<Refused>,
}

/// One operation, or group, that a bulk write could not apply.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Its position in the input, from 0.
    pub index: usize,
    /// The node of the refused operation (for a group, the one ZooKeeper refused).
    pub path: String,
    /// Why.
    pub error: Error,
}

impl BatchOutcome {
    fn merge(&mut self, other: BatchOutcome) {
        self.succeeded += other.succeeded;
        self.failed.extend(other.failed);
    }
}

/// Operations that must land together, and their position in the input.
#[derive(Debug)]
struct Group {
    index: usize,
    ops: Vec<Encoded>,
}

impl Group {
    fn size(&self) -> usize {
        self.ops.iter().map(Encoded::size).sum()
    }
}

/// An operation with its payload encoded and size-checked.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) op: Op,
    pub(crate) data: Vec<u8>,
}

impl Encoded {
    pub(crate) fn size(&self) -> usize {
        self.op.path().len() + self.data.len() + OP_OVERHEAD_BYTES
    }

    pub(crate) fn add_to(&self, writer: &mut zkc::MultiWriter<'_>) -> Result<(), ZkError> {
        match &self.op {
            Op::Create { path, mode, .. } => writer.add_create(path, &self.data, mode.options()),
            Op::Set { path, version, .. } => writer.add_set_data(path, &self.data, *version),
            Op::Delete { path, version } => writer.add_delete(path, *version),
            Op::Check { path, version } => writer.add_check_version(path, *version),
        }
    }

    pub(crate) fn is_ephemeral(&self) -> bool {
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

    pub(crate) fn multi_limit(&self) -> usize {
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
        let refs: Vec<&Encoded> = encoded.iter().collect();
        match self.commit(&refs, bound).await {
            Ok(()) => {
                self.settle(refs.iter().copied());
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
        self.write_groups(ops.into_iter().map(|op| vec![op])).await
    }

    /// Like [`Zk::write_many`], for groups of operations that must land together: a
    /// group is applied whole or reported whole (by its index), never half.
    pub async fn write_groups<I>(&self, groups: I) -> BatchOutcome
    where
        I: IntoIterator<Item = Vec<Op>>,
    {
        let mut outcome = BatchOutcome::default();
        let mut tasks = JoinSet::new();
        let max_ops = self.config().multi_ops.max(1);
        let max_in_flight = self.config().multi_in_flight.max(1);
        let limit = self.multi_limit();
        let mut chunk: Vec<Group> = Vec::new();
        let (mut chunk_ops, mut chunk_bytes) = (0, 0);
        for (index, ops) in groups.into_iter().enumerate() {
            let group = match self.encode_group(index, ops) {
                Ok(group) => group,
                Err(refused) => {
                    outcome.failed.push(refused);
                    continue;
                }
            };
            let (ops, bytes) = (group.ops.len(), group.size());
            if !chunk.is_empty() && (chunk_ops + ops > max_ops || chunk_bytes + bytes > limit) {
                while tasks.len() >= max_in_flight {
                    outcome.merge(joined(tasks.join_next().await));
                }
                tasks.spawn(commit_chunk(self.clone(), std::mem::take(&mut chunk)));
                (chunk_ops, chunk_bytes) = (0, 0);
            }
            chunk_ops += ops;
            chunk_bytes += bytes;
            chunk.push(group);
        }
        if !chunk.is_empty() {
            tasks.spawn(commit_chunk(self.clone(), chunk));
        }
        while let Some(done) = tasks.join_next().await {
            outcome.merge(joined(Some(done)));
        }
        outcome
    }

    fn encode_group(&self, index: usize, ops: Vec<Op>) -> Result<Group, Refused> {
        let mut encoded = Vec::with_capacity(ops.len());
        for op in ops {
            let path = op.path().to_string();
            match self.encode_op(op) {
                Ok(op) => encoded.push(op),
                Err(error) => return Err(Refused { index, path, error }),
            }
        }
        let group = Group {
            index,
            ops: encoded,
        };
        if group.size() > self.multi_limit() {
            let path = group
                .ops
                .first()
                .map(|e| e.op.path().to_string())
                .unwrap_or_default();
            return Err(Refused {
                index,
                path: path.clone(),
                error: Error::NodeTooLarge {
                    path,
                    size_bytes: group.size(),
                    limit_bytes: self.multi_limit(),
                },
            });
        }
        Ok(group)
    }

    /// Sends one transaction, retrying across connection losses.
    ///
    /// A transaction that creates ephemerals stays on the session of its first attempt;
    /// with `bound`, on that session generation.
    async fn commit(&self, ops: &[&Encoded], bound: Option<u64>) -> Result<(), Failure> {
        let path = ops[0].op.path();
        let has_ephemeral = ops.iter().any(|op| op.is_ephemeral());
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
            for (index, op) in ops.iter().copied().enumerate() {
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
                        && self.applied(ops[index]).await
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
    fn settle<'e>(&self, ops: impl Iterator<Item = &'e Encoded>) {
        for op in ops {
            match &op.op {
                Op::Delete { path, .. } => self.release_ephemeral(path),
                Op::Create {
                    path,
                    mode: CreateMode::Ephemeral,
                    ..
                } => self.hold_ephemerals([path.as_str()]),
                _ => {}
            }
        }
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
fn first_verifiable(ops: &[&Encoded]) -> usize {
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

/// Commits a chunk; a refused group is set aside and the rest committed again.
async fn commit_chunk(zk: Zk, mut groups: Vec<Group>) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    let ephemerals = groups
        .iter()
        .flat_map(|g| &g.ops)
        .filter(|e| e.is_ephemeral())
        .count();
    let first_path = groups[0].ops[0].op.path().to_string();
    let _reservation = match ephemerals {
        0 => None,
        n => match zk.reserve_ephemerals(&first_path, n) {
            Ok(reservation) => Some(reservation),
            Err(error) => {
                for group in groups {
                    let path = group.ops[0].op.path().to_string();
                    let error = error.clone();
                    outcome.failed.push(Refused {
                        index: group.index,
                        path,
                        error,
                    });
                }
                return outcome;
            }
        },
    };
    while !groups.is_empty() {
        let ops: Vec<&Encoded> = groups.iter().flat_map(|g| &g.ops).collect();
        match zk.commit(&ops, None).await {
            Ok(()) => {
                zk.settle(ops.iter().copied());
                outcome.succeeded += groups.len();
                break;
            }
            Err(Failure::Op(op_index, error)) => {
                // Find the group the refused operation belongs to and set it aside.
                let mut at = op_index;
                let position = groups
                    .iter()
                    .position(|g| {
                        if at < g.ops.len() {
                            true
                        } else {
                            at -= g.ops.len();
                            false
                        }
                    })
                    .expect("the refused operation is in the chunk");
                let refused = groups.remove(position);
                let path = refused.ops[at].op.path().to_string();
                outcome.failed.push(Refused {
                    index: refused.index,
                    path,
                    error,
                });
            }
            Err(Failure::All(error)) => {
                for group in groups.drain(..) {
                    let path = group.ops[0].op.path().to_string();
                    let error = error.clone();
                    outcome.failed.push(Refused {
                        index: group.index,
                        path,
                        error,
                    });
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
