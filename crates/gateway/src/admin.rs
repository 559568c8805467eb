//! The admin API, on its own address (loopback by default): health, readiness,
//! Prometheus metrics, route look-ups, and the held updates an operator confirms.
//!
//! | | |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once a table is loaded (from disk or an orchestrator), else 503 and why |
//! | `GET /metrics` | Prometheus text |
//! | `GET /routes/{host}` | the route a request for `host` takes, as JSON, with `backend_state`: per backend, in its order, what the proxy knows of it (requests in flight, idle connections, connects and failed connects, whether it is ejected), `null` before its first request; 404 if none |
//! | `GET /admin/held` | `{"held": null}`, or the held update |
//! | `POST /admin/confirm` | body `{"version": V}`: applies the held update `V` names |
//! | `POST /admin/tls/reload` | reads the TLS certificate folder again; 422 and why if it fails (the old set stays) |
//!
//! Errors are JSON: `{"error": "<code>", "detail": "<what to do>"}`. There is no
//! authentication: whoever reaches this address can confirm a deletion.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::sync::{ConfirmError, Control};

/// Serves the admin API on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(control))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/routes/{host}", get(route))
        .route("/admin/held", get(held))
        .route("/admin/confirm", post(confirm))
        .route("/admin/tls/reload", post(tls_reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(control)
}

/// A JSON error body with its status.
fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    let body = json!({ "error": code, "detail": detail.into() });
    (status, Json(body)).into_response()
}

/// The process id tells a supervisor which of two gateways sharing a port (during a
/// restart beside the old one) answered.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "pid": std::process::id() }))
}

async fn readyz(State(control): State<Arc<Control>>) -> Response {
    match control.readiness() {
        Ok(()) => {
            let table = control.table().load();
            Json(json!({
                "ready": true,
                "pid": std::process::id(),
                "table_version": table.version(),
                "routes": table.len(),
                "staleness_seconds": control.staleness().as_secs_f64(),
            }))
            .into_response()
        }
        Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why),
    }
}

async fn metrics(State(control): State<Arc<Control>>) -> Response {
    let text = control.render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn route(State(control): State<Arc<Control>>, Path(host): Path<String>) -> Response {
    let Some(normalized) = model::normalize_host(&host) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_host",
            format!("{host:?} is not a host name a request could carry"),
        );
    };
    let table = control.table().load();
    match table.lookup(&normalized) {
        Some(route) => {
            let route = route.to_model();
            let proxy = control.proxy.get().and_then(std::sync::Weak::upgrade);
            let state: Vec<serde_json::Value> = route
                .backends
                .iter()
                .map(|backend| {
                    let Some(stats) = proxy.as_ref().and_then(|p| p.backend(backend.addr())) else {
                        return serde_json::Value::Null;
                    };
                    json!({
                        "in_flight": stats.in_flight,
                        "idle_connections": stats.idle_connections,
                        "connects_total": stats.connects_total,
                        "connect_failures_total": stats.connect_failures_total,
                        "ejected": stats.ejected,
                    })
                })
                .collect();
            let mut body = json!(route);
            body["backend_state"] = state.into();
            Json(body).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "no_route",
            format!(
                "no route for {normalized} in the table at version {}",
                table.version()
            ),
        ),
    }
}

async fn held(State(control): State<Arc<Control>>) -> Json<serde_json::Value> {
    Json(json!({ "held": control.held() }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    version: u64,
}

async fn confirm(State(control): State<Arc<Control>>, body: Bytes) -> Response {
    let version = match serde_json::from_slice::<ConfirmBody>(&body) {
        Ok(body) => body.version,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"version\": <the held version from GET /admin/held>}}: {e}"),
            )
        }
    };
    match control.confirm(version) {
        Ok((version, routes)) => Json(json!({
            "applied": { "table_version": version, "routes": routes }
        }))
        .into_response(),
        Err(ConfirmError::NothingHeld) => error(
            StatusCode::NOT_FOUND,
            "nothing_held",
            "no route table update is held",
        ),
        Err(ConfirmError::OtherVersion(held)) => error(
            StatusCode::CONFLICT,
            "version_mismatch",
            format!(
                "version {version} does not name the held update (versions {} to {}): check GET /admin/held again",
                held.version, held.latest_version
            ),
        ),
    }
}

/// Reads the TLS certificate folder again; a folder that fails to load leaves the
/// certificates in use and says why.
async fn tls_reload(State(control): State<Arc<Control>>) -> Response {
    let Some(tls) = control.tls.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "no_tls",
            "this gateway serves no TLS (start it with --tls-listen and --tls-certs)",
        );
    };
    match tokio::task::spawn_blocking(move || tls.reload()).await {
        Ok(Ok(files)) => Json(json!({ "reloaded": { "files": files } })).into_response(),
        Ok(Err(e)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tls_reload_failed",
            format!("{e}; the certificates loaded before stay in use"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "tls_reload_failed",
            e.to_string(),
        ),
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: /healthz, /readyz, /metrics, /routes/{host}, /admin/held, /admin/confirm",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "POST /admin/confirm; GET for everything else",
    )
}
