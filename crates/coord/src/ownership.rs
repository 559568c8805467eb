//! Ownership of a node through an ephemeral `&owner` child: the post-mortem's lock,
//! at the granularity the caller chooses (Switchyard uses it per shard), and fenced.
//!
//! A claim is one `multi`: create `<path>/&owner` (ephemeral, holding the owner's
//! description) and bump `<path>`'s data version. That version after the claim is the
//! claim's **epoch**. A fenced write is a `multi` that first checks `<path>` is still at
//! that epoch *and* that `&owner` exists: no other claim can have happened since ours
//! (it would have bumped the version) and ours has not lapsed (its ephemeral is there).
//! A member whose session expired, or who was superseded, cannot write.

use crate::batch::Op;
use crate::error::{Error, Result, ZkError};
use crate::zk::{CreateMode, SessionState, Zk};

/// The name of the ephemeral child that marks a node's owner.
pub const OWNER_NODE: &str = "&owner";

/// Ownership of a node, as won by [`Zk::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    path: String,
    owner_path: String,
    epoch: i32,
    generation: u64,
}

impl Claim {
    /// The owned node.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The owned node's data version right after the claim; grows with every claim.
    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    /// The session generation that holds the `&owner` node; the claim is void once the
    /// layer's session generation moves past it.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

fn owner_path(path: &str) -> String {
    format!("{path}/{OWNER_NODE}")
}

impl Zk {
    /// Tries to own `path` (which must exist), describing the owner with `owner`.
    ///
    /// Returns `None` when another session owns it. A node this session already owns
    /// is adopted (after a connection loss hid the first answer).
    pub async fn claim(&self, path: &str, owner: &[u8]) -> Result<Option<Claim>> {
        let owner_path = owner_path(path);
        for _ in 0..20 {
            let generation = self.session().borrow().generation;
            let Some(stat) = self.exists(path).await? else {
                return Err(Error::Zk {
                    path: path.to_string(),
                    source: ZkError::NoNode,
                });
            };
            let claim = self
                .multi(vec![
                    Op::Create {
                        path: owner_path.clone(),
                        payload: owner.to_vec(),
                        mode: CreateMode::Ephemeral,
                    },
                    Op::Set {
                        path: path.to_string(),
                        payload: owner.to_vec(),
                        version: Some(stat.version),
                    },
                ])
                .await;
            match claim {
                Ok(()) if self.session().borrow().generation == generation => {
                    return Ok(Some(Claim {
                        path: path.to_string(),
                        owner_path,
                        epoch: stat.version + 1,
                        generation,
                    }));
                }
                Ok(()) => {
                    return Err(Error::SessionExpired {
                        path: path.to_string(),
                    })
                }
                Err(err) if err.is_node_exists() => return self.adopt(path, owner_path).await,
                // Another claim raced ours between the read and the multi: look again.
                Err(err) if err.is_bad_version() => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    /// `&owner` exists: ours (adopt it) or someone else's (`None`).
    async fn adopt(&self, path: &str, owner_path: String) -> Result<Option<Claim>> {
        let session = *self.session().borrow();
        let Some(owner) = self.exists(&owner_path).await? else {
            return Ok(None); // released meanwhile; the caller may try again
        };
        if owner.ephemeral_owner != session.id {
            return Ok(None);
        }
        // Only claims write the owned node's data, and ours is the last one.
        let Some(stat) = self.exists(path).await? else {
            return Ok(None);
        };
        Ok(Some(Claim {
            path: path.to_string(),
            owner_path,
            epoch: stat.version,
            generation: session.generation,
        }))
    }

    /// Whether a claim still stands as far as this process can tell (its session lives).
    /// ZooKeeper has the last word: see [`Zk::fenced`].
    pub fn holds(&self, claim: &Claim) -> bool {
        let session = *self.session().borrow();
        session.generation == claim.generation
            && matches!(
                session.state,
                SessionState::Connected | SessionState::Disconnected
            )
            && !self.session_ended()
    }

    /// Applies `ops` only if `claim` still stands, atomically.
    ///
    /// Fails with [`Error::Fenced`] when the owner lost the node, and with
    /// [`Error::SessionExpired`] without asking ZooKeeper when this session is not the
    /// claim's.
    pub async fn fenced(&self, claim: &Claim, ops: Vec<Op>) -> Result<()> {
        if !self.holds(claim) {
            return Err(Error::SessionExpired {
                path: claim.path.clone(),
            });
        }
        let mut fenced = Vec::with_capacity(ops.len() + 2);
        fenced.push(Op::Check {
            path: claim.path.clone(),
            version: claim.epoch,
        });
        fenced.push(Op::Check {
            path: claim.owner_path.clone(),
            version: 0,
        });
        fenced.extend(ops);
        match self.multi_bound(fenced, Some(claim.generation)).await {
            Err(Error::Zk { path, source })
                if (path == claim.path || path == claim.owner_path)
                    && matches!(source, ZkError::BadVersion | ZkError::NoNode) =>
            {
                Err(Error::Fenced {
                    path: claim.path.clone(),
                    epoch: claim.epoch,
                })
            }
            other => other,
        }
    }

    /// Gives a node up at once (rather than at session expiry). Releasing a claim that
    /// was already lost is not an error.
    pub async fn release(&self, claim: &Claim) -> Result<()> {
        match self
            .fenced(
                claim,
                vec![Op::Delete {
                    path: claim.owner_path.clone(),
                    version: None,
                }],
            )
            .await
        {
            Ok(()) | Err(Error::Fenced { .. } | Error::SessionExpired { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The current owner's description and the `&owner` node's stat, if owned.
    pub async fn owner(&self, path: &str) -> Result<Option<(Vec<u8>, crate::Stat)>> {
        self.get(&owner_path(path)).await
    }

    /// Waits until `path` has no owner.
    pub async fn wait_unowned(&self, path: &str) -> Result<()> {
        let owner_path = owner_path(path);
        loop {
            let (stat, watch) = self.exists_watch(&owner_path).await?;
            if stat.is_none() {
                return Ok(());
            }
            watch.changed().await;
        }
    }
}
