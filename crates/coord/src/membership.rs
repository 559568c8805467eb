//! Membership: one ephemeral node per live member under a folder, and the set of
//! members kept current through a watch on that folder.
//!
//! A member re-registers by itself after its session expires, so the set a component
//! reads is always "who is alive now", including itself once it is back.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::zk::{CreateMode, SessionState, Zk};

/// This process's membership in a group.
#[derive(Debug)]
pub struct Membership {
    zk: Zk,
    path: String,
    members: watch::Receiver<Vec<String>>,
    task: JoinHandle<()>,
}

impl Membership {
    /// Registers `id` under `dir` (created if missing) with `payload` as its
    /// description, and starts following the group.
    ///
    /// A node left by an earlier incarnation of the same member is waited out (its
    /// session times out); a live member with the same id is an error after twice the
    /// session timeout.
    pub async fn join(zk: &Zk, dir: &str, id: &str, payload: &[u8]) -> Result<Membership> {
        zk.ensure_path(dir).await?;
        let path = format!("{dir}/{id}");
        register(zk, &path, payload).await?;
        let (children, watch) = zk.children_watch(dir).await?;
        let (sender, members) = watch::channel(sorted(children));
        let task = tokio::spawn(follow(
            zk.clone(),
            dir.to_string(),
            path.clone(),
            payload.to_vec(),
            sender,
            watch,
        ));
        Ok(Membership {
            zk: zk.clone(),
            path,
            members,
            task,
        })
    }

    /// The live members' ids, sorted; `.changed()` wakes on every change.
    pub fn members(&self) -> watch::Receiver<Vec<String>> {
        self.members.clone()
    }

    /// Leaves the group now, without waiting for a session timeout.
    pub async fn leave(self) -> Result<()> {
        self.task.abort();
        match self.zk.delete(&self.path, None).await {
            Err(err) if err.is_no_node() => Ok(()),
            other => other,
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sorted(mut children: Vec<String>) -> Vec<String> {
    children.sort_unstable();
    children
}

async fn register(zk: &Zk, path: &str, payload: &[u8]) -> Result<()> {
    let deadline = Instant::now() + zk.config().session_timeout * 2;
    loop {
        match zk.create(path, payload, CreateMode::Ephemeral).await {
            Ok(_) => return Ok(()),
            Err(err) if err.is_node_exists() && Instant::now() < deadline => {
                let id = zk.session().borrow().id;
                match zk.exists(path).await? {
                    Some(stat) if stat.ephemeral_owner == id => return Ok(()),
                    Some(_) => {
                        tracing::warn!(
                            zk.path = path,
                            "member node held by another session; waiting for it to expire"
                        );
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    None => {}
                }
            }
            Err(err) => return Err(err),
        }
    }
}

/// Keeps `members` current; re-registers after a session expiry.
async fn follow(
    zk: Zk,
    dir: String,
    path: String,
    payload: Vec<u8>,
    members: watch::Sender<Vec<String>>,
    watch: crate::Watch,
) {
    let mut session = zk.session();
    let mut generation = session.borrow_and_update().generation;
    let mut fired = Box::pin(watch.changed());
    loop {
        tokio::select! {
            _ = &mut fired => {}
            changed = session.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *session.borrow_and_update();
                match now.state {
                    SessionState::Closed => return,
                    SessionState::Connected if now.generation != generation => {
                        generation = now.generation;
                        tracing::info!(zk.path = %path, "re-registering after session expiry");
                        if let Err(err) = register(&zk, &path, &payload).await {
                            tracing::error!(zk.path = %path, %err, "cannot re-register member");
                        }
                    }
                    _ => continue,
                }
            }
        }
        // Re-list (and re-watch) until it works; the watch fired or the session changed.
        let watch = loop {
            match zk.children_watch(&dir).await {
                Ok((children, watch)) => {
                    members.send_if_modified(|current| {
                        let children = sorted(children);
                        let changed = *current != children;
                        *current = children;
                        changed
                    });
                    break watch;
                }
                Err(Error::Closed) => return,
                Err(err) => {
                    tracing::warn!(zk.path = %dir, %err, "cannot list members; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        fired = Box::pin(watch.changed());
    }
}
