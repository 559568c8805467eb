//! Single requests sent together under load: creates in shared `multi`s, reads in
//! shared `multiRead`s.
//!
//! A request issued while [`Config::coalesce_above`](crate::Config::coalesce_above)
//! requests are in flight joins a queue instead of going out alone. Whoever queues one
//! then waits for a bulk slot (`multi_in_flight` of them) and, unless another task has
//! sent its request meanwhile, sends a share of the queue, often others' requests.
//! While every bulk slot is busy the queue grows, so the busier ZooKeeper is, the
//! fuller each batch: ZooKeeper does most of its work per request, not per operation.
//!
//! Each request still gets its own answer. ZooKeeper applies a `multi` in order, so
//! each create meets the state it would meet alone; one it refuses gets that refusal
//! and the others go again without it. A batch without a definite answer (a lost
//! connection) sends each request back down its single path, which knows how to
//! retry it. A read's errors come back one by one in a `multiRead`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use tokio::sync::oneshot;
use zookeeper_client as zkc;

use crate::batch::{Encoded, Op};
use crate::error::{Error, Result, ZkError};
use crate::zk::{CreateMode, Stat, Zk};

/// What a `multiRead` of queued reads aims to keep its answer under: the nodes' sizes
/// are unknown before they are read, so batches follow the average size seen so far.
const READ_BATCH_BYTES: usize = 128 * 1024;

/// The queues, kept in the layer's shared state.
#[derive(Default)]
pub(crate) struct Queues {
    creates: VecDeque<QueuedCreate>,
    reads: VecDeque<QueuedRead>,
    /// Average payload size of coalesced reads so far, in bytes (0: none yet).
    read_average_bytes: usize,
}

/// A single create waiting to go out in a shared `multi`, and where its answer goes.
struct QueuedCreate {
    op: Encoded,
    /// The session generation when it was queued.
    generation: u64,
    reply: oneshot::Sender<Coalesced>,
}

/// A node's raw bytes and stat, or `None` when it does not exist.
pub(crate) type Found = Option<(Vec<u8>, Stat)>;

/// A single read waiting to go out in a shared `multiRead`.
struct QueuedRead {
    path: String,
    reply: oneshot::Sender<Coalesced<Found>>,
}

/// What became of a coalesced request.
#[derive(Debug)]
pub(crate) enum Coalesced<T = ()> {
    /// Done. (A create inside a `multi` gets no stat from ZooKeeper 3.8.)
    Done(T),
    /// ZooKeeper refused this request.
    Refused(ZkError),
    /// The batch got no definite answer: the request goes on alone, as after a first
    /// attempt on session `generation` that may (`lost`) or may not have landed.
    Fallback {
        /// The batch may have been applied.
        lost: bool,
        /// The session generation the batch was sent on.
        generation: u64,
    },
}

impl Zk {
    /// Whether a request issued now should join a queue.
    pub(crate) fn congested(&self) -> bool {
        let above = self.config().coalesce_above;
        above > 0 && self.in_flight() >= above
    }

    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.inner()
            .coalescing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a create (already encoded) in a shared `multi`.
    pub(crate) async fn create_coalesced(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<Coalesced> {
        let (reply, answer) = oneshot::channel();
        let generation = self.session().borrow().generation;
        let op = Encoded {
            op: Op::Create {
                path: path.to_string(),
                payload: Vec::new(),
                mode,
            },
            data: data.to_vec(),
        };
        self.queues().creates.push_back(QueuedCreate {
            op,
            generation,
            reply,
        });
        self.take_turn(answer, generation, |zk| async move {
            let batch = zk.take_creates();
            if !batch.is_empty() {
                zk.send_creates(batch).await;
            }
        })
        .await
    }

    /// Reads a node's raw bytes in a shared `multiRead`.
    pub(crate) async fn get_coalesced(&self, path: &str) -> Result<Coalesced<Found>> {
        let (reply, answer) = oneshot::channel();
        let generation = self.session().borrow().generation;
        self.queues().reads.push_back(QueuedRead {
            path: path.to_string(),
            reply,
        });
        self.take_turn(answer, generation, |zk| async move {
            let batch = zk.take_reads();
            if !batch.is_empty() {
                zk.send_reads(batch).await;
            }
        })
        .await
    }

    /// Waits for a bulk slot, unless the request is answered first (another task sent
    /// it): a task whose request is answered must not take a slot to send a few
    /// stragglers, or the queue goes out in many small batches instead of a few full
    /// ones. With the slot, `send` sends a share of the queue.
    async fn take_turn<'a, T, F>(
        &'a self,
        mut answer: oneshot::Receiver<Coalesced<T>>,
        generation: u64,
        send: impl FnOnce(&'a Zk) -> F,
    ) -> Result<Coalesced<T>>
    where
        F: std::future::Future<Output = ()>,
    {
        // A sender dropped unanswered means its task was cancelled mid-send: the batch
        // may or may not have landed.
        let unanswered = Coalesced::Fallback {
            lost: true,
            generation,
        };
        let bulk = tokio::select! {
            biased;
            reply = &mut answer => return Ok(reply.unwrap_or(unanswered)),
            bulk = self.inner().multi_window.acquire() => bulk.map_err(|_| Error::Closed)?,
        };
        send(self).await;
        drop(bulk);
        Ok(answer.await.unwrap_or(unanswered))
    }

    /// Takes the queue's head: up to `multi_ops` creates under the size limit.
    fn take_creates(&self) -> Vec<QueuedCreate> {
        let max_ops = self.config().multi_ops.max(1);
        let limit = self.multi_limit();
        let mut queues = self.queues();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = queues.creates.front() {
            let size = next.op.size();
            if !batch.is_empty() && (batch.len() == max_ops || bytes + size > limit) {
                break;
            }
            bytes += size;
            batch.extend(queues.creates.pop_front());
        }
        batch
    }

    /// Takes the queue's head: up to `multi_ops` reads, fewer when the nodes read so
    /// far were large.
    fn take_reads(&self) -> Vec<QueuedRead> {
        let max_ops = self.config().multi_ops.max(1);
        let mut queues = self.queues();
        let count = match queues.read_average_bytes {
            0 => max_ops.min(16),
            average => (READ_BATCH_BYTES / average).clamp(1, max_ops),
        };
        let count = count.min(queues.reads.len());
        queues.reads.drain(..count).collect()
    }

    /// Sends `batch` as one `multi`, again without each create ZooKeeper refuses, until
    /// every create has its answer.
    async fn send_creates(&self, mut batch: Vec<QueuedCreate>) {
        while !batch.is_empty() {
            let slot = match self.slot().await {
                Ok(slot) => slot,
                Err(_) => {
                    for queued in batch {
                        let generation = queued.generation;
                        let _ = queued.reply.send(Coalesced::Fallback {
                            lost: false,
                            generation,
                        });
                    }
                    return;
                }
            };
            let generation = slot.generation;
            // A create queued on an earlier session must not land on this one.
            let (stale, current): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|q| q.generation != generation && q.op.is_ephemeral());
            for queued in stale {
                let generation = queued.generation;
                let _ = queued.reply.send(Coalesced::Fallback {
                    lost: false,
                    generation,
                });
            }
            batch = current;
            if batch.is_empty() {
                return;
            }
            let mut writer = slot.client.new_multi_writer();
            if let Some(bad) = batch.iter().position(|q| q.op.add_to(&mut writer).is_err()) {
                // A path the client refuses to send: that create learns why alone.
                drop(writer);
                drop(slot);
                let refused = batch.remove(bad);
                let generation = refused.generation;
                let _ = refused.reply.send(Coalesced::Fallback {
                    lost: false,
                    generation,
                });
                continue;
            }
            let result = writer.commit().await;
            drop(slot);
            match result {
                Ok(results) => {
                    self.inner()
                        .coalesced_creates
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    metrics::counter!(crate::metrics::ZK_COALESCED, "op" => "create")
                        .increment(batch.len() as u64);
                    for (queued, result) in batch.drain(..).zip(results) {
                        let answer = match result {
                            zkc::MultiWriteResult::Create { .. } => Coalesced::Done(()),
                            _ => Coalesced::Fallback {
                                lost: true,
                                generation,
                            },
                        };
                        let _ = queued.reply.send(answer);
                    }
                }
                Err(zkc::MultiWriteError::OperationFailed { index, source }) => {
                    let refused = batch.remove(index);
                    let _ = refused.reply.send(Coalesced::Refused(source));
                }
                Err(zkc::MultiWriteError::RequestFailed { source }) => {
                    let lost = !matches!(source, ZkError::Throttled);
                    for queued in batch {
                        let _ = queued.reply.send(Coalesced::Fallback { lost, generation });
                    }
                    return;
                }
            }
        }
    }

    /// Sends `batch` as one `multiRead`; each read gets its own answer.
    async fn send_reads(&self, batch: Vec<QueuedRead>) {
        let fallback = |batch: Vec<QueuedRead>, generation| {
            for queued in batch {
                let _ = queued.reply.send(Coalesced::Fallback {
                    lost: false,
                    generation,
                });
            }
        };
        let Ok(slot) = self.slot().await else {
            return fallback(batch, 0);
        };
        let generation = slot.generation;
        let mut reader = slot.client.new_multi_reader();
        if batch.iter().any(|q| reader.add_get_data(&q.path).is_err()) {
            // A path the client refuses to send: each read learns alone.
            drop(reader);
            drop(slot);
            return fallback(batch, generation);
        }
        let result = reader.commit().await;
        drop(reader);
        drop(slot);
        let results = match result {
            Ok(results) if results.len() == batch.len() => results,
            _ => return fallback(batch, generation),
        };
        let answered = batch.len();
        let (mut bytes, mut read) = (0, 0);
        for (queued, result) in batch.into_iter().zip(results) {
            let answer = match result {
                zkc::MultiReadResult::Data { data, stat } => {
                    bytes += data.len();
                    read += 1;
                    Coalesced::Done(Some((data, stat)))
                }
                zkc::MultiReadResult::Error {
                    err: ZkError::NoNode,
                } => Coalesced::Done(None),
                zkc::MultiReadResult::Error { err } => Coalesced::Refused(err),
                _ => Coalesced::Fallback {
                    lost: false,
                    generation,
                },
            };
            let _ = queued.reply.send(answer);
        }
        if let Some(average) = bytes.checked_div(read) {
            let mut queues = self.queues();
            let average = average.max(1);
            queues.read_average_bytes = match queues.read_average_bytes {
                0 => average,
                old => (old * 7 + average) / 8,
            }
            .max(1);
        }
        self.inner()
            .coalesced_reads
            .fetch_add(answered as u64, Ordering::Relaxed);
        metrics::counter!(crate::metrics::ZK_COALESCED, "op" => "get").increment(answered as u64);
    }
}
