//! Shard ownership: each member computes its shards by rendezvous hashing over the
//! live members and claims them through their `&owner` nodes.
//!
//! **Invariant:** a shard is never owned by two members (ZooKeeper's `&owner` node
//! decides, and writes are fenced on it), and one whose owner left is claimed as soon
//! as its `&owner` node goes: at once after a graceful release, within a session
//! timeout after a crash.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use coord::Claim;
use model::{MemberId, ShardId};
use tokio::sync::watch;

use crate::Shared;

/// Where this member's ownership stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// Shards it should own.
    pub target: usize,
    /// Shards it owns.
    pub owned: usize,
    /// It has computed targets at least once and owns all of them.
    pub settled: bool,
}

/// The shards this member owns.
#[derive(Debug, Default)]
pub struct Shards {
    claims: Mutex<HashMap<ShardId, Claim>>,
    status: watch::Sender<ShardStatus>,
}

impl Shards {
    /// Shards owned now.
    pub fn owned(&self) -> usize {
        self.lock().len()
    }

    /// The current status.
    pub fn status(&self) -> ShardStatus {
        *self.status.borrow()
    }

    /// Owned shards and their claims.
    pub fn claims(&self) -> Vec<(ShardId, Claim)> {
        self.lock().iter().map(|(s, c)| (*s, c.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShardId, Claim>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives every shard up at once, so others claim them without waiting for this
    /// member's session to time out.
    pub(crate) async fn release_all(&self, shared: &Shared) {
        let claims: Vec<Claim> = self.lock().drain().map(|(_, c)| c).collect();
        let released = futures::future::join_all(claims.iter().map(|c| shared.zk.release(c))).await;
        let failed = released.iter().filter(|r| r.is_err()).count();
        tracing::info!(released = claims.len() - failed, failed, "released shards");
        self.status.send_modify(|s| {
            s.owned = 0;
            s.settled = false;
        });
    }
}

/// Keeps this member's claims equal to its targets until `stop` fires.
pub(crate) async fn run(shared: std::sync::Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let me = shared.member.clone();
    let payload = me.as_str().as_bytes().to_vec();
    let mut members = shared.members.clone();
    let mut session = shared.zk.session();
    loop {
        if *stop.borrow() {
            return;
        }
        let live: Vec<MemberId> = members
            .borrow_and_update()
            .iter()
            .filter_map(|m| m.parse().ok())
            .collect();
        // Until our own member node is listed, we own nothing.
        let targets: BTreeSet<ShardId> = if live.contains(&me) {
            model::shard::shards_for(&me, &live, shared.layout.shard_count())
                .into_iter()
                .collect()
        } else {
            BTreeSet::new()
        };
        let (lost, surplus) = {
            let mut claims = shared.shards.lock();
            let lost: Vec<ShardId> = claims
                .iter()
                .filter(|(_, c)| !shared.zk.holds(c))
                .map(|(s, _)| *s)
                .collect();
            for shard in &lost {
                claims.remove(shard);
            }
            let surplus: Vec<Claim> = claims
                .iter()
                .filter(|(s, _)| !targets.contains(s))
                .map(|(_, c)| c.clone())
                .collect();
            (lost, surplus)
        };
        if !lost.is_empty() {
            tracing::warn!(count = lost.len(), "lost shards with the ZooKeeper session");
        }
        // A claim can also be lost while the session lives: its `&owner` node deleted by
        // hand, or taken. The cache tells which claims to check with ZooKeeper.
        let doubtful: Vec<(ShardId, Claim)> = {
            let state = shared.state();
            shared
                .shards
                .lock()
                .iter()
                .filter(|(s, _)| state.owners().get(*s).map(String::as_str) != Some(me.as_str()))
                .map(|(s, c)| (*s, c.clone()))
                .collect()
        };
        let session_id = shared.zk.session().borrow().id;
        for (shard, claim) in doubtful {
            let ours = match shared
                .zk
                .exists(&format!("{}/{}", claim.path(), coord::OWNER_NODE))
                .await
            {
                Ok(Some(stat)) => stat.ephemeral_owner == session_id,
                Ok(None) => false,
                Err(_) => true, // cannot tell now; look again next round
            };
            if !ours {
                tracing::error!(%shard, "lost a shard: its &owner node is gone or another's");
                shared.shards.lock().remove(&shard);
            }
        }
        for claim in &surplus {
            // Another member should own it now: hand it over at once.
            if shared.zk.release(claim).await.is_ok() {
                let shard = claim.path().rsplit('/').next().and_then(|s| s.parse().ok());
                if let Some(shard) = shard {
                    shared.shards.lock().remove(&shard);
                }
            }
        }
        let missing: Vec<ShardId> = {
            let claims = shared.shards.lock();
            targets
                .iter()
                .filter(|s| !claims.contains_key(s))
                .copied()
                .collect()
        };
        let attempts = futures::future::join_all(missing.iter().map(|shard| {
            let path = shared.layout.shard(*shard);
            let zk = &shared.zk;
            let payload = &payload;
            async move { (*shard, zk.claim(&path, payload).await) }
        }))
        .await;
        for (shard, result) in attempts {
            match result {
                Ok(Some(claim)) => {
                    shared.shards.lock().insert(shard, claim);
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(%shard, %err, "cannot claim shard"),
            }
        }
        let owned = shared.shards.owned();
        let pending = targets.len().saturating_sub(owned);
        shared.shards.status.send_replace(ShardStatus {
            target: targets.len(),
            owned,
            settled: pending == 0 && live.contains(&me),
        });
        metrics::gauge!(crate::metrics::SHARDS_OWNED).set(owned as f64);
        metrics::gauge!(crate::metrics::SHARDS_PENDING).set(pending as f64);
        // Poll quickly while a shard waits for its old owner to go; slowly otherwise.
        let pause = if pending > 0 {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            _ = members.changed() => {}
            _ = session.changed() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}
