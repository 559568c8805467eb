//! Health checks of the backends of the apps in the shards this member owns.
//!
//! A backend is marked down after `health_down_after` consecutive failed checks and up
//! after `health_up_after` passed ones. A shard's `health` node lists its down backends
//! and is written only when that list changes, fenced on the shard's claim. A new owner
//! starts from what the node says, so a shard's health survives an owner change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coord::Op;
use futures::StreamExt;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use model::{AppId, HealthCheck, ShardId};
use tokio::sync::watch;

use crate::state::ShardHealth;
use crate::Shared;

/// Checks run at once at most.
const CONCURRENCY: usize = 256;

#[derive(Debug, Default, Clone, Copy)]
struct Probe {
    fails: u32,
    passes: u32,
    down: bool,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// Checks backends until `stop` fires.
pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut probes: HashMap<(AppId, String), Probe> = HashMap::new();
    loop {
        let claims = shared.shards.claims();
        let mut work = Vec::new();
        let mut stored: BTreeMap<ShardId, ShardHealth> = BTreeMap::new();
        {
            let state = shared.state();
            for (shard, _) in &claims {
                let health = state.health(*shard);
                for app in state.apps_in(*shard) {
                    let Some(check) = &app.health_check else {
                        continue;
                    };
                    let down = health.down.get(&app.id);
                    for backend in &app.backends {
                        let key = (app.id.clone(), backend.addr().to_string());
                        // A backend we never checked starts as the stored health says.
                        let was_down = down.is_some_and(|d| d.iter().any(|a| a == backend.addr()));
                        probes.entry(key.clone()).or_insert(Probe {
                            down: was_down,
                            ..Probe::default()
                        });
                        work.push((*shard, key, check.clone()));
                    }
                }
                stored.insert(*shard, health);
            }
        }
        let timeout = shared.config.health_timeout;
        let results: Vec<_> = futures::stream::iter(work)
            .map(|(shard, key, check)| {
                let client = client.clone();
                async move {
                    let up = check_backend(&client, &key.1, &check, timeout).await;
                    (shard, key, up)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut fresh: BTreeMap<ShardId, ShardHealth> = stored
            .keys()
            .map(|s| (*s, ShardHealth::default()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for (shard, key, up) in results {
            let probe = probes.entry(key.clone()).or_default();
            metrics::counter!(crate::metrics::HEALTH_CHECKS, "result" => if up { "up" } else { "down" })
                .increment(1);
            if up {
                probe.passes += 1;
                probe.fails = 0;
                if probe.down && probe.passes >= shared.config.health_up_after {
                    probe.down = false;
                    metrics::counter!(crate::metrics::HEALTH_TRANSITIONS).increment(1);
                    tracing::info!(app = %key.0, backend = %key.1, "backend is up");
                }
            } else {
                probe.fails += 1;
                probe.passes = 0;
                if !probe.down && probe.fails >= shared.config.health_down_after {
                    probe.down = true;
                    metrics::counter!(crate::metrics::HEALTH_TRANSITIONS).increment(1);
                    tracing::warn!(app = %key.0, backend = %key.1, "backend is down");
                }
            }
            if probe.down {
                let entry = fresh.entry(shard).or_default();
                entry
                    .down
                    .entry(key.0.clone())
                    .or_default()
                    .push(key.1.clone());
            }
            seen.insert(key);
        }
        // Forget backends that are no longer ours to check.
        probes.retain(|key, _| seen.contains(key));
        for (shard, mut health) in fresh {
            for addrs in health.down.values_mut() {
                addrs.sort();
            }
            if stored.get(&shard) == Some(&health) {
                continue;
            }
            let Some(claim) = claims.iter().find(|(s, _)| *s == shard).map(|(_, c)| c) else {
                continue;
            };
            let payload = serde_json::to_vec(&health).expect("health serialises");
            let op = Op::Set {
                path: shared.layout.health(shard),
                payload,
                version: None,
            };
            if let Err(err) = shared.zk.fenced(claim, vec![op]).await {
                tracing::warn!(%shard, %err, "cannot write shard health");
            }
        }
        let pause = jitter(shared.config.health_interval);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// `interval` ± 20 %, so that members do not check in step.
fn jitter(interval: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 1000;
    interval.mul_f64(0.8 + random as f64 / 2500.0)
}

async fn check_backend(
    client: &HttpClient,
    addr: &str,
    check: &HealthCheck,
    timeout: Duration,
) -> bool {
    let probe = async {
        match check {
            HealthCheck::Tcp => tokio::net::TcpStream::connect(addr).await.is_ok(),
            HealthCheck::Http { path } => {
                let Ok(uri) = format!("http://{addr}{}", path.as_str()).parse::<http::Uri>() else {
                    return false;
                };
                let request = http::Request::get(uri)
                    .header(http::header::USER_AGENT, "switchyard-health/1")
                    .body(Empty::new());
                let Ok(request) = request else { return false };
                match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        status.is_success() || status.is_redirection()
                    }
                    Err(_) => false,
                }
            }
        }
    };
    tokio::time::timeout(timeout, probe).await.unwrap_or(false)
}
