//! Node-size audit: walks a tree and reports the largest nodes, the widest parents,
//! and every node whose data, or whose list of children, is over a share of the size
//! limit (post-mortem lesson 4: the node that took the region down had grown past
//! `jute.maxbuffer` unwatched).
//!
//! Only stats and child names are read, never data, with bounded concurrency on top of
//! the layer's window, so a million nodes can be audited without a million in flight.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use crate::error::Result;
use crate::zk::Zk;

/// What to audit.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The tree's root.
    pub root: String,
    /// Share of the limit above which a node is reported (0.9 = 90 %).
    pub threshold: f64,
    /// How many of the largest nodes and widest parents to list.
    pub top: usize,
    /// Nodes read at once.
    pub concurrency: usize,
}

/// One node's sizes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NodeSize {
    /// The node.
    pub path: String,
    /// Its data, in bytes.
    pub data_bytes: usize,
    /// Its children.
    pub children: usize,
    /// The size of the reply listing its children, in bytes (what a `getChildren`
    /// must fit in the client's `jute.maxbuffer`).
    pub children_list_bytes: usize,
}

/// What an audit found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The tree's root.
    pub root: String,
    /// Nodes visited.
    pub nodes: u64,
    /// The limit sizes are compared with, in bytes.
    pub limit_bytes: usize,
    /// The share of the limit that counts as over.
    pub threshold: f64,
    /// The largest nodes by data, largest first.
    pub largest: Vec<NodeSize>,
    /// The parents with most children, widest first.
    pub widest: Vec<NodeSize>,
    /// Every node over the threshold, by data or by child list, largest first.
    pub over: Vec<NodeSize>,
}

impl AuditReport {
    /// Whether anything is over the threshold.
    pub fn alarming(&self) -> bool {
        !self.over.is_empty()
    }
}

/// Keeps the `k` greatest items seen.
struct Top<T: Ord> {
    k: usize,
    heap: BinaryHeap<Reverse<T>>,
}

impl<T: Ord> Top<T> {
    fn new(k: usize) -> Self {
        Top {
            k,
            heap: BinaryHeap::new(),
        }
    }

    fn offer(&mut self, item: T) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Reverse(item));
        } else if self.heap.peek().is_some_and(|Reverse(least)| item > *least) {
            self.heap.pop();
            self.heap.push(Reverse(item));
        }
    }

    fn into_sorted(self) -> Vec<T> {
        let mut items: Vec<T> = self.heap.into_iter().map(|Reverse(t)| t).collect();
        items.sort_by(|a, b| b.cmp(a));
        items
    }
}

impl Zk {
    /// Walks the tree under `options.root`, calling `progress` with the count of nodes
    /// visited every few thousand nodes.
    pub async fn audit(
        &self,
        options: &AuditOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<AuditReport> {
        let limit = self.config().jute_maxbuffer;
        let alarm = (limit as f64 * options.threshold) as usize;
        let mut largest = Top::new(options.top);
        let mut widest = Top::new(options.top);
        let mut over = Vec::new();
        let mut nodes = 0u64;
        let mut queue = vec![options.root.clone()];
        let mut pending = FuturesUnordered::new();
        loop {
            while pending.len() < options.concurrency.max(1) {
                let Some(path) = queue.pop() else { break };
                pending.push(self.node_size(path));
            }
            let Some(read) = pending.next().await else {
                break;
            };
            let Some((size, children)) = read? else {
                continue;
            };
            nodes += 1;
            if nodes % 10_000 == 0 {
                progress(nodes);
            }
            let parent = size.path.clone();
            queue.extend(children.into_iter().map(|c| {
                if parent == "/" {
                    format!("/{c}")
                } else {
                    format!("{parent}/{c}")
                }
            }));
            if size.data_bytes > alarm || size.children_list_bytes > alarm {
                over.push(size.clone());
            }
            widest.offer((size.children, size.clone()));
            largest.offer((size.data_bytes, size));
        }
        progress(nodes);
        over.sort_by(|a, b| {
            let key = |n: &NodeSize| n.data_bytes.max(n.children_list_bytes);
            key(b).cmp(&key(a))
        });
        Ok(AuditReport {
            root: options.root.clone(),
            nodes,
            limit_bytes: limit,
            threshold: options.threshold,
            largest: largest.into_sorted().into_iter().map(|(_, n)| n).collect(),
            widest: widest
                .into_sorted()
                .into_iter()
                .filter(|(children, _)| *children > 0)
                .map(|(_, n)| n)
                .collect(),
            over,
        })
    }

    /// A node's sizes and its children's names; `None` if it vanished meanwhile.
    async fn node_size(&self, path: String) -> Result<Option<(NodeSize, Vec<String>)>> {
        let Some(stat) = self.exists(&path).await? else {
            return Ok(None);
        };
        let children = if stat.num_children > 0 {
            match self.children(&path).await {
                Ok(children) => children,
                Err(err) if err.is_no_node() => return Ok(None),
                Err(err) => return Err(err),
            }
        } else {
            Vec::new()
        };
        // A getChildren reply: header, stat, then a length-prefixed string per child.
        let children_list_bytes = 16 + 80 + 4 + children.iter().map(|c| 4 + c.len()).sum::<usize>();
        let size = NodeSize {
            path,
            data_bytes: usize::try_from(stat.data_length).unwrap_or(0),
            children: children.len(),
            children_list_bytes: if children.is_empty() {
                0
            } else {
                children_list_bytes
            },
        };
        Ok(Some((size, children)))
    }
}
