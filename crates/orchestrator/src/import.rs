//! Bulk import: `POST /v1/apps/import` with one application per line (NDJSON).
//!
//! Lines are read as they arrive, validated, and written in batches through
//! `Zk::write_groups` (each app whole or not at all). The answer streams NDJSON:
//! `{"progress":{..}}` lines while it works, then one `{"done":{..}}` with every bad line
//! by number. With `?atomic=true` every line is validated first and nothing is written
//! if any is bad.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use model::{App, Domain, FieldError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::api::authorize;
use crate::error::ApiError;
use crate::Shared;

/// Apps written per batch (and between two progress lines).
const BATCH: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    #[serde(default)]
    atomic: bool,
}

/// A line that was not imported.
#[derive(Debug, Clone, Serialize)]
pub struct BadLine {
    /// Its number, from 1.
    pub line: usize,
    /// What was wrong.
    pub error: String,
    /// The fields at fault, for a validation error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Progress {
    lines: usize,
    imported: usize,
    failed: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Progress(Progress),
    Done {
        lines: usize,
        imported: usize,
        atomic: bool,
        failed: Vec<BadLine>,
    },
}

pub(crate) async fn import(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers)?;
    let Query(query) =
        query.map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "invalid", err.body_text()))?;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > shared.config.max_import_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the import is over {} bytes",
                    shared.config.max_import_bytes
                ),
            ));
        }
    }
    let (events, receiver) = mpsc::channel::<Event>(16);
    tokio::spawn(run(shared, body, query.atomic, events));
    let stream = futures::stream::poll_fn({
        let mut receiver = receiver;
        move |cx| receiver.poll_recv(cx)
    })
    .map(|event| {
        let mut line = serde_json::to_vec(&event).expect("events serialise");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

struct Importer {
    shared: Arc<Shared>,
    /// Domains claimed by earlier lines of this import.
    seen: HashMap<Domain, usize>,
    failed: Vec<BadLine>,
    progress: Progress,
}

impl Importer {
    fn check(&mut self, number: usize, line: &[u8]) -> Option<App> {
        let app = match App::from_json(line) {
            Ok(app) => app,
            Err(fields) => {
                let error = fields
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                self.failed.push(BadLine {
                    line: number,
                    error,
                    fields,
                });
                return None;
            }
        };
        if let Err(err) = self.shared.check_domains(&app) {
            self.failed.push(BadLine {
                line: number,
                error: err.detail,
                fields: Vec::new(),
            });
            return None;
        }
        for domain in &app.domains {
            if let Some(first) = self.seen.get(domain) {
                self.failed.push(BadLine {
                    line: number,
                    error: format!("domain {domain} is also claimed by line {first}"),
                    fields: Vec::new(),
                });
                return None;
            }
        }
        for domain in &app.domains {
            self.seen.insert(domain.clone(), number);
        }
        Some(app)
    }

    async fn write(&mut self, batch: Vec<(usize, App)>) {
        let groups = batch.iter().map(|(_, app)| self.shared.create_ops(app));
        let outcome = self
            .shared
            .zk
            .write_groups(groups.collect::<Vec<_>>())
            .await;
        self.progress.imported += outcome.succeeded;
        for refused in outcome.failed {
            let (number, app) = &batch[refused.index];
            let error = if refused.error.is_node_exists()
                && refused.path == self.shared.layout.app(&app.id)
            {
                format!("app {} already exists", app.id)
            } else if refused.error.is_node_exists() {
                let domain = refused.path.rsplit('/').next().unwrap_or_default();
                format!("domain {domain} already belongs to another app")
            } else {
                refused.error.to_string()
            };
            self.failed.push(BadLine {
                line: *number,
                error,
                fields: Vec::new(),
            });
        }
    }
}

async fn run(shared: Arc<Shared>, body: Body, atomic: bool, events: mpsc::Sender<Event>) {
    let mut importer = Importer {
        shared,
        seen: HashMap::new(),
        failed: Vec::new(),
        progress: Progress::default(),
    };
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut batch: Vec<(usize, App)> = Vec::new();
    let mut held: Vec<(usize, App)> = Vec::new();
    let mut number = 0;
    let mut received: u64 = 0;
    let limit = importer.shared.config.max_import_bytes;
    let mut finished = false;
    while !finished {
        let chunk = match stream.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(err)) => {
                importer.failed.push(BadLine {
                    line: number + 1,
                    error: format!("the request body broke off: {err}"),
                    fields: Vec::new(),
                });
                break;
            }
            None => {
                finished = true;
                Bytes::from_static(b"\n")
            }
        };
        received += chunk.len() as u64;
        if received > limit {
            importer.failed.push(BadLine {
                line: number + 1,
                error: format!("the import is over {limit} bytes; the rest was not read"),
                fields: Vec::new(),
            });
            break;
        }
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            if finished && line.is_empty() && start >= pending.len() {
                break;
            }
            number += 1;
            importer.progress.lines = number;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Some(app) = importer.check(number, line) {
                if atomic {
                    held.push((number, app));
                } else {
                    batch.push((number, app));
                }
            }
            if batch.len() >= BATCH {
                importer.write(std::mem::take(&mut batch)).await;
                importer.progress.failed = importer.failed.len();
                let _ = events
                    .send(Event::Progress(importer.progress.clone()))
                    .await;
            }
        }
        pending.drain(..start);
    }
    // The last line may lack its newline: it was completed by the one added at the end.
    if atomic && importer.failed.is_empty() {
        for chunk in held.chunks(BATCH) {
            importer.write(chunk.to_vec()).await;
            importer.progress.failed = importer.failed.len();
            let _ = events
                .send(Event::Progress(importer.progress.clone()))
                .await;
        }
    } else if !batch.is_empty() {
        importer.write(batch).await;
    }
    importer.failed.sort_by_key(|b| b.line);
    let done = Event::Done {
        lines: number,
        imported: importer.progress.imported,
        atomic,
        failed: importer.failed,
    };
    let _ = events.send(done).await;
}
