//! Where the region lives in ZooKeeper, and creating it.
//!
//! ```text
//! /switchyard/<region>/
//!   meta                        {"schema":1,"shards":S}, written last at creation
//!   members/<member-id>         ephemeral: an orchestrator's address
//!   shards/<0000..S-1>          data: the last claimant (its version is the epoch)
//!      &owner                   ephemeral: the owning member
//!      apps/<app-id>            one application (JSON)
//!      health                   the shard's down backends (JSON)
//!   domains/<0000..S-1>/<name>  the app that owns a domain: uniqueness, atomically
//! ```

use coord::{CreateMode, Op, Zk};
use model::{AppId, Domain, ShardId};
use serde::{Deserialize, Serialize};

/// The schema this build writes and reads.
pub const SCHEMA: u32 = 1;

/// The region's paths.
#[derive(Debug, Clone)]
pub struct Layout {
    root: String,
    shards: u16,
}

/// The region's `meta` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Schema version.
    pub schema: u32,
    /// Shard count, fixed at creation.
    pub shards: u16,
}

/// What a path in the shards subtree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An application's node.
    App(ShardId, AppId),
    /// A shard's health node.
    Health(ShardId),
    /// A shard's `&owner` node.
    Owner(ShardId),
    /// Anything else (folders).
    Other,
}

impl Layout {
    /// The layout of `region`, before its shard count is known.
    pub fn new(region: &str) -> Layout {
        Layout {
            root: format!("/switchyard/{region}"),
            shards: 0,
        }
    }

    /// The region's root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Shards in the region (0 until [`Layout::open`]).
    pub fn shard_count(&self) -> u16 {
        self.shards
    }

    /// `meta`.
    pub fn meta(&self) -> String {
        format!("{}/meta", self.root)
    }

    /// The members' folder.
    pub fn members(&self) -> String {
        format!("{}/members", self.root)
    }

    /// The shards' folder: the tree the orchestrators cache.
    pub fn shards(&self) -> String {
        format!("{}/shards", self.root)
    }

    /// One shard's node.
    pub fn shard(&self, shard: ShardId) -> String {
        format!("{}/shards/{shard}", self.root)
    }

    /// The shard an application lives in.
    pub fn shard_of(&self, app: &AppId) -> ShardId {
        model::shard::shard_of(app, self.shards)
    }

    /// An application's node.
    pub fn app(&self, app: &AppId) -> String {
        format!("{}/shards/{}/apps/{app}", self.root, self.shard_of(app))
    }

    /// A shard's health node.
    pub fn health(&self, shard: ShardId) -> String {
        format!("{}/shards/{shard}/health", self.root)
    }

    /// A domain's index node.
    pub fn domain(&self, domain: &Domain) -> String {
        let shard = model::shard::stable_hash(domain.as_str().as_bytes()) % u64::from(self.shards);
        format!("{}/domains/{}/{domain}", self.root, ShardId(shard as u16))
    }

    /// Classifies a path of the cached shards subtree.
    pub fn classify(&self, path: &str) -> Node {
        let Some(rest) = path
            .strip_prefix(self.root.as_str())
            .and_then(|p| p.strip_prefix("/shards/"))
        else {
            return Node::Other;
        };
        let mut parts = rest.split('/');
        let Some(Ok(shard)) = parts.next().map(str::parse::<ShardId>) else {
            return Node::Other;
        };
        match (parts.next(), parts.next(), parts.next()) {
            (Some("apps"), Some(app), None) => match app.parse() {
                Ok(app) => Node::App(shard, app),
                Err(_) => Node::Other,
            },
            (Some("health"), None, None) => Node::Health(shard),
            (Some(coord::OWNER_NODE), None, None) => Node::Owner(shard),
            _ => Node::Other,
        }
    }

    /// Opens the region, creating it with `shards` shards if it does not exist yet.
    /// Returns the layout with the region's real shard count.
    pub async fn open(mut self, zk: &Zk, shards: u16) -> Result<Layout, crate::Error> {
        if let Some(meta) = self.read_meta(zk).await? {
            self.shards = meta.shards;
            return Ok(self);
        }
        tracing::info!(root = %self.root, shards, "creating the region");
        self.shards = shards;
        zk.ensure_path(&self.members()).await?;
        zk.ensure_path(&self.shards()).await?;
        zk.ensure_path(&format!("{}/domains", self.root)).await?;
        let empty_health =
            serde_json::to_vec(&crate::state::ShardHealth::default()).expect("health serialises");
        let folder = |path: String| Op::Create {
            path,
            payload: Vec::new(),
            mode: CreateMode::Persistent,
        };
        // One group per shard, parents before children: a multi applies its operations
        // in order, while separate multis can reach ZooKeeper in any order.
        let groups = (0..shards).map(|s| {
            let shard = self.shard(ShardId(s));
            vec![
                folder(shard.clone()),
                folder(format!("{shard}/apps")),
                Op::Create {
                    path: self.health(ShardId(s)),
                    payload: empty_health.clone(),
                    mode: CreateMode::Persistent,
                },
                folder(format!("{}/domains/{}", self.root, ShardId(s))),
            ]
        });
        let outcome = zk.write_groups(groups).await;
        // Another orchestrator creating the region at the same time is fine.
        if let Some(refused) = outcome.failed.iter().find(|r| !r.error.is_node_exists()) {
            return Err(refused.error.clone().into());
        }
        let meta = Meta {
            schema: SCHEMA,
            shards,
        };
        let payload = serde_json::to_vec(&meta).expect("meta serialises");
        match zk
            .create(&self.meta(), &payload, CreateMode::Persistent)
            .await
        {
            Ok(_) => Ok(self),
            Err(err) if err.is_node_exists() => {
                let meta = self.read_meta(zk).await?.expect("meta exists");
                self.shards = meta.shards;
                Ok(self)
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn read_meta(&self, zk: &Zk) -> Result<Option<Meta>, crate::Error> {
        let Some((data, _)) = zk.get(&self.meta()).await? else {
            return Ok(None);
        };
        let meta: Meta = serde_json::from_slice(&data).map_err(|err| crate::Error::Corrupt {
            path: self.meta(),
            detail: err.to_string(),
        })?;
        if meta.schema > SCHEMA {
            return Err(crate::Error::Corrupt {
                path: self.meta(),
                detail: format!(
                    "schema {} is newer than this build's {SCHEMA}: upgrade this orchestrator",
                    meta.schema
                ),
            });
        }
        if meta.shards == 0 {
            return Err(crate::Error::Corrupt {
                path: self.meta(),
                detail: "the region has 0 shards".into(),
            });
        }
        Ok(Some(meta))
    }
}
