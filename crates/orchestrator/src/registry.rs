//! Writing applications: each app is its node plus one index node per domain, written
//! together in one `multi`, so a domain can never belong to two apps and nothing is
//! half-written. Reads of a single app go to ZooKeeper; lists come from the cache.
//!
//! After a write, the call waits (briefly) until this orchestrator's cache shows it, so
//! that a client reading back through the same orchestrator sees its own write.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use coord::{CreateMode, Op};
use model::{App, AppId, Domain};

use crate::error::ApiError;
use crate::Shared;

/// How long a write waits for the cache to show it before answering anyway.
const CACHE_WAIT: Duration = Duration::from_secs(5);

fn encode(app: &App) -> Vec<u8> {
    let mut stored = app.clone();
    stored.version = 0; // the node's data version is the app's version
    serde_json::to_vec(&stored).expect("apps serialise")
}

fn conflict(domain: &Domain, owner: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "domain_conflict",
        format!("domain {domain} already belongs to app {owner}"),
    )
}

impl Shared {
    /// The operations that create `app` (its node and its domains' index nodes).
    pub(crate) fn create_ops(&self, app: &App) -> Vec<Op> {
        let mut ops = Vec::with_capacity(1 + app.domains.len());
        ops.push(Op::Create {
            path: self.layout.app(&app.id),
            payload: encode(app),
            mode: CreateMode::Persistent,
        });
        ops.extend(app.domains.iter().map(|domain| Op::Create {
            path: self.layout.domain(domain),
            payload: app.id.as_str().as_bytes().to_vec(),
            mode: CreateMode::Persistent,
        }));
        ops
    }

    /// Refuses domains that the cache says belong to another app.
    pub(crate) fn check_domains(&self, app: &App) -> Result<(), ApiError> {
        let state = self.state();
        for domain in &app.domains {
            if let Some(owner) = state.domain_owner(domain) {
                if *owner != app.id {
                    return Err(conflict(domain, owner.as_str()));
                }
            }
        }
        Ok(())
    }

    /// Turns a refused `multi` into the answer a client can act on.
    async fn explain(&self, err: coord::Error, app: &AppId) -> ApiError {
        match &err {
            coord::Error::Zk { path, .. } if err.is_node_exists() => {
                if *path == self.layout.app(app) {
                    return ApiError::new(
                        StatusCode::CONFLICT,
                        "app_exists",
                        format!("app {app} already exists; replace it with PUT"),
                    );
                }
                let owner = match self.zk.get(path).await {
                    Ok(Some((data, _))) => String::from_utf8_lossy(&data).into_owned(),
                    _ => "another app".to_string(),
                };
                let domain = path.rsplit('/').next().unwrap_or(path);
                ApiError::new(
                    StatusCode::CONFLICT,
                    "domain_conflict",
                    format!("domain {domain} already belongs to app {owner}"),
                )
            }
            _ => err.into(),
        }
    }

    /// Creates an application at version 0.
    pub(crate) async fn create_app(&self, mut app: App) -> Result<App, ApiError> {
        app.version = 0;
        self.check_domains(&app)?;
        if let Err(err) = self.zk.multi(self.create_ops(&app)).await {
            return Err(self.explain(err, &app.id).await);
        }
        self.wait_cached(&app.id, Some(0)).await;
        Ok(app)
    }

    /// Reads an application from ZooKeeper (not the cache): what was just written.
    pub(crate) async fn read_app(&self, id: &AppId) -> Result<Option<App>, ApiError> {
        let path = self.layout.app(id);
        let Some((data, stat)) = self.zk.get(&path).await? else {
            return Ok(None);
        };
        let mut app: App = serde_json::from_slice(&data).map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt",
                format!("{path} holds an unreadable app: {err}"),
            )
        })?;
        app.version = u64::try_from(stat.version).unwrap_or(0);
        Ok(Some(app))
    }

    /// Replaces an application; with `if_match`, only if it is at that version.
    pub(crate) async fn replace_app(
        &self,
        id: &AppId,
        mut app: App,
        if_match: Option<u64>,
    ) -> Result<App, ApiError> {
        if app.id != *id {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("id: the body's id {} differs from the URL's {id}", app.id),
            ));
        }
        self.check_domains(&app)?;
        for _ in 0..10 {
            let Some(current) = self.read_app(id).await? else {
                return Err(not_found(id));
            };
            if let Some(expected) = if_match {
                if expected != current.version {
                    return Err(precondition(id, expected, current.version));
                }
            }
            let old: HashSet<&Domain> = current.domains.iter().collect();
            let new: HashSet<&Domain> = app.domains.iter().collect();
            let mut ops = vec![Op::Set {
                path: self.layout.app(id),
                payload: encode(&app),
                version: Some(current.version as i32),
            }];
            ops.extend(old.difference(&new).map(|d| Op::Delete {
                path: self.layout.domain(d),
                version: None,
            }));
            ops.extend(new.difference(&old).map(|d| Op::Create {
                path: self.layout.domain(d),
                payload: id.as_str().as_bytes().to_vec(),
                mode: CreateMode::Persistent,
            }));
            match self.zk.multi(ops).await {
                Ok(()) => {
                    app.version = current.version + 1;
                    self.wait_cached(id, Some(app.version)).await;
                    return Ok(app);
                }
                // Changed between our read and our write.
                Err(err) if err.is_bad_version() => {
                    if let Some(expected) = if_match {
                        return Err(precondition(id, expected, expected + 1));
                    }
                }
                Err(err) => return Err(self.explain(err, id).await),
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "busy",
            format!("app {id} kept changing while being replaced; try again"),
        ))
    }

    /// Deletes an application and its domains; with `if_match`, only at that version.
    pub(crate) async fn delete_app(
        &self,
        id: &AppId,
        if_match: Option<u64>,
    ) -> Result<(), ApiError> {
        for _ in 0..10 {
            let Some(current) = self.read_app(id).await? else {
                return Err(not_found(id));
            };
            if let Some(expected) = if_match {
                if expected != current.version {
                    return Err(precondition(id, expected, current.version));
                }
            }
            let mut ops = vec![Op::Delete {
                path: self.layout.app(id),
                version: Some(current.version as i32),
            }];
            for domain in &current.domains {
                let path = self.layout.domain(domain);
                // An index node that is missing or names another app is left alone.
                if let Ok(Some((owner, _))) = self.zk.get(&path).await {
                    if owner == id.as_str().as_bytes() {
                        ops.push(Op::Delete {
                            path,
                            version: None,
                        });
                    }
                }
            }
            match self.zk.multi(ops).await {
                Ok(()) => {
                    self.wait_cached(id, None).await;
                    return Ok(());
                }
                Err(err) if err.is_bad_version() || err.is_no_node() => {
                    if let Some(expected) = if_match {
                        return Err(precondition(id, expected, expected + 1));
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "busy",
            format!("app {id} kept changing while being deleted; try again"),
        ))
    }

    /// Waits until the cache shows `id` at `version` (or gone, for `None`).
    pub(crate) async fn wait_cached(&self, id: &AppId, version: Option<u64>) {
        let mut applied = self.applied.subscribe();
        let wait = async {
            loop {
                let cached = self.state().app(id).map(|s| s.app.version);
                let done = match version {
                    Some(v) => cached.is_some_and(|c| c >= v),
                    None => cached.is_none(),
                };
                if done || applied.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(CACHE_WAIT, wait).await.is_err() {
            tracing::warn!(app = %id, "write not yet visible in this orchestrator's cache");
        }
    }
}

pub(crate) fn not_found(id: &AppId) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no app {id}"))
}

fn precondition(id: &AppId, expected: u64, actual: u64) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "version_mismatch",
        format!("app {id} is at version {actual}, not {expected} (If-Match); read it again"),
    )
}
