//! The control side: snapshots on disk, the route stream, guards, admin, restarts.
//!
//! Orchestrators here are real HTTP servers on loopback that play a scripted
//! `/v1/routes` stream (snapshot lines, deltas, pings, 503s, abrupt closes) as a test
//! drives them; backends are real HTTP servers that answer with their name. Nothing
//! asserts timing: waits are polls with generous upper bounds. Process-level tests
//! (kill -9, restarts beside a running gateway) are in `crates/switchyard/tests/it/gateway.rs`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use gateway::proxy::BackendConfig;
use gateway::snapshot::{self, Meta, SnapshotStore};
use gateway::{persist, Config, Gateway, RouteTable};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use model::{Backend, Route, StreamLine};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Fails the test instead of hanging it.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("gave up after a minute waiting for {what}"))
}

/// Polls `check` until it holds (at most a minute).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A route for `app`, answering on `{app}.test`, to `backends` (a placeholder address
/// when none is given: the control side never connects to it).
fn route(app: &str, backends: &[SocketAddr]) -> Route {
    let backends = if backends.is_empty() {
        vec![Backend::new("127.0.0.1:9", 1).unwrap()]
    } else {
        backends
            .iter()
            .map(|addr| Backend::new(addr.to_string(), 1).unwrap())
            .collect()
    };
    Route {
        app: app.parse().unwrap(),
        domains: vec![format!("{app}.test").parse().unwrap()],
        backends,
        fail_open: false,
    }
}

fn routes(prefix: &str, n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| route(&format!("{prefix}{i}"), &[]))
        .collect()
}

type Chunk = Result<Bytes, io::Error>;

/// A response body fed line by line by the test.
struct ChannelBody(mpsc::UnboundedReceiver<Chunk>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }
}

enum Script {
    Answer(StatusCode, String),
    Stream(mpsc::UnboundedReceiver<Chunk>, oneshot::Sender<()>),
}

#[derive(Default)]
struct OrchestratorState {
    scripts: Mutex<VecDeque<Script>>,
    /// The `since` of each request, in order.
    requests: Mutex<Vec<Option<u64>>>,
    arrived: Notify,
}

/// A real HTTP server playing an orchestrator's `/v1/routes` from a script. Requests
/// beyond the script get a 503 (an orchestrator that is not ready).
struct Orchestrator {
    addr: SocketAddr,
    state: Arc<OrchestratorState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn play(
    State(state): State<Arc<OrchestratorState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let since = query
        .get("since")
        .map(|v| v.parse().expect("since is a number"));
    state.requests.lock().unwrap().push(since);
    state.arrived.notify_waiters();
    let script = state.scripts.lock().unwrap().pop_front();
    let builder = Response::builder().header("content-type", "application/x-ndjson");
    match script {
        None => builder
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(axum::body::Body::from("not ready (no script left)"))
            .unwrap(),
        Some(Script::Answer(status, body)) => builder
            .status(status)
            .body(axum::body::Body::from(body))
            .unwrap(),
        Some(Script::Stream(rx, connected)) => {
            let _ = connected.send(());
            builder
                .status(StatusCode::OK)
                .body(axum::body::Body::new(ChannelBody(rx)))
                .unwrap()
        }
    }
}

impl Orchestrator {
    async fn start() -> Orchestrator {
        let state = Arc::new(OrchestratorState::default());
        let app = axum::Router::new()
            .route("/v1/routes", axum::routing::get(play))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Orchestrator { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a plain answer.
    fn answer(&self, status: StatusCode, body: impl Into<String>) {
        let script = Script::Answer(status, body.into());
        self.state.scripts.lock().unwrap().push_back(script);
    }

    /// Queues a stream the test writes to.
    fn stream(&self) -> Feed {
        let (tx, rx) = mpsc::unbounded_channel();
        let (connected_tx, connected) = oneshot::channel();
        let script = Script::Stream(rx, connected_tx);
        self.state.scripts.lock().unwrap().push_back(script);
        Feed {
            tx,
            connected: Some(connected),
        }
    }

    fn requests(&self) -> Vec<Option<u64>> {
        self.state.requests.lock().unwrap().clone()
    }
}

/// The test's end of a scripted stream.
struct Feed {
    tx: mpsc::UnboundedSender<Chunk>,
    connected: Option<oneshot::Receiver<()>>,
}

impl Feed {
    /// Waits for the gateway to open this stream. Once it has, it has finished with
    /// every stream before it: the barrier the tests use instead of sleeping.
    async fn connected(&mut self) {
        let connected = self.connected.take().expect("waited once");
        within("the gateway to connect", connected).await.unwrap();
    }

    /// Sends lines in one chunk (the gateway applies a chunk's deltas together).
    fn send(&self, lines: impl IntoIterator<Item = StreamLine>) {
        let bytes: Vec<u8> = lines.into_iter().flat_map(|line| line.to_line()).collect();
        let _ = self.tx.send(Ok(bytes.into()));
    }

    /// A whole snapshot, `ready` included.
    fn snapshot(&self, version: u64, routes: &[Route]) {
        self.send(snapshot_lines(version, routes, true));
    }

    /// Ends the stream by breaking the connection (no clean end of the body).
    fn abort(self) {
        let _ = self
            .tx
            .send(Err(io::Error::other("the test breaks the stream")));
    }
}

fn snapshot_lines(version: u64, routes: &[Route], ready: bool) -> Vec<StreamLine> {
    let mut lines = vec![StreamLine::Snapshot {
        version,
        routes: routes.len() as u64,
    }];
    lines.extend(routes.iter().cloned().map(StreamLine::Route));
    if ready {
        lines.push(StreamLine::Ready { version });
    }
    lines
}

/// A real backend answering every request with its name.
async fn backend(name: &'static str) -> SocketAddr {
    let app = axum::Router::new().fallback(move || async move { name });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A loopback address nobody listens on (best effort: it was free a moment ago).
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// Settings for tests: ephemeral ports, a short reconnect delay, frequent snapshots.
fn config(state_dir: &Path, orchestrators: &[String]) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        orchestrators: orchestrators.to_vec(),
        state_dir: state_dir.to_owned(),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        snapshot_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

async fn start(config: Config) -> Gateway {
    within("the gateway to start", Gateway::start(config))
        .await
        .expect("the gateway starts")
}

/// A plain HTTP request: status and body.
async fn request(
    method: Method,
    url: &str,
    host: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = within(url, client.request(request)).await.expect(url);
    let status = response.status();
    let body = within(url, response.into_body().collect())
        .await
        .expect(url)
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An admin API call: status and JSON body.
async fn admin(gateway: &Gateway, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let url = format!("http://{}{path}", gateway.admin_addr());
    let (status, text) = request(method, &url, None, body).await;
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
    (status, json)
}

async fn get(gateway: &Gateway, path: &str) -> (StatusCode, Value) {
    admin(gateway, Method::GET, path, "").await
}

/// The app `/routes/{app}.test` resolves to, if any.
async fn routed_app(gateway: &Gateway, app: &str) -> Option<String> {
    let (status, body) = get(gateway, &format!("/routes/{app}.test")).await;
    match status {
        StatusCode::OK => Some(body["app"].as_str().unwrap().to_owned()),
        StatusCode::NOT_FOUND => {
            assert_eq!(body["error"], "no_route", "{body}");
            None
        }
        other => panic!("/routes answered {other}: {body}"),
    }
}

async fn is_routed(gateway: &Gateway, app: &str) -> bool {
    routed_app(gateway, app).await.as_deref() == Some(app)
}

async fn held(gateway: &Gateway) -> Value {
    get(gateway, "/admin/held").await.1["held"].clone()
}

async fn metrics_text(gateway: &Gateway) -> String {
    let url = format!("http://{}/metrics", gateway.admin_addr());
    let (status, text) = request(Method::GET, &url, None, "").await;
    assert_eq!(status, StatusCode::OK);
    text
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

async fn metric_of(gateway: &Gateway, name: &str) -> f64 {
    let text = metrics_text(gateway).await;
    metric(&text, name).unwrap_or_else(|| panic!("{name} is not in /metrics:\n{text}"))
}

/// Writes `table` as the store's new current generation.
fn write_generation(dir: &Path, table: &RouteTable) {
    let store = SnapshotStore::open(dir).unwrap();
    store
        .write(&persist::meta(table), &persist::encode(table))
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// The route stream
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_applied_only_after_its_ready_line() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut broken = orchestrator.stream();
    let mut whole = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    // Two of three routes, then the connection breaks: nothing of it may be applied.
    broken.connected().await;
    let three = routes("app", 3);
    broken.send([
        StreamLine::Snapshot {
            version: 5,
            routes: 3,
        },
        StreamLine::Route(three[0].clone()),
        StreamLine::Route(three[1].clone()),
    ]);
    broken.abort();
    whole.connected().await;
    assert_eq!(orchestrator.requests(), [None, None], "no table, no since");
    assert!(!is_routed(&gateway, "app0").await);
    let (status, body) = get(&gateway, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "not_ready");

    // The whole snapshot, but not its ready line yet: still nothing.
    whole.send(snapshot_lines(5, &three, false));
    // A ping inside a snapshot breaks the protocol: the stream is dropped, and resumed.
    let mut again = orchestrator.stream();
    whole.send([StreamLine::Ping { version: 5 }]);
    again.connected().await;
    assert!(!is_routed(&gateway, "app2").await);
    again.snapshot(5, &three);
    eventually("the snapshot to apply", || async {
        get(&gateway, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    for app in ["app0", "app1", "app2"] {
        assert!(is_routed(&gateway, app).await, "{app}");
    }
    assert_eq!(gateway.table().version(), 5);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_never_applied_and_the_next_orchestrator_is_tried() {
    let dir = tempfile::tempdir().unwrap();
    let not_ready = Orchestrator::start().await;
    let ready = Orchestrator::start().await;
    // A 503 whose body is a perfectly good snapshot: it must not be read.
    let evil = [route("evil", &[])];
    let body: Vec<u8> = snapshot_lines(99, &evil, true)
        .iter()
        .flat_map(StreamLine::to_line)
        .collect();
    not_ready.answer(
        StatusCode::SERVICE_UNAVAILABLE,
        String::from_utf8(body).unwrap(),
    );
    let mut feed = ready.stream();
    let gateway = start(config(dir.path(), &[not_ready.url(), ready.url()])).await;

    feed.connected().await;
    assert_eq!(not_ready.requests().len(), 1);
    feed.snapshot(7, &[route("good", &[])]);
    eventually("the ready orchestrator's table", || {
        is_routed(&gateway, "good")
    })
    .await;
    assert!(!is_routed(&gateway, "evil").await);
    assert_eq!(gateway.table().version(), 7);
    let text = metrics_text(&gateway).await;
    assert_eq!(
        metric(&text, "switchyard_gateway_route_stream_not_ready_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "switchyard_gateway_route_snapshots_applied_total"),
        Some(1.0)
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_with_since_and_skips_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut first = orchestrator.stream();
    let mut second = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    first.connected().await;
    first.snapshot(10, &[route("a", &[]), route("b", &[])]);
    first.send([StreamLine::Upsert {
        version: 11,
        route: route("c", &[]),
    }]);
    eventually("the upsert", || is_routed(&gateway, "c")).await;
    drop(first); // a clean end of the stream

    second.connected().await;
    assert_eq!(orchestrator.requests(), [None, Some(11)]);
    second.send([
        StreamLine::Resume { version: 11 },
        // Already applied: skipped, not applied twice.
        StreamLine::Remove {
            version: 11,
            app: "c".parse().unwrap(),
        },
        StreamLine::Upsert {
            version: 12,
            route: route("d", &[]),
        },
        StreamLine::Ping { version: 12 },
    ]);
    eventually("the change after the resume", || is_routed(&gateway, "d")).await;
    for app in ["a", "b", "c"] {
        assert!(is_routed(&gateway, app).await, "{app}");
    }
    assert_eq!(gateway.table().version(), 12);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_orchestrator_fails_over_to_the_next_url() {
    let dir = tempfile::tempdir().unwrap();
    let first = Orchestrator::start().await;
    let second = Orchestrator::start().await;
    let mut feed_a = first.stream();
    let mut feed_b = second.stream();
    // Nobody listens on the first URL: connection refused, then the next one.
    let urls = [dead_url(), first.url(), second.url()];
    let gateway = start(config(dir.path(), &urls)).await;

    feed_a.connected().await;
    feed_a.snapshot(1, &[route("a", &[])]);
    eventually("the first orchestrator's table", || {
        is_routed(&gateway, "a")
    })
    .await;
    feed_a.abort();

    feed_b.connected().await;
    assert_eq!(
        second.requests(),
        [Some(1)],
        "resumes from another orchestrator"
    );
    feed_b.send([
        StreamLine::Resume { version: 1 },
        StreamLine::Upsert {
            version: 2,
            route: route("b", &[]),
        },
    ]);
    eventually("the second orchestrator's change", || {
        is_routed(&gateway, "b")
    })
    .await;
    assert!(is_routed(&gateway, "a").await);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_dead_after_the_ping_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut silent = orchestrator.stream();
    let mut next = orchestrator.stream();
    let mut config = config(dir.path(), &[orchestrator.url()]);
    config.ping_timeout = Duration::from_millis(300);
    let gateway = start(config).await;

    silent.connected().await;
    silent.snapshot(3, &[route("a", &[])]);
    // Then nothing, with the connection open: the gateway gives up and reconnects.
    next.connected().await;
    assert_eq!(orchestrator.requests(), [None, Some(3)]);
    assert!(is_routed(&gateway, "a").await);
    drop(silent);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_ahead_of_the_table_means_missed_changes_and_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut first = orchestrator.stream();
    let mut second = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    first.connected().await;
    first.snapshot(3, &[route("a", &[])]);
    first.send([StreamLine::Ping { version: 5 }]);
    second.connected().await;
    assert_eq!(orchestrator.requests(), [None, Some(3)]);
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------
// Guards (invariant 1)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_table_is_held_and_only_an_operator_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let mut config = config(dir.path(), &[orchestrator.url()]);
    // Short, to show that an emptying is not applied when it runs out.
    config.confirm_window = Duration::from_millis(100);
    let gateway = start(config).await;

    feed.connected().await;
    let five = routes("app", 5);
    feed.snapshot(1, &five);
    eventually("the table", || is_routed(&gateway, "app4")).await;
    feed.snapshot(2, &[]);
    eventually("the empty table to be held", || async {
        !held(&gateway).await.is_null()
    })
    .await;
    let held_update = held(&gateway).await;
    assert_eq!(held_update["reason"], "empty_table", "{held_update}");
    assert_eq!(held_update["version"], 2);
    assert_eq!(held_update["served_routes"], 5);
    assert_eq!(held_update["held_routes"], 0);
    assert!(held_update["auto_apply_in_seconds"].is_null());
    assert_eq!(
        metric_of(&gateway, "switchyard_gateway_held_updates").await,
        1.0
    );

    // Many confirmation windows later, still held, still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held(&gateway).await.is_null());
    assert!(is_routed(&gateway, "app0").await);
    assert_eq!(gateway.table().version(), 1);

    let (status, body) = admin(&gateway, Method::POST, "/admin/confirm", r#"{"version":1}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "version_mismatch");
    let (status, body) = admin(&gateway, Method::POST, "/admin/confirm", r#"{"version":2}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"]["routes"], 0);
    assert!(!is_routed(&gateway, "app0").await);
    assert!(held(&gateway).await.is_null());
    assert_eq!(
        metric_of(&gateway, "switchyard_gateway_held_updates").await,
        0.0
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_every_route_one_delta_at_a_time_is_held_too() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    feed.connected().await;
    feed.snapshot(1, &routes("app", 3));
    eventually("the table", || is_routed(&gateway, "app2")).await;
    // Below the mass-deletion floor, but the last one would empty the table.
    for (i, version) in (2..5).enumerate() {
        feed.send([StreamLine::Remove {
            version,
            app: format!("app{i}").parse().unwrap(),
        }]);
    }
    eventually("the emptying to be held", || async {
        !held(&gateway).await.is_null()
    })
    .await;
    assert_eq!(held(&gateway).await["reason"], "empty_table");
    assert!(is_routed(&gateway, "app2").await);
    assert_eq!(gateway.table().len(), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_deletion_is_held_until_an_operator_confirms_it() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    feed.connected().await;
    let hundred = routes("app", 100);
    feed.snapshot(1, &hundred);
    eventually("the table", || is_routed(&gateway, "app99")).await;
    // 20 of 100 routes gone at once: more than 10 %, at least 10, of at least 50.
    feed.snapshot(2, &hundred[..80]);
    eventually("the deletion to be held", || async {
        !held(&gateway).await.is_null()
    })
    .await;
    let held_update = held(&gateway).await;
    assert_eq!(held_update["reason"], "mass_deletion", "{held_update}");
    assert_eq!(held_update["removed_routes"], 20);
    assert!(held_update["auto_apply_in_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        is_routed(&gateway, "app99").await,
        "still served while held"
    );
    let text = metrics_text(&gateway).await;
    assert_eq!(metric(&text, "switchyard_gateway_held_updates"), Some(1.0));
    assert_eq!(
        metric(&text, "switchyard_gateway_held_update_removed_routes"),
        Some(20.0)
    );

    // Changes streamed meanwhile pile onto the held table, not the served one.
    feed.send([StreamLine::Upsert {
        version: 3,
        route: route("new", &[]),
    }]);
    eventually("the change to join the held update", || async {
        held(&gateway).await["latest_version"] == 3
    })
    .await;
    assert!(!is_routed(&gateway, "new").await);

    let (status, body) = admin(&gateway, Method::POST, "/admin/confirm", r#"{"version":2}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"]["table_version"], 3);
    assert!(!is_routed(&gateway, "app99").await);
    assert!(is_routed(&gateway, "app79").await);
    assert!(is_routed(&gateway, "new").await);
    assert_eq!(gateway.table().len(), 81);
    assert_eq!(
        metric_of(&gateway, "switchyard_gateway_held_updates").await,
        0.0
    );
    let (status, body) = admin(&gateway, Method::POST, "/admin/confirm", r#"{"version":2}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "nothing_held");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_mass_deletion_is_applied_after_the_confirmation_window() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let mut config = config(dir.path(), &[orchestrator.url()]);
    config.confirm_window = Duration::from_millis(300);
    let gateway = start(config).await;

    feed.connected().await;
    let sixty = routes("app", 60);
    feed.snapshot(1, &sixty);
    eventually("the table", || is_routed(&gateway, "app59")).await;
    feed.snapshot(2, &sixty[..30]);
    eventually("the deletion to be applied by itself", || async {
        gateway.table().version() == 2
    })
    .await;
    assert!(held(&gateway).await.is_null());
    assert!(!is_routed(&gateway, "app59").await);
    let text = metrics_text(&gateway).await;
    assert_eq!(
        metric(&text, "switchyard_gateway_route_updates_held_total"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "switchyard_gateway_held_updates"), Some(0.0));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removes_streamed_in_a_burst_count_together() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    feed.connected().await;
    feed.snapshot(1, &routes("app", 100));
    eventually("the table", || is_routed(&gateway, "app99")).await;
    let remove = |i: u64| StreamLine::Remove {
        version: 1 + i,
        app: format!("app{i}").parse().unwrap(),
    };
    // 9: under the floor of 10 removed routes.
    feed.send((1..=9).map(remove));
    eventually("9 removes", || async { gateway.table().len() == 91 }).await;
    // 10 in the window: exactly 10 %, not more.
    feed.send([remove(10)]);
    eventually("the 10th remove", || async { gateway.table().len() == 90 }).await;
    // The 11th in the window is more than 10 % of the 100 routes it began with.
    feed.send([remove(11)]);
    eventually("the 11th remove to be held", || async {
        !held(&gateway).await.is_null()
    })
    .await;
    assert_eq!(gateway.table().len(), 90);
    assert!(is_routed(&gateway, "app11").await);
    assert_eq!(held(&gateway).await["version"], 12);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_tables_and_small_deletions_are_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    feed.connected().await;
    let forty = routes("app", 40);
    feed.snapshot(1, &forty);
    eventually("the table", || is_routed(&gateway, "app39")).await;
    // Half of a table under 50 routes: an ordinary region's deletion.
    feed.snapshot(2, &forty[..20]);
    eventually("the deletion", || async { gateway.table().version() == 2 }).await;
    assert_eq!(gateway.table().len(), 20);
    assert!(held(&gateway).await.is_null());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_passes_the_guards_replaces_a_held_update() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    feed.connected().await;
    let hundred = routes("app", 100);
    feed.snapshot(1, &hundred);
    eventually("the table", || is_routed(&gateway, "app99")).await;
    feed.snapshot(2, &[]);
    eventually("the emptying to be held", || async {
        !held(&gateway).await.is_null()
    })
    .await;
    // The orchestrator comes back to its senses.
    feed.snapshot(3, &hundred[..95]);
    eventually("the good snapshot", || async {
        gateway.table().version() == 3
    })
    .await;
    assert!(held(&gateway).await.is_null());
    assert_eq!(gateway.table().len(), 95);
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------
// The table on disk (invariant 1)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_deltas_is_written_coalesced_and_the_disk_holds_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let mut config = config(dir.path(), &[orchestrator.url()]);
    config.snapshot_interval = Duration::from_millis(200);
    let gateway = start(config).await;

    feed.connected().await;
    feed.snapshot(1, &routes("base", 10));
    let deltas = 300u64;
    for i in 0..deltas {
        feed.send([StreamLine::Upsert {
            version: 2 + i,
            route: route(&format!("app{i}"), &[]),
        }]);
        // One delta per chunk, arriving one by one: 300 tables applied.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = 1 + deltas;
    eventually("the last delta", || async {
        gateway.table().version() == last
    })
    .await;
    eventually("the last table on disk", || async {
        metric_of(&gateway, "switchyard_gateway_snapshot_table_version").await == last as f64
    })
    .await;
    let text = metrics_text(&gateway).await;
    let writes = metric(&text, "switchyard_gateway_snapshot_writes_total").unwrap();
    let applied = metric(&text, "switchyard_gateway_route_deltas_applied_total").unwrap();
    assert_eq!(applied, deltas as f64);
    assert!(
        writes >= 1.0 && writes < deltas as f64 / 4.0,
        "{writes} writes for {deltas} deltas"
    );
    assert!(metric(&text, "switchyard_gateway_snapshot_last_write_bytes").unwrap() > 0.0);
    gateway.stop().await;

    let store = SnapshotStore::open(dir.path()).unwrap();
    let loaded = store.load().unwrap().expect("a snapshot");
    assert_eq!(
        loaded.meta,
        Meta {
            table_version: last,
            route_count: 10 + deltas,
        }
    );
    let table = persist::decode(&loaded.payload).unwrap();
    assert_eq!(table.version(), last);
    assert_eq!(table.lookup("app299.test").unwrap().app(), "app299");
    assert_eq!(table.lookup("base0.test").unwrap().app(), "base0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_serves_its_snapshot_with_no_orchestrator_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;
    feed.connected().await;
    feed.snapshot(7, &routes("app", 3));
    eventually("the table on disk", || async {
        metric_of(&gateway, "switchyard_gateway_snapshot_table_version").await == 7.0
    })
    .await;
    gateway.stop().await;
    drop(orchestrator);

    let gateway = start(config(dir.path(), &[dead_url()])).await;
    // Loaded before it bound: ready at once, every route there.
    let (status, body) = get(&gateway, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["table_version"], 7);
    assert_eq!(body["routes"], 3);
    for app in ["app0", "app1", "app2"] {
        assert!(is_routed(&gateway, app).await, "{app}");
    }
    assert!(metric_of(&gateway, "switchyard_gateway_route_table_staleness_seconds").await >= 0.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_current_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    write_generation(dir.path(), &RouteTable::from_routes(1, [route("old", &[])]));
    write_generation(
        dir.path(),
        &RouteTable::from_routes(2, [route("old", &[]), route("new", &[])]),
    );
    let current = dir.path().join(snapshot::CURRENT_FILE);
    let mut bytes = std::fs::read(&current).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&current, bytes).unwrap();

    let gateway = start(config(dir.path(), &[])).await;
    assert_eq!(gateway.table().version(), 1);
    assert!(is_routed(&gateway, "old").await);
    assert!(!is_routed(&gateway, "new").await);
    assert_eq!(get(&gateway, "/readyz").await.0, StatusCode::OK);
    gateway.stop().await;
}

/// Takes the state folder's lock as the gateway that owns the folder holds it (the one a
/// new gateway is started beside); released when the file is dropped.
fn hold_state_folder(dir: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let owner = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(persist::LOCK_FILE))
        .unwrap();
    // SAFETY: flock on a descriptor the test owns.
    let locked = unsafe { libc::flock(owner.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0, "{}", io::Error::last_os_error());
    owner
}

const DISK_VERSION: &str = "switchyard_gateway_snapshot_table_version";
const UNSAVED: &str = "switchyard_gateway_snapshot_unsaved_seconds";
const FOLDER_HELD: &str = "switchyard_gateway_state_folder_held";

/// A state folder with table version 1 (`web`), owned by another gateway that is writing
/// its table: its lock, and its `routes.snap.tmp`, returned.
fn folder_owned_by_another(dir: &Path) -> (std::fs::File, std::path::PathBuf) {
    write_generation(dir, &RouteTable::from_routes(1, [route("web", &[])]));
    let owner = hold_state_folder(dir);
    let tmp = dir.join(snapshot::TMP_FILE);
    std::fs::write(&tmp, b"the owner's write").unwrap();
    (owner, tmp)
}

/// Starts a gateway on `dir` (version 1 on disk) whose writer cannot take the folder, and
/// hands it version 2 (`api` too) from an orchestrator: it serves that table, which waits
/// unsaved, version 1 still on disk, and says so. The orchestrator stays with it.
async fn serving_an_unsaved_table(dir: &Path) -> (Gateway, Orchestrator, Feed) {
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir, &[orchestrator.url()])).await;
    feed.connected().await;
    let loaded = metric_of(&gateway, DISK_VERSION).await;
    assert_eq!(loaded, 1.0, "the loaded table");
    feed.snapshot(2, &[route("web", &[]), route("api", &[])]);
    eventually("the new table served, waiting to be saved", || async {
        is_routed(&gateway, "api").await && metric_of(&gateway, UNSAVED).await > 0.0
    })
    .await;
    assert_eq!(metric_of(&gateway, FOLDER_HELD).await, 0.0);
    assert_eq!(metric_of(&gateway, DISK_VERSION).await, 1.0);
    (gateway, orchestrator, feed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_beside_the_folders_owner_leaves_its_files_and_saves_once_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (owner, tmp) = folder_owned_by_another(dir.path());
    let (gateway, _orchestrator, _feed) = serving_an_unsaved_table(dir.path()).await;
    assert_eq!(std::fs::read(&tmp).unwrap(), b"the owner's write");

    // The owner exits: this gateway takes the folder and saves what it serves.
    drop(owner);
    eventually("the served table written", || async {
        metric_of(&gateway, DISK_VERSION).await == 2.0
    })
    .await;
    assert_eq!(metric_of(&gateway, FOLDER_HELD).await, 1.0);
    assert_eq!(metric_of(&gateway, UNSAVED).await, 0.0);
    assert!(!tmp.exists(), "its own write replaced the file");
    gateway.stop().await;
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().unwrap().meta.table_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_folders_owner_removes_a_leftover_tmp_file_once_it_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (owner, tmp) = folder_owned_by_another(dir.path());

    // No orchestrator: this gateway has nothing to write.
    let gateway = start(config(dir.path(), &[])).await;
    assert!(is_routed(&gateway, "web").await);
    assert_eq!(metric_of(&gateway, FOLDER_HELD).await, 0.0);
    assert_eq!(std::fs::read(&tmp).unwrap(), b"the owner's write");

    // The owner exits, its write never finished: the leftover is this gateway's to tidy.
    drop(owner);
    eventually("the leftover tmp file removed", || async { !tmp.exists() }).await;
    assert_eq!(metric_of(&gateway, FOLDER_HELD).await, 1.0);
    assert!(is_routed(&gateway, "web").await);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_file_that_cannot_be_opened_leaves_the_table_unsaved_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_generation(dir.path(), &RouteTable::from_routes(1, [route("web", &[])]));
    // A folder where the lock file should be: opening it for writing fails, even as root.
    std::fs::create_dir(dir.path().join(persist::LOCK_FILE)).unwrap();

    let (gateway, _orchestrator, _feed) = serving_an_unsaved_table(dir.path()).await;
    gateway.stop().await;
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(
        store.load().unwrap().unwrap().meta.table_version,
        1,
        "nothing written without the lock"
    );
}

/// Rewrites a snapshot file's format version (and its prefix CRC, so it reads as a
/// well-formed file from a newer binary).
fn make_newer(path: &Path) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut bytes = std::fs::read(path).unwrap();
    bytes[8..12].copy_from_slice(&(snapshot::FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32(&bytes[..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_it_cannot_use_is_a_startup_error_not_an_empty_table() {
    let start_error = |config: Config| async move {
        match within("start", Gateway::start(config)).await {
            Ok(_) => panic!("the gateway started"),
            Err(e) => e,
        }
    };
    let table = RouteTable::from_routes(1, [route("a", &[])]);

    // The state folder is a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let error = start_error(config(&file, &[])).await;
    assert!(
        matches!(
            error,
            gateway::Error::Snapshot(snapshot::Error::NotADirectory { .. })
        ),
        "{error}"
    );

    // Both generations corrupt.
    let dir = tempfile::tempdir().unwrap();
    write_generation(dir.path(), &table);
    write_generation(dir.path(), &table);
    for name in [snapshot::CURRENT_FILE, snapshot::PREVIOUS_FILE] {
        std::fs::write(dir.path().join(name), b"SWYDSNAP garbage").unwrap();
    }
    let error = start_error(config(dir.path(), &[dead_url()])).await;
    assert!(
        matches!(
            error,
            gateway::Error::Snapshot(snapshot::Error::NoValidSnapshot { .. })
        ),
        "{error}"
    );

    // Written by a newer binary.
    let dir = tempfile::tempdir().unwrap();
    write_generation(dir.path(), &table);
    make_newer(&dir.path().join(snapshot::CURRENT_FILE));
    let error = start_error(config(dir.path(), &[dead_url()])).await;
    assert!(
        matches!(
            error,
            gateway::Error::Snapshot(snapshot::Error::NewerFormat { .. })
        ),
        "{error}"
    );

    // Checksums fine, payload not a table.
    let dir = tempfile::tempdir().unwrap();
    SnapshotStore::open(dir.path())
        .unwrap()
        .write(&persist::meta(&table), b"not a table")
        .unwrap();
    let error = start_error(config(dir.path(), &[dead_url()])).await;
    assert!(matches!(error, gateway::Error::Payload { .. }), "{error}");

    // Nothing on disk and nowhere to get a table from.
    let dir = tempfile::tempdir().unwrap();
    let error = start_error(config(dir.path(), &[])).await;
    assert!(
        matches!(error, gateway::Error::NothingToServe { .. }),
        "{error}"
    );

    // A bad setting fails before anything binds or touches the disk.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = config(&dir.path().join("never-created"), &[]);
    bad.mass_delete_share = 0.0;
    let error = start_error(bad).await;
    assert!(matches!(error, gateway::Error::Config(_)), "{error}");
    assert!(!dir.path().join("never-created").exists());
}

// ---------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_false_until_an_orchestrator_sends_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start().await;
    orchestrator.answer(StatusCode::SERVICE_UNAVAILABLE, "starting");
    orchestrator.answer(StatusCode::SERVICE_UNAVAILABLE, "starting");
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;

    let (status, body) = get(&gateway, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    feed.connected().await;
    let (status, body) = get(&gateway, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("no route table"),
        "{body}"
    );
    assert_eq!(metric_of(&gateway, "switchyard_gateway_ready").await, 0.0);

    feed.snapshot(4, &[route("a", &[])]);
    eventually("readiness", || async {
        get(&gateway, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(metric_of(&gateway, "switchyard_gateway_ready").await, 1.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_json_and_names_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = Route {
        domains: vec!["a.test".parse().unwrap(), "*.wild.test".parse().unwrap()],
        ..route("a", &[])
    };
    write_generation(dir.path(), &RouteTable::from_routes(3, [a.clone()]));
    let gateway = start(config(dir.path(), &[])).await;

    let (status, body) = get(&gateway, "/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = get(&gateway, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true);

    // A host as a request carries it: any case, with a port.
    let (status, mut body) = get(&gateway, "/routes/A.Test:8080").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let state = body.as_object_mut().unwrap().remove("backend_state");
    // Its one backend has not been sent a request.
    assert_eq!(state, Some(serde_json::json!([null])));
    assert_eq!(serde_json::from_value::<Route>(body).unwrap(), a);
    assert_eq!(
        routed_app(&gateway, "shop.wild").await.as_deref(),
        Some("a")
    );
    let (status, body) = get(&gateway, "/routes/nobody.test").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "no_route");
    assert!(
        body["detail"].as_str().unwrap().contains("nobody.test"),
        "{body}"
    );
    let (status, body) = get(&gateway, "/routes/bad_host!").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_host");

    assert_eq!(
        get(&gateway, "/admin/held").await,
        (StatusCode::OK, serde_json::json!({"held": null}))
    );
    let (status, body) = admin(&gateway, Method::POST, "/admin/confirm", "{").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, body) = admin(&gateway, Method::POST, "/admin/confirm", r#"{"version":3}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("nothing_held"))
    );
    let (status, body) = get(&gateway, "/admin/confirm").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed");
    let (status, body) = get(&gateway, "/nowhere").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let text = metrics_text(&gateway).await;
    for (name, value) in [
        ("switchyard_gateway_routes", Some(1.0)),
        ("switchyard_gateway_domains", Some(2.0)),
        ("switchyard_gateway_route_table_version", Some(3.0)),
        ("switchyard_gateway_held_updates", Some(0.0)),
        ("switchyard_gateway_ready", Some(1.0)),
    ] {
        assert_eq!(metric(&text, name), value, "{name} in\n{text}");
    }
    assert!(metric(&text, "switchyard_gateway_route_table_staleness_seconds").is_some());
    assert!(
        text.contains("# HELP switchyard_gateway_held_updates"),
        "{text}"
    );
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------
// Through the proxy
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_an_orchestrator_are_proxied_and_follow_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = backend("alpha").await;
    let beta = backend("beta").await;
    let orchestrator = Orchestrator::start().await;
    let mut feed = orchestrator.stream();
    let gateway = start(config(dir.path(), &[orchestrator.url()])).await;
    let url = format!("http://{}/", gateway.listen_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(gateway.serve(async move {
        let _ = stopped.await;
    }));

    feed.connected().await;
    feed.snapshot(1, &[route("shop", &[alpha])]);
    eventually("the route through the proxy", || async {
        request(Method::GET, &url, Some("shop.test"), "").await == (StatusCode::OK, "alpha".into())
    })
    .await;
    let (status, _) = request(Method::GET, &url, Some("unknown.test"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    feed.send([StreamLine::Upsert {
        version: 2,
        route: route("shop", &[beta]),
    }]);
    eventually("the changed backend", || async {
        request(Method::GET, &url, Some("shop.test"), "").await.1 == "beta"
    })
    .await;

    stop.send(()).unwrap();
    within("the gateway to stop", serving)
        .await
        .unwrap()
        .expect("a clean stop");
    let loaded = SnapshotStore::open(dir.path())
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(
        loaded.meta.table_version, 2,
        "the last table is flushed on stop"
    );
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

fn parse(args: &[&str]) -> Result<Config, gateway::ConfigError> {
    use clap::Args;
    let command = Config::augment_args(clap::Command::new("gateway").no_binary_name(true));
    let matches = command.try_get_matches_from(args).expect("valid flags");
    Config::from_matches(&matches)
}

#[test]
fn flags_override_the_file_which_overrides_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:18080"
admin = "127.0.0.1:19080"
orchestrators = ["http://127.0.0.1:7070", "http://127.0.0.2:7070/"]
state-dir = "/srv/gateway"
confirm-window = "5m"
mass-delete-share = 0.25
max-connections = 5000
eject-after = 5
backend-max-idle = 64
"#,
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let config = parse(&[
        "--config",
        file_arg,
        "--listen",
        "127.0.0.1:28080",
        "--confirm-window",
        "10m",
        "--eject-cooldown",
        "30s",
    ])
    .unwrap();
    assert_eq!(
        config.listen,
        "127.0.0.1:28080".parse().unwrap(),
        "the flag wins"
    );
    assert_eq!(
        config.confirm_window,
        Duration::from_secs(600),
        "even when it is the default"
    );
    assert_eq!(
        config.admin,
        "127.0.0.1:19080".parse().unwrap(),
        "from the file"
    );
    assert_eq!(
        config.orchestrators,
        ["http://127.0.0.1:7070", "http://127.0.0.2:7070/"]
    );
    assert_eq!(config.state_dir, Path::new("/srv/gateway"));
    assert_eq!(config.mass_delete_share, 0.25);
    assert_eq!(config.max_connections, Some(5000));
    assert_eq!(config.proxy_config().max_connections, 5000);
    let backends = config.backend_config();
    assert_eq!(backends.eject_after_failures, 5);
    assert_eq!(backends.eject_cooldown, Duration::from_secs(30));
    assert_eq!(backends.max_idle_per_backend, Some(64));
    assert_eq!(
        config.snapshot_interval,
        Duration::from_millis(500),
        "a default"
    );
    assert_eq!(config.config.as_deref(), Some(file.as_path()));
    config.validate().unwrap();

    let defaults = parse(&[]).unwrap();
    assert_eq!(
        defaults,
        Config::default(),
        "--help's defaults are Config::default()"
    );
    assert_eq!(defaults.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(defaults.admin, "127.0.0.1:9080".parse().unwrap());
    assert!(defaults.admin.ip().is_loopback());
    assert_eq!(defaults.mass_delete_share, 0.10);
    assert_eq!(defaults.confirm_window, Duration::from_secs(600));
    // The backend settings' defaults are the proxy's own.
    let (ours, proxys) = (defaults.backend_config(), BackendConfig::default());
    assert_eq!(ours.eject_after_failures, proxys.eject_after_failures);
    assert_eq!(ours.eject_cooldown, proxys.eject_cooldown);
    assert_eq!(ours.max_idle_per_backend, proxys.max_idle_per_backend);

    let config = parse(&[
        "--orchestrator",
        "http://a:1,http://b:2",
        "--orchestrator",
        "http://c:3",
    ])
    .unwrap();
    assert_eq!(
        config.orchestrators,
        ["http://a:1", "http://b:2", "http://c:3"]
    );
    assert_eq!(config.proxy_config().drain_timeout, Duration::from_secs(30));

    // TLS from the file, its folder overridden by a flag.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tls.toml");
    std::fs::write(
        &file,
        "tls-listen = \"127.0.0.1:28443\"\ntls-certs = \"/etc/switchyard/certs\"\n",
    )
    .unwrap();
    let config = parse(&[
        "--config",
        file.to_str().unwrap(),
        "--tls-certs",
        "/srv/certs",
    ])
    .unwrap();
    assert_eq!(config.tls_listen, Some("127.0.0.1:28443".parse().unwrap()));
    assert_eq!(config.tls_certs.as_deref(), Some(Path::new("/srv/certs")));
    config.validate().unwrap();
    assert_eq!(defaults.tls_listen, None);

    // The access log: off unless given, in the file or as a flag.
    assert_eq!(defaults.access_log, None);
    std::fs::write(&file, "access-log = \"/var/log/switchyard/access.log\"\n").unwrap();
    let config = parse(&["--config", file.to_str().unwrap()]).unwrap();
    assert_eq!(
        config.access_log.as_deref(),
        Some(Path::new("/var/log/switchyard/access.log"))
    );
    let config = parse(&["--access-log", "/tmp/a.log"]).unwrap();
    assert_eq!(config.access_log.as_deref(), Some(Path::new("/tmp/a.log")));
}

#[test]
fn the_readmes_example_configuration_is_one_the_gateway_reads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("### Gateway configuration")
        .nth(1)
        .expect("the README has a configuration section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a TOML example");
    let config = Config::from_toml(example).unwrap();
    config.validate().unwrap();
    assert_eq!(config.orchestrators.len(), 2);
    assert_eq!(
        config.access_log.as_deref(),
        Some(Path::new("/var/log/switchyard/access.log"))
    );
    assert_eq!(config.confirm_window, Duration::from_secs(600));
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1\"\nconfirm_windo = \"5m\"\n").unwrap();
    let error = parse(&["--config", file.to_str().unwrap()]).unwrap_err();
    assert!(
        matches!(error, gateway::ConfigError::ParseFile { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("confirm_windo"), "{error}");
    let error = Config::from_toml("confirm-window = \"5 minutes\"").unwrap_err();
    assert!(error.contains("unknown unit"), "{error}");
    let error = parse(&["--config", "/nonexistent/gateway.toml"]).unwrap_err();
    assert!(
        matches!(error, gateway::ConfigError::ReadFile { .. }),
        "{error}"
    );
}

#[test]
fn validate_refuses_what_cannot_work_and_names_the_setting() {
    let check = |change: fn(&mut Config), setting: &str| {
        let mut config = Config::default();
        change(&mut config);
        match config.validate() {
            Err(gateway::ConfigError::Invalid { setting: got, .. }) => assert_eq!(got, setting),
            other => panic!("{setting}: {other:?}"),
        }
    };
    check(|c| c.admin = c.listen, "admin");
    check(|c| c.tls_listen = Some(c.listen), "tls-listen");
    check(
        |c| c.tls_certs = Some("/etc/switchyard/certs".into()),
        "tls-certs",
    );
    check(
        |c| {
            c.tls_certs = Some("/etc/switchyard/certs".into());
            c.tls_listen = Some(c.listen);
        },
        "tls-listen",
    );
    check(
        |c| c.orchestrators = vec!["https://orch:7070".into()],
        "orchestrator",
    );
    check(
        |c| c.orchestrators = vec!["orch:7070".into()],
        "orchestrator",
    );
    check(
        |c| c.orchestrators = vec!["http://orch:7070/?x=1".into()],
        "orchestrator",
    );
    check(
        |c| c.orchestrators = vec!["http://a:1".into(), "http://a:1".into()],
        "orchestrator",
    );
    check(|c| c.state_dir = "".into(), "state-dir");
    check(|c| c.mass_delete_share = 0.0, "mass-delete-share");
    check(|c| c.mass_delete_share = 1.5, "mass-delete-share");
    check(|c| c.mass_delete_share = f64::NAN, "mass-delete-share");
    check(|c| c.confirm_window = Duration::ZERO, "confirm-window");
    check(|c| c.ping_timeout = Duration::ZERO, "ping-timeout");
    check(
        |c| c.reconnect_max = Duration::from_millis(10),
        "reconnect-max",
    );
    check(|c| c.drain_timeout = Duration::ZERO, "drain-timeout");
    check(|c| c.max_connections = Some(0), "max-connections");
    check(|c| c.eject_after = 0, "eject-after");
    check(|c| c.eject_cooldown = Duration::ZERO, "eject-cooldown");
    check(|c| c.backend_max_idle = Some(0), "backend-max-idle");
    let config = Config {
        orchestrators: vec!["https://orch:7070".into()],
        ..Config::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.starts_with("--orchestrator https://orch:7070: "),
        "{error}"
    );
    Config::default().validate().unwrap();
}

#[test]
fn durations_are_written_with_a_unit() {
    use gateway::config::parse_duration;
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    for bad in ["", "30", "s", "1.5s", "10 m", "-1s", "5d"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The snapshot payload
// ---------------------------------------------------------------------------------------

#[test]
fn a_table_round_trips_through_the_payload() {
    let routes = [
        Route {
            app: "web".parse().unwrap(),
            domains: vec!["web.test".parse().unwrap(), "*.web.test".parse().unwrap()],
            backends: vec![
                Backend::new("127.0.0.1:8080", 3).unwrap(),
                Backend::new("[::1]:8081", 1000).unwrap(),
                Backend::new("backend.internal:80", 1).unwrap(),
            ],
            fail_open: true,
        },
        Route {
            app: "nobackend".parse().unwrap(),
            domains: vec![],
            backends: vec![],
            fail_open: false,
        },
    ];
    let table = RouteTable::from_routes(42, routes.clone());
    let back = persist::decode(&persist::encode(&table)).unwrap();
    assert_eq!(back.version(), 42);
    assert_eq!(back.len(), 2);
    assert_eq!(back.domain_count(), 2);
    for route in &routes {
        assert_eq!(
            back.app(route.app.as_str()).map(|r| r.to_model()).as_ref(),
            Some(route)
        );
    }
    assert_eq!(back.lookup("shop.web.test").unwrap().app(), "web");

    let empty = persist::decode(&persist::encode(&RouteTable::empty())).unwrap();
    assert_eq!((empty.version(), empty.len()), (0, 0));
}

#[test]
fn a_payload_that_is_not_a_table_is_refused() {
    let table = RouteTable::from_routes(1, routes("app", 100));
    let payload = persist::encode(&table);
    assert!(matches!(
        persist::decode(b""),
        Err(persist::DecodeError::BadMagic)
    ));
    assert!(matches!(
        persist::decode(b"not a table"),
        Err(persist::DecodeError::BadMagic)
    ));
    let mut newer = payload.clone();
    newer[8] = 2;
    assert!(matches!(
        persist::decode(&newer),
        Err(persist::DecodeError::UnknownVersion { found: 2, .. })
    ));
    for cut in [20, payload.len() / 2, payload.len() - 1] {
        assert!(
            matches!(
                persist::decode(&payload[..cut]),
                Err(persist::DecodeError::Malformed(_))
            ),
            "cut at {cut}"
        );
    }
    let mut longer = payload.clone();
    longer.push(0);
    assert!(matches!(
        persist::decode(&longer),
        Err(persist::DecodeError::Malformed(_))
    ));
    // An app id that model refuses.
    let mut bad = payload;
    let at = bad.windows(4).position(|w| w == b"app5").unwrap();
    bad[at] = b'A';
    assert!(matches!(
        persist::decode(&bad),
        Err(persist::DecodeError::Route { .. })
    ));
}

/// Routes shaped like a real region's: two domains, two backends each. Route 0 goes to
/// `backend` alone; the others' backends are loopback addresses nobody listens on (never
/// anything outside this machine).
fn region(n: usize, backend: SocketAddr) -> impl Iterator<Item = Route> {
    (0..n).map(move |i| {
        let host = format!("127.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
        let backends = if i == 0 {
            vec![Backend::new(backend.to_string(), 1).unwrap()]
        } else {
            vec![
                Backend::new(format!("{host}:8080"), 1).unwrap(),
                Backend::new(format!("{host}:8081"), 1).unwrap(),
            ]
        };
        Route {
            app: format!("app-{i}").parse().unwrap(),
            domains: vec![
                format!("app-{i}.apps.example.com").parse().unwrap(),
                format!("www.customer-{i}.com").parse().unwrap(),
            ],
            backends,
            fail_open: false,
        }
    })
}

/// Writes `n` routes to a fresh state folder, then times a gateway's start from it to its
/// first proxied request. Prints the numbers (no assertion on them: timing is not
/// asserted; the target is under a second at a million routes in a release build).
async fn time_a_start_from_disk(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let name = backend("first").await;
    let table = RouteTable::from_routes(9, region(n, name));
    let payload = persist::encode(&table);
    let store = SnapshotStore::open(dir.path()).unwrap();
    store.write(&persist::meta(&table), &payload).unwrap();
    let file_bytes = std::fs::metadata(dir.path().join(snapshot::CURRENT_FILE))
        .unwrap()
        .len();
    drop((table, store));

    let started = Instant::now();
    let loaded = SnapshotStore::open(dir.path())
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    let read = started.elapsed();
    let decoded = persist::decode(&loaded.payload).unwrap();
    let decode = started.elapsed() - read;
    assert_eq!(decoded.len(), n);
    drop((loaded, decoded));

    let started = Instant::now();
    let gateway = start(config(dir.path(), &[])).await;
    let bound = started.elapsed();
    assert_eq!(gateway.table().len(), n);
    let url = format!("http://{}/", gateway.listen_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(gateway.serve(async move {
        let _ = stopped.await;
    }));
    let (status, body) = request(Method::GET, &url, Some("www.customer-0.com"), "").await;
    let first_request = started.elapsed();
    eprintln!(
        "start from disk at {n} routes: payload {} MB, file {} MB; read+check+decompress {:?}, \
         decode+build {:?}; Gateway::start (load, bind) {:?}; first proxied request {:?} ({status})",
        payload.len() / 1_000_000,
        file_bytes / 1_000_000,
        read,
        decode,
        bound,
        first_request
    );
    stop.send(()).unwrap();
    within("stop", serving).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "first"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_from_a_100k_route_snapshot() {
    time_a_start_from_disk(100_000).await;
}

/// A million routes: minutes in a debug build, so only with `SWITCHYARD_SLOW_TESTS=1`
/// (run it with `--release` for the real number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_from_a_million_route_snapshot() {
    if std::env::var_os("SWITCHYARD_SLOW_TESTS").is_none() {
        eprintln!("skipped: set SWITCHYARD_SLOW_TESTS=1 to run");
        return;
    }
    time_a_start_from_disk(1_000_000).await;
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_tls_and_reloads_its_certificates_on_the_admin_api() {
    use crate::tls::{connect, get as get_tls, TestCa};
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(certs.path(), "app0.pem", &["app0.test"]);
    let zero = backend("zero").await;
    write_generation(
        dir.path(),
        &RouteTable::from_routes(1, [route("app0", &[zero]), route("app1", &[zero])]),
    );
    let mut config = config(dir.path(), &[]);
    config.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    config.tls_certs = Some(certs.path().to_owned());
    let gateway = start(config).await;
    let tls = gateway.tls_addr().expect("a TLS listener");
    let reload_url = format!("http://{}/admin/tls/reload", gateway.admin_addr());
    let metrics_url = format!("http://{}/metrics", gateway.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));

    let client = ca.client(&[b"http/1.1"]);
    let stream = connect(&client, tls, "app0.test").await.unwrap();
    assert_eq!(get_tls(stream, "app0.test", "/").await.2, "zero");
    assert!(connect(&client, tls, "app1.test").await.is_err());

    ca.issue(certs.path(), "app1.pem", &["app1.test"]);
    let (status, body) = request(Method::POST, &reload_url, None, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["reloaded"]["files"],
        2
    );
    let stream = connect(&client, tls, "app1.test").await.unwrap();
    assert_eq!(get_tls(stream, "app1.test", "/").await.2, "zero");

    std::fs::write(certs.path().join("broken.pem"), "not PEM at all").unwrap();
    let (status, body) = request(Method::POST, &reload_url, None, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "tls_reload_failed");
    assert!(
        body["detail"].as_str().unwrap().contains("broken.pem"),
        "{body}"
    );
    let stream = connect(&client, tls, "app1.test").await.unwrap();
    assert_eq!(get_tls(stream, "app1.test", "/").await.2, "zero");

    let (_, text) = request(Method::GET, &metrics_url, None, "").await;
    let failures = metric(&text, "switchyard_gateway_tls_handshake_failures_total");
    assert!(failures.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        metric(&text, "switchyard_gateway_tls_certificates"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "switchyard_gateway_tls_earliest_expiry_timestamp_seconds"
        ),
        Some(crate::tls::EXPIRES)
    );

    let _ = stop.send(());
    within("the gateway to stop", served)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_folder_it_cannot_use_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_generation(dir.path(), &RouteTable::from_routes(1, [route("a", &[])]));
    let certs = tempfile::tempdir().unwrap();
    crate::tls::TestCa::new().issue(certs.path(), "good.pem", &["a.test"]);
    std::fs::write(
        certs.path().join("half.pem"),
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    let start_error = |certs: &Path| {
        let mut config = config(dir.path(), &[]);
        config.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        config.tls_certs = Some(certs.to_owned());
        async move {
            match within("start", Gateway::start(config)).await {
                Ok(_) => panic!("the gateway started"),
                Err(e) => e,
            }
        }
    };
    let error = start_error(certs.path()).await;
    assert!(matches!(error, gateway::Error::Tls(_)), "{error}");
    assert!(error.to_string().contains("half.pem"), "{error}");

    let missing = certs.path().join("missing");
    let error = start_error(&missing).await.to_string();
    assert!(
        error.contains("cannot read the TLS certificate folder"),
        "{error}"
    );
}

/// `switchyard_gateway_thread_connections_open` per thread, in thread order.
fn thread_connections(text: &str) -> Vec<f64> {
    let mut threads: Vec<(u32, f64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("switchyard_gateway_thread_connections_open{thread=\"")?;
            let (thread, value) = rest.split_once("\"} ")?;
            Some((thread.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect();
    threads.sort_by_key(|(thread, _)| *thread);
    threads.into_iter().map(|(_, open)| open).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_threads_report_their_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let zero = backend("zero").await;
    write_generation(
        dir.path(),
        &RouteTable::from_routes(1, [route("app0", &[zero])]),
    );
    let gateway = start(config(dir.path(), &[])).await.with_proxy_threads(2);
    let proxy = gateway.listen_addr();
    let metrics_url = format!("http://{}/metrics", gateway.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));

    // Six kept-alive connections, each answered once.
    let mut senders = Vec::new();
    for _ in 0..6 {
        let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header(http::header::HOST, "app0.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = within("an answer", sender.send_request(req)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        senders.push(sender);
    }
    let text = request(Method::GET, &metrics_url, None, "").await.1;
    let open = thread_connections(&text);
    assert_eq!(open.len(), 2, "{text}");
    assert_eq!(open.iter().sum::<f64>(), 6.0, "{text}");

    drop(senders);
    eventually("the connections to close", || async {
        let text = request(Method::GET, &metrics_url, None, "").await.1;
        thread_connections(&text) == [0.0, 0.0]
    })
    .await;
    let _ = stop.send(());
    within("the gateway to stop", served)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_address_in_use_is_a_startup_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_generation(dir.path(), &RouteTable::from_routes(1, [route("a", &[])]));
    let certs = tempfile::tempdir().unwrap();
    crate::tls::TestCa::new().issue(certs.path(), "a.pem", &["a.test"]);
    // Held without SO_REUSEPORT, so the gateway cannot bind beside it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut config = config(dir.path(), &[]);
    config.tls_listen = Some(addr);
    config.tls_certs = Some(certs.path().to_owned());
    let error = match within("start", Gateway::start(config)).await {
        Ok(_) => panic!("the gateway started"),
        Err(e) => e,
    };
    assert!(matches!(error, gateway::Error::Bind { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("cannot listen on {addr} for the TLS proxy")),
        "{text}"
    );
}

#[tokio::test]
async fn a_stopped_gateway_frees_its_table_unless_asked_to_keep_it_for_exit() {
    let backend = backend("one").await;
    for keep in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_generation(
            dir.path(),
            &RouteTable::from_routes(1, [route("app", &[backend])]),
        );
        let mut gateway = start(config(dir.path(), &[])).await;
        if keep {
            gateway = gateway.keep_table_at_exit();
        }
        let table = gateway.table();
        assert_eq!(table.len(), 1);
        within("the gateway to stop", gateway.serve(async {}))
            .await
            .expect("it stops cleanly");
        if keep {
            // Long after the gateway's last task ended (the other case settles at
            // once), ours and the one the stopped gateway left behind.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(Arc::strong_count(&table), 2);
        } else {
            // Aborted background tasks let go of it as the runtime drops them.
            eventually("the gateway to let go of its table", || {
                let owners = Arc::strong_count(&table);
                async move { owners == 1 }
            })
            .await;
        }
    }
}
