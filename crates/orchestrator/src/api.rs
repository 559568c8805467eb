//! The orchestrator's HTTP face: the admin API for applications, the route stream for
//! gateways, and `/healthz`, `/readyz`, `/metrics` for operators.
//!
//! **Invariant:** `/v1/routes` answers 503 with the reason until the orchestrator is
//! ready: never a partial or empty table (post-mortem lesson 2).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use model::{App, AppId, Domain, StreamLine};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;
use crate::registry::not_found;
use crate::Shared;

/// How often an idle route stream says it is alive.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Route lines per chunk of a snapshot.
const SNAPSHOT_CHUNK: usize = 512;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/routes", get(routes))
        .route("/v1/region", get(region))
        .route("/v1/apps", get(list_apps).post(create_app))
        .route("/v1/apps/import", post(crate::import::import))
        .route(
            "/v1/apps/{id}",
            get(get_app).put(replace_app).delete(delete_app),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.not_ready() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared.record_gauges();
    let text = shared
        .prometheus
        .as_ref()
        .map(|p| p.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Checks the bearer token of a write.
pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), shared.token.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writes need the header `Authorization: Bearer <token>` with the orchestrator's token",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a request body up to `limit` bytes; more is a 413.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let source = err.into_inner();
        let too_large = {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            let mut found = false;
            while let Some(error) = cause {
                found |= error.is::<http_body_util::LengthLimitError>();
                cause = error.source();
            }
            found
        };
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over {limit} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", source.to_string())
        }
    })
}

fn parse_id(id: &str) -> Result<AppId, ApiError> {
    id.parse()
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("id: {err}")))
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "If-Match: expected an app version such as \"3\"",
            )
        })
}

fn with_etag(status: StatusCode, app: &App) -> Response {
    let mut response = (status, Json(app)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", app.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

async fn create_app(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers)?;
    let body = read_body(body, shared.config.max_body_bytes).await?;
    let app = App::from_json(&body).map_err(ApiError::invalid)?;
    let app = shared.create_app(app).await?;
    let mut response = with_etag(StatusCode::CREATED, &app);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/apps/{}", app.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn get_app(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match shared.read_app(&id).await? {
        Some(app) => Ok(with_etag(StatusCode::OK, &app)),
        None => Err(not_found(&id)),
    }
}

async fn replace_app(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers)?;
    let id = parse_id(&id)?;
    let expected = if_match(&headers)?;
    let body = read_body(body, shared.config.max_body_bytes).await?;
    let app = App::from_json(&body).map_err(ApiError::invalid)?;
    let app = shared.replace_app(&id, app, expected).await?;
    Ok(with_etag(StatusCode::OK, &app))
}

async fn delete_app(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&shared, &headers)?;
    let id = parse_id(&id)?;
    let expected = if_match(&headers)?;
    shared.delete_app(&id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
    domain: Option<String>,
}

#[derive(Debug, Serialize)]
struct AppPage {
    apps: Vec<Arc<App>>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

async fn list_apps(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AppPage>, ApiError> {
    let Query(query) =
        query.map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "invalid", err.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("limit: {limit} is not between 1 and 10000"),
        ));
    }
    let state = shared.state();
    if let Some(domain) = query.domain {
        let domain: Domain = domain.parse().map_err(|err| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("domain: {err}"))
        })?;
        let apps = state
            .domain_owner(&domain)
            .and_then(|id| state.app(id))
            .map(|s| vec![Arc::clone(&s.app)])
            .unwrap_or_default();
        return Ok(Json(AppPage { apps, next: None }));
    }
    let after = query.after.as_deref().map(parse_id).transpose()?;
    let apps = state.list(after.as_ref(), limit + 1);
    let next = (apps.len() > limit).then(|| apps[limit - 1].id.to_string());
    let apps = apps.into_iter().take(limit).collect();
    Ok(Json(AppPage { apps, next }))
}

#[derive(Debug, Serialize)]
struct Region {
    member: String,
    members: Vec<String>,
    ready: bool,
    not_ready: Option<String>,
    apps: usize,
    shards: u16,
    shards_owned_here: usize,
    owners: std::collections::BTreeMap<String, usize>,
    unowned: usize,
    route_version: u64,
    route_subscribers: usize,
    undecodable_nodes: usize,
}

async fn region(State(shared): State<Arc<Shared>>) -> Json<Region> {
    let not_ready = shared.not_ready();
    let members = shared.members.borrow().clone();
    let state = shared.state();
    let mut owners = std::collections::BTreeMap::new();
    for owner in state.owners().values() {
        *owners.entry(owner.clone()).or_insert(0) += 1;
    }
    Json(Region {
        member: shared.member.to_string(),
        members,
        ready: not_ready.is_none(),
        not_ready,
        apps: state.app_count(),
        shards: shared.layout.shard_count(),
        shards_owned_here: shared.shards.owned(),
        unowned: usize::from(shared.layout.shard_count()).saturating_sub(state.owners().len()),
        owners,
        route_version: state.version(),
        route_subscribers: state.subscribers(),
        undecodable_nodes: state.undecodable(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesQuery {
    since: Option<u64>,
}

/// `GET /v1/routes[?since=V]`: a snapshot (or a resume), then live changes, as NDJSON.
async fn routes(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<RoutesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "invalid", err.body_text()))?;
    if let Some(reason) = shared.not_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("no route table from an orchestrator that is not ready: {reason}"),
        ));
    }
    // Subscribe before reading the state, so no change falls between the two.
    let (mut changes, start, version) = {
        let state = shared.state();
        let changes = state.subscribe();
        let version = state.version();
        let resumed = query
            .since
            .and_then(|since| state.changes_since(since).map(|log| (since, log)));
        let start = match resumed {
            Some((since, log)) => Start::Resume { since, log },
            None => Start::Snapshot {
                routes: state.route_sources(),
            },
        };
        (changes, start, version)
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    metrics::gauge!(crate::metrics::ROUTE_SUBSCRIBERS).increment(1.0);
    let mut stopping = shared.stopping.clone();
    tokio::spawn(async move {
        let _gauge = Decrement;
        if !start.send(version, &sender).await {
            return;
        }
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        let mut last = version;
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok((v, line)) if v > last => {
                        last = v;
                        if sender.send(Bytes::from(line.to_line())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Too slow to keep up: end the stream; the gateway resumes from `last`.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = ping.tick() => {
                    let line = StreamLine::Ping { version: last }.to_line();
                    if sender.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
                _ = sender.closed() => return,
                // Stopping: end the stream so the gateway fails over at once.
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => return,
            }
        }
    });
    let stream = byte_stream(receiver);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

struct Decrement;

impl Drop for Decrement {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::ROUTE_SUBSCRIBERS).decrement(1.0);
    }
}

fn byte_stream(
    mut receiver: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).map(Ok)
}

enum Start {
    Snapshot {
        routes: Vec<crate::state::RouteSource>,
    },
    Resume {
        since: u64,
        log: Vec<(u64, Arc<StreamLine>)>,
    },
}

impl Start {
    /// Sends the start of a stream; `false` when the client went away.
    async fn send(self, version: u64, sender: &tokio::sync::mpsc::Sender<Bytes>) -> bool {
        match self {
            Start::Snapshot { routes } => {
                let head = StreamLine::Snapshot {
                    version,
                    routes: routes.len() as u64,
                };
                if sender.send(Bytes::from(head.to_line())).await.is_err() {
                    return false;
                }
                for chunk in routes.chunks(SNAPSHOT_CHUNK) {
                    let mut buf = Vec::with_capacity(chunk.len() * 160);
                    for route in chunk {
                        route.write_line(&mut buf);
                    }
                    if sender.send(Bytes::from(buf)).await.is_err() {
                        return false;
                    }
                }
                let ready = StreamLine::Ready { version }.to_line();
                sender.send(Bytes::from(ready)).await.is_ok()
            }
            Start::Resume { since, log } => {
                let head = StreamLine::Resume { version: since }.to_line();
                if sender.send(Bytes::from(head)).await.is_err() {
                    return false;
                }
                for (v, line) in log {
                    if v > version {
                        break; // the live part sends it
                    }
                    if sender.send(Bytes::from(line.to_line())).await.is_err() {
                        return false;
                    }
                }
                true
            }
        }
    }
}
