//! Talking to the orchestrator under test for `bench orchestrator`: readiness (spawn to
//! `/readyz` 200), the route stream (`GET /v1/routes`: the snapshot's size and time,
//! then the live deltas) and the timed writes (`PUT /v1/apps/<id>`, one at a time, each
//! timed until its `upsert` line arrives on the stream).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::load::{app_id, app_json};
use super::proc::{Orchestrator, Sample};

/// One HTTP/1.1 client with a connection pool, for every request of a run.
pub type Http = Client<HttpConnector, Full<Bytes>>;

/// How often `/readyz` is asked while an orchestrator starts.
const READY_POLL: Duration = Duration::from_millis(20);
/// The longest wait for one answer (a write, a `/readyz`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for a write's `upsert` line.
const UPSERT_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports the writes give an app's second backend: `WRITE_PORT_BASE + k % WRITE_PORTS`,
/// never one an app starts with (10000..=29999), never the same twice in a row.
const WRITE_PORT_BASE: u64 = 30_000;
const WRITE_PORTS: u64 = 35_000;
/// The most writes per round, so that consecutive rounds never repeat a port.
pub const MAX_WRITES: u64 = 30_000;
/// Errors of the writes shown in full.
const ERRORS_SHOWN: usize = 5;

pub fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Bytes,
) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if !body.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    builder
        .body(Full::new(body))
        .with_context(|| format!("building {method} {url}"))
}

/// Sends one request and reads the whole answer.
pub async fn send(
    client: &Http,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let request = request(method, url, token, body)?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer to {method} {url}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{method} {url}: no answer within {REQUEST_TIMEOUT:?}"))?
}

/// A reason `/readyz` gave, and when it was first seen.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// The reason up to its first `:` ("claiming shards: 3 of 1024 owned" counts as
    /// "claiming shards"); "not listening" before the port answers.
    pub reason: String,
    /// Seconds since spawn.
    pub since_secs: f64,
}

/// An orchestrator's start.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// From spawning the process to the first `/readyz` 200.
    pub ready_secs: f64,
    pub phases: Vec<Phase>,
    /// Its memory and CPU time right after that 200.
    pub at_ready: Sample,
}

/// Polls `/readyz` every 20 ms until it answers 200; fails if the process exits or
/// `timeout` passes.
pub async fn wait_ready(
    orchestrator: &mut Orchestrator,
    client: &Http,
    timeout: Duration,
) -> anyhow::Result<Readiness> {
    let url = format!("{}/readyz", orchestrator.base_url());
    let mut phases: Vec<Phase> = Vec::new();
    let mut note = |reason: String, at: Duration| {
        if phases.last().map(|p| &p.reason) != Some(&reason) {
            phases.push(Phase {
                reason,
                since_secs: at.as_secs_f64(),
            });
        }
    };
    loop {
        let answer = send(client, "GET", &url, None, Bytes::new()).await;
        let at = orchestrator.spawned.elapsed();
        match answer {
            Ok((200, _)) => {
                let at_ready = orchestrator.sample().unwrap_or_default();
                return Ok(Readiness {
                    ready_secs: at.as_secs_f64(),
                    phases,
                    at_ready,
                });
            }
            Ok((status, body)) => {
                let detail = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["detail"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("status {status}"));
                let reason = detail.split(':').next().unwrap_or_default().to_string();
                note(reason, at);
            }
            Err(_) => note("not listening".into(), at),
        }
        if let Some(status) = orchestrator.exited() {
            bail!(
                "the orchestrator exited ({status}) before it was ready; last lines of {}:\n{}",
                orchestrator.log.display(),
                orchestrator.log_tail()
            );
        }
        if at > timeout {
            bail!(
                "the orchestrator was not ready within {timeout:?} (last reason: {}); last lines of {}:\n{}",
                phases.last().map_or("-", |p| p.reason.as_str()),
                orchestrator.log.display(),
                orchestrator.log_tail()
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// A full snapshot read off `GET /v1/routes`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Bytes of the response body from its first byte to the end of the `ready` line
    /// (HTTP headers and chunk framing not counted).
    pub bytes: u64,
    /// The `routes` count of the `snapshot` line.
    pub routes_announced: u64,
    /// `route` lines read.
    pub route_lines: u64,
    /// From sending the request to the first byte of the body.
    pub first_byte_secs: f64,
    /// From sending the request to the end of the `ready` line.
    pub secs: f64,
}

/// An open route stream after its snapshot.
pub struct Live {
    body: Incoming,
    leftover: Vec<u8>,
}

enum SnapshotLine {
    Head(u64),
    Route,
    Ready,
    Other,
}

fn classify(line: &[u8]) -> SnapshotLine {
    if line.starts_with(b"{\"type\":\"route\"") {
        return SnapshotLine::Route;
    }
    if line.starts_with(b"{\"type\":\"ready\"") {
        return SnapshotLine::Ready;
    }
    if line.starts_with(b"{\"type\":\"snapshot\"") {
        let routes = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["routes"].as_u64())
            .unwrap_or(0);
        return SnapshotLine::Head(routes);
    }
    SnapshotLine::Other
}

/// Subscribes to `/v1/routes` and reads its snapshot to the end (only the `snapshot`
/// line is parsed; route lines are counted, so the reader's own cost stays small).
pub async fn snapshot(
    orchestrator: &Orchestrator,
    client: &Http,
    idle: Duration,
) -> anyhow::Result<(Snapshot, Live)> {
    let url = format!("{}/v1/routes", orchestrator.base_url());
    let started = Instant::now();
    let response = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.request(request("GET", &url, None, Bytes::new())?),
    )
    .await
    .with_context(|| format!("GET {url}: no answer within {REQUEST_TIMEOUT:?}"))?
    .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let text = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        bail!("GET {url}: {status} {text}");
    }
    let mut first_byte_secs = None;
    let mut bytes: u64 = 0;
    let mut announced = None;
    let mut routes: u64 = 0;
    let mut others: u64 = 0;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .with_context(|| format!("the snapshot stalled for {idle:?} after {bytes} bytes"))?;
        let chunk = match frame {
            None => bail!("the route stream ended inside its snapshot, after {bytes} bytes"),
            Some(Err(err)) => bail!("the route stream broke inside its snapshot: {err}"),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        first_byte_secs.get_or_insert_with(|| started.elapsed().as_secs_f64());
        let mut start = 0;
        while let Some(at) = chunk[start..].iter().position(|b| *b == b'\n') {
            let end = start + at;
            let kind = if pending.is_empty() {
                classify(&chunk[start..end])
            } else {
                pending.extend_from_slice(&chunk[start..end]);
                let kind = classify(&pending);
                pending.clear();
                kind
            };
            start = end + 1;
            match kind {
                SnapshotLine::Head(n) if announced.is_none() => announced = Some(n),
                SnapshotLine::Route => routes += 1,
                SnapshotLine::Ready => {
                    let secs = started.elapsed().as_secs_f64();
                    bytes += start as u64;
                    if others > 0 {
                        eprintln!("bench:   {others} unexpected lines in the snapshot");
                    }
                    let snapshot = Snapshot {
                        bytes,
                        routes_announced: announced.context("no `snapshot` line")?,
                        route_lines: routes,
                        first_byte_secs: first_byte_secs.unwrap_or(secs),
                        secs,
                    };
                    let live = Live {
                        body,
                        leftover: chunk[start..].to_vec(),
                    };
                    return Ok((snapshot, live));
                }
                SnapshotLine::Head(_) | SnapshotLine::Other => others += 1,
            }
        }
        pending.extend_from_slice(&chunk[start..]);
        // Whole chunks before the `ready` line's; that one adds only its part.
        bytes += chunk.len() as u64;
    }
}

/// A line of the live stream, as far as the writes need it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LiveLine {
    Upsert {
        route: LiveRoute,
    },
    Remove {
        app: String,
    },
    Ping {},
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct LiveRoute {
    app: String,
    backends: Vec<LiveBackend>,
}

#[derive(Debug, Deserialize)]
struct LiveBackend {
    addr: String,
}

/// What the live reader saw: an upsert (with when its chunk arrived), or anything else.
#[derive(Debug)]
enum Seen {
    Upsert {
        app: String,
        addrs: Vec<String>,
        at: Instant,
    },
    Other(String),
    End(String),
}

impl Live {
    /// Reads the stream on a task of its own, timestamping each chunk on arrival.
    fn follow(self) -> mpsc::UnboundedReceiver<Seen> {
        let (sender, seen) = mpsc::unbounded_channel();
        let Live { mut body, leftover } = self;
        tokio::spawn(async move {
            let mut pending = Vec::new();
            let mut chunk = Bytes::from(leftover);
            let mut at = Instant::now();
            loop {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let item = match serde_json::from_slice::<LiveLine>(&line) {
                        Ok(LiveLine::Upsert { route }) => Seen::Upsert {
                            app: route.app,
                            addrs: route.backends.into_iter().map(|b| b.addr).collect(),
                            at,
                        },
                        Ok(LiveLine::Ping {}) => continue,
                        Ok(LiveLine::Remove { app }) => Seen::Other(format!("remove {app}")),
                        Ok(LiveLine::Other) | Err(_) => {
                            Seen::Other(String::from_utf8_lossy(&line).trim().to_string())
                        }
                    };
                    if sender.send(item).is_err() {
                        return;
                    }
                }
                chunk = loop {
                    match body.frame().await {
                        None => {
                            let _ = sender.send(Seen::End("the route stream ended".into()));
                            return;
                        }
                        Some(Err(err)) => {
                            let _ =
                                sender.send(Seen::End(format!("the route stream broke: {err}")));
                            return;
                        }
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                break data;
                            }
                        }
                    }
                };
                at = Instant::now();
            }
        });
        seen
    }
}

/// The timed writes of one round.
#[derive(Debug, Clone, Serialize)]
pub struct Writes {
    pub count: u64,
    /// Per write, from sending the `PUT` to the arrival of its `upsert` line, in ms
    /// (writes that failed or whose line never came are left out and counted as errors).
    pub upsert_ms: Vec<f64>,
    /// Per write, from sending the `PUT` to its answer, in ms.
    pub answer_ms: Vec<f64>,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Lines on the stream that matched no write (other apps' upserts, removes).
    pub unexpected_lines: u64,
    /// The first of them.
    pub unexpected_shown: Vec<String>,
}

/// `count` writes, one at a time: write `k` replaces app `k * apps / count`, moving its
/// second backend to a new port, and waits for that app's `upsert` with the new port.
pub async fn writes(
    orchestrator: &Orchestrator,
    client: &Http,
    token: &str,
    live: Live,
    apps: u64,
    count: u64,
    round: u64,
) -> Writes {
    let mut seen = live.follow();
    let mut result = Writes {
        count,
        upsert_ms: Vec::with_capacity(count as usize),
        answer_ms: Vec::with_capacity(count as usize),
        errors: 0,
        first_errors: Vec::new(),
        unexpected_lines: 0,
        unexpected_shown: Vec::new(),
    };
    let error = |result: &mut Writes, text: String| {
        result.errors += 1;
        if result.first_errors.len() < ERRORS_SHOWN {
            result.first_errors.push(text);
        }
    };
    let unexpected = |result: &mut Writes, line: String| {
        result.unexpected_lines += 1;
        if result.unexpected_shown.len() < ERRORS_SHOWN {
            result.unexpected_shown.push(line);
        }
    };
    for k in 0..count {
        let index = k * apps / count;
        let id = app_id(index);
        let port = WRITE_PORT_BASE + (round * count + k) % WRITE_PORTS;
        let addr = format!("127.0.0.1:{port}");
        let body = Bytes::from(app_json(index, Some(port as u16), false));
        let url = format!("{}/v1/apps/{id}", orchestrator.base_url());
        let sent = Instant::now();
        match send(client, "PUT", &url, Some(token), body).await {
            Ok((200, _)) => result.answer_ms.push(sent.elapsed().as_secs_f64() * 1000.0),
            Ok((status, body)) => {
                let text = format!("PUT {id}: {status} {}", String::from_utf8_lossy(&body));
                error(&mut result, text);
                continue;
            }
            Err(err) => {
                error(&mut result, format!("PUT {id}: {err:#}"));
                continue;
            }
        }
        let deadline = tokio::time::Instant::from_std(sent + UPSERT_TIMEOUT);
        loop {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Err(_) => {
                    let text = format!("no upsert of {id} with {addr} within {UPSERT_TIMEOUT:?}");
                    error(&mut result, text);
                    break;
                }
                Ok(None) => {
                    error(
                        &mut result,
                        format!("the route stream's reader stopped at write {k}"),
                    );
                    return result;
                }
                Ok(Some(Seen::End(reason))) => {
                    error(&mut result, format!("{reason} at write {k}"));
                    return result;
                }
                Ok(Some(Seen::Upsert { app, addrs, at })) => {
                    if app == id && addrs.contains(&addr) {
                        result
                            .upsert_ms
                            .push(at.duration_since(sent).as_secs_f64() * 1000.0);
                        break;
                    }
                    unexpected(&mut result, format!("upsert {app} {addrs:?}"));
                }
                Ok(Some(Seen::Other(line))) => unexpected(&mut result, line),
            }
        }
    }
    result
}
