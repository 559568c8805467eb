//! The request path: routing, forwarding, streaming, status pages, load balancing.
//!
//! Every test runs the real `Proxy::serve` on a loopback socket in front of real hyper
//! backends, and talks to it as a client would. Nothing asserts timing: timeouts here
//! only turn a hang into a failure.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway::proxy::{AccessLog, BackendConfig, Proxy, ProxyConfig};
use gateway::RouteTable;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use model::{Backend, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type TestBody = BoxBody<Bytes, BoxError>;
type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        )
            -> Pin<Box<dyn Future<Output = io::Result<Response<TestBody>>> + Send + 'static>>
        + Send
        + Sync,
>;

/// Fails the test instead of hanging it.
pub(crate) async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("gave up after a minute")
}

fn text(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<Response<TestBody>>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A backend HTTP/1.1 server on a loopback port.
pub(crate) struct TestBackend {
    pub(crate) addr: SocketAddr,
    accept: JoinHandle<()>,
    kill: watch::Sender<bool>,
}

impl TestBackend {
    async fn start(handler: Handler) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = watch::channel(false);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handler(req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|killed| *killed) => {}
                    }
                });
            }
        });
        TestBackend { addr, accept, kill }
    }

    /// A backend that answers with its name, and more by path (see [`named_handler`]).
    pub(crate) async fn named(name: &'static str) -> TestBackend {
        TestBackend::start(named_handler(name)).await
    }

    /// Closes the listener and every connection, and waits until they are closed.
    async fn kill(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let _ = self.kill.send(true);
        self.kill.closed().await;
    }
}

/// `/` (and anything else): the name. `/headers`: the request's headers, one
/// `name: value` per line. `/echo`: the request body, streamed back. `/count`: the
/// request body's length, once all of it is in. `/refuse`: 413 at once, the body
/// unread. `/close`: closes the connection without answering. `/stall`: never answers.
/// `/late`: answers after a second. `/hop`: an answer with hop-by-hop headers. `/ws`:
/// accepts an `Upgrade: echo` and echoes bytes after it. `/empty`: 204.
fn named_handler(name: &'static str) -> Handler {
    handler(move |mut req: Request<Incoming>| async move {
        let response = match req.uri().path() {
            "/headers" => Response::new(text(dump(req.headers()))),
            "/echo" => Response::new(req.into_body().map_err(BoxError::from).boxed()),
            "/count" => {
                let body = req.into_body().collect().await;
                let body = body.map_err(io::Error::other)?.to_bytes();
                Response::new(text(body.len().to_string()))
            }
            "/refuse" => Response::builder()
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .body(text("refused\n"))
                .unwrap(),
            "/close" => return Err(io::Error::other("closing without an answer")),
            "/stall" => std::future::pending().await,
            "/late" => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Response::new(text("late"))
            }
            "/empty" => Response::builder().status(204).body(empty()).unwrap(),
            "/hop" => Response::builder()
                .header(CONNECTION, "x-secret")
                .header("x-secret", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header(UPGRADE, "nothing")
                .header("x-kept", "yes")
                .body(text(name))
                .unwrap(),
            "/ws" => {
                let saw_upgrade = req.headers().get(UPGRADE).cloned();
                let saw_connection = req.headers().get(CONNECTION).cloned();
                let upgraded = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(upgraded) = upgraded.await else { return };
                    let (mut from, mut to) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = to.shutdown().await;
                });
                let mut response = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(UPGRADE, "echo")
                    .header(CONNECTION, "upgrade");
                if let Some(value) = saw_upgrade {
                    response = response.header("x-saw-upgrade", value);
                }
                if let Some(value) = saw_connection {
                    response = response.header("x-saw-connection", value);
                }
                response.body(empty()).unwrap()
            }
            _ => Response::new(text(name)),
        };
        Ok(response)
    })
}

fn dump(headers: &HeaderMap) -> String {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {}\n", value.to_str().unwrap_or("?")))
        .collect()
}

/// The values of header `name` in a [`dump`].
pub(crate) fn values<'a>(dump: &'a str, name: &str) -> Vec<&'a str> {
    dump.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(n, _)| *n == name)
        .map(|(_, value)| value)
        .collect()
}

pub(crate) fn route(app: &str, domains: &[&str], backends: &[(SocketAddr, u16)]) -> Route {
    Route {
        app: app.parse().unwrap(),
        domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
        backends: backends
            .iter()
            .map(|(addr, weight)| Backend::new(addr.to_string(), *weight).unwrap())
            .collect(),
        fail_open: false,
    }
}

/// An address nothing listens on, and nothing will: its port stays bound, not
/// listening, until the tests end (a connect to it is refused). Freed at once, the port
/// could be taken by another test's listener, running meanwhile, and answer.
pub(crate) async fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Held for the rest of the process: one file each, a few dozen in all.
    std::mem::forget(socket);
    addr
}

/// A proxy serving on a loopback port.
pub(crate) struct Gateway {
    pub(crate) addr: SocketAddr,
    pub(crate) proxy: Arc<Proxy>,
    table: Arc<ArcSwap<RouteTable>>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<io::Result<()>>,
}

impl Gateway {
    pub(crate) async fn start(routes: Vec<Route>) -> Gateway {
        Gateway::start_with(routes, ProxyConfig::default(), BackendConfig::default()).await
    }

    /// Serves `app.test` from `backend` alone, with `config`.
    async fn for_app(backend: &TestBackend, config: ProxyConfig) -> Gateway {
        let routes = vec![route("app", &["app.test"], &[(backend.addr, 1)])];
        Gateway::start_with(routes, config, BackendConfig::default()).await
    }

    /// Serves `routes`, logging every request to `log`.
    pub(crate) async fn start_logging(routes: Vec<Route>, log: Arc<AccessLog>) -> Gateway {
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::from_routes(1, routes)));
        let proxy = Proxy::new(Arc::clone(&table), ProxyConfig::default()).with_access_log(log);
        Gateway::serve(Arc::new(proxy), table).await
    }

    /// As [`Gateway::start_logging`], with the proxy's metrics in `recorder`.
    pub(crate) async fn start_observed(
        routes: Vec<Route>,
        log: Arc<AccessLog>,
        recorder: &metrics_exporter_prometheus::PrometheusRecorder,
    ) -> Gateway {
        Gateway::start_metered_with(routes, Some(log), recorder).await
    }

    /// A gateway whose proxy records its metrics in `recorder`.
    pub(crate) async fn start_metered(
        routes: Vec<Route>,
        recorder: &metrics_exporter_prometheus::PrometheusRecorder,
    ) -> Gateway {
        Gateway::start_metered_with(routes, None, recorder).await
    }

    async fn start_metered_with(
        routes: Vec<Route>,
        log: Option<Arc<AccessLog>>,
        recorder: &metrics_exporter_prometheus::PrometheusRecorder,
    ) -> Gateway {
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::from_routes(1, routes)));
        // The proxy registers its metrics when it is made.
        let mut proxy = metrics::with_local_recorder(recorder, || {
            Proxy::new(Arc::clone(&table), ProxyConfig::default())
        });
        if let Some(log) = log {
            proxy = proxy.with_access_log(log);
        }
        Gateway::serve(Arc::new(proxy), table).await
    }

    pub(crate) async fn start_with(
        routes: Vec<Route>,
        config: ProxyConfig,
        backends: BackendConfig,
    ) -> Gateway {
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::from_routes(1, routes)));
        let proxy = Proxy::with_backend_config(Arc::clone(&table), config, backends);
        Gateway::serve(Arc::new(proxy), table).await
    }

    async fn serve(proxy: Arc<Proxy>, table: Arc<ArcSwap<RouteTable>>) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(Arc::clone(&proxy).serve(listener, async {
            let _ = stopped.await;
        }));
        Gateway {
            addr,
            proxy,
            table,
            stop: Some(stop),
            served,
        }
    }

    pub(crate) async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }
}

/// An HTTP/1.1 client on one keep-alive connection.
pub(crate) struct Client {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Client { sender }
    }

    async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        within(async {
            self.sender.ready().await.unwrap();
            self.sender.send_request(req).await.unwrap()
        })
        .await
    }

    async fn request(
        &mut self,
        method: Method,
        host: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host)
            .body(if body.is_empty() {
                empty()
            } else {
                text(body.to_string())
            })
            .unwrap();
        let response = self.send(req).await;
        let status = response.status();
        let body = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    pub(crate) async fn get(&mut self, host: &str, path: &str) -> (StatusCode, String) {
        self.request(Method::GET, host, path, "").await
    }
}

pub(crate) fn ok(body: &str) -> (StatusCode, String) {
    (StatusCode::OK, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_exact_host_and_wildcard_on_the_normalised_host() {
    let exact = TestBackend::named("exact").await;
    let wild = TestBackend::named("wild").await;
    let gateway = Gateway::start(vec![
        route("exact", &["app.test"], &[(exact.addr, 1)]),
        route("wild", &["*.wild.test"], &[(wild.addr, 1)]),
    ])
    .await;
    let mut client = gateway.client().await;

    assert_eq!(client.get("app.test", "/").await, ok("exact"));
    assert_eq!(client.get("APP.Test:8080", "/").await, ok("exact"));
    assert_eq!(client.get("app.test.", "/").await, ok("exact"));
    assert_eq!(client.get("app.test.:80", "/").await, ok("exact"));
    assert_eq!(client.get("shop.wild.test", "/").await, ok("wild"));
    assert_eq!(client.get("Shop.WILD.test:443", "/").await, ok("wild"));
    assert_eq!(
        client.get("a.b.wild.test", "/").await,
        (
            StatusCode::NOT_FOUND,
            "no route for host a.b.wild.test\n".to_string()
        )
    );
    assert_eq!(
        client.get("wild.test", "/").await,
        (
            StatusCode::NOT_FOUND,
            "no route for host wild.test\n".to_string()
        )
    );

    // In absolute form, the request's authority wins over its Host header.
    let req = Request::builder()
        .uri("http://app.test/")
        .header(HOST, "shop.wild.test")
        .body(empty())
        .unwrap();
    let response = client.send(req).await;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_each_failure_with_its_status_and_a_body_that_says_which() {
    let live = TestBackend::named("live").await;
    let dead = dead_addr().await;
    let config = ProxyConfig {
        first_byte_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let gateway = Gateway::start_with(
        vec![
            route("live", &["live.test"], &[(live.addr, 1)]),
            route("dead", &["dead.test"], &[(dead, 1)]),
            route("empty", &["empty.test"], &[]),
        ],
        config,
        BackendConfig::default(),
    )
    .await;
    let mut client = gateway.client().await;
    let answer = |status: StatusCode, body: &str| (status, body.to_string());

    assert_eq!(
        client.get("nowhere.test", "/").await,
        answer(StatusCode::NOT_FOUND, "no route for host nowhere.test\n")
    );
    assert_eq!(
        client.get("bad_host!", "/").await,
        answer(StatusCode::BAD_REQUEST, "missing or invalid Host header\n")
    );
    assert_eq!(
        client.get("live.test:http", "/").await,
        answer(StatusCode::BAD_REQUEST, "missing or invalid Host header\n")
    );
    assert_eq!(
        client.get("empty.test", "/").await,
        answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend available for host empty.test\n"
        )
    );
    assert_eq!(
        client.get("dead.test", "/").await,
        answer(StatusCode::BAD_GATEWAY, "could not connect to a backend\n")
    );
    assert_eq!(
        client.get("live.test", "/close").await,
        answer(StatusCode::BAD_GATEWAY, "backend connection failed\n")
    );
    assert_eq!(
        client.get("live.test", "/stall").await,
        answer(
            StatusCode::GATEWAY_TIMEOUT,
            "backend did not answer in time\n"
        )
    );

    // No Host header at all.
    let req = Request::builder().uri("/").body(empty()).unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "missing or invalid Host header\n");

    // And the proxy still serves the good route on the same connection.
    assert_eq!(client.get("live.test", "/").await, ok("live"));
}

/// Chunks of the streamed bodies: 64 KiB, each different.
const CHUNK: usize = 64 * 1024;
/// 64 MiB.
const CHUNKS: u64 = 1024;
/// Chunks a [`Pattern`] sends before waiting for its gate: the far side must have
/// seen bytes by then, which a proxy that buffered whole bodies would never allow.
const GATE_AT: u64 = 16;

fn chunk(index: u64) -> Bytes {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        (0..CHUNK / 8)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect()
    });
    let mut chunk = base.clone();
    chunk[..8].copy_from_slice(&index.to_le_bytes());
    Bytes::from(chunk)
}

/// The hash and length of all [`CHUNKS`] chunks.
fn expected_digest() -> (u64, u64) {
    let mut hasher = DefaultHasher::new();
    for index in 0..CHUNKS {
        hasher.write(&chunk(index));
    }
    (CHUNKS * CHUNK as u64, hasher.finish())
}

/// A 64 MiB body made on the fly, which stops after [`GATE_AT`] chunks until `gate`
/// fires.
struct Pattern {
    next: u64,
    gate: Option<oneshot::Receiver<()>>,
    exact_size: bool,
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.next == CHUNKS {
            return Poll::Ready(None);
        }
        if this.next == GATE_AT {
            if let Some(gate) = &mut this.gate {
                let opened = ready!(Pin::new(gate).poll(cx));
                this.gate = None;
                if opened.is_err() {
                    return Poll::Ready(Some(Err("the gate was dropped".into())));
                }
            }
        }
        let data = chunk(this.next);
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_size {
            SizeHint::with_exact(CHUNKS * CHUNK as u64)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads `body` frame by frame; fires `first` at the first data. Returns its length
/// and hash.
async fn digest<B>(mut body: B, mut first: Option<oneshot::Sender<()>>) -> (u64, u64)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut hasher = DefaultHasher::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
            len += data.len() as u64;
            hasher.write(&data);
        }
    }
    (len, hasher.finish())
}

/// The gates of a [`streaming_backend`]'s next upload and download.
#[derive(Default)]
struct Gates {
    upload: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    download: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
}

/// A backend whose `/sink` reads the request body, opening the upload's gate at its
/// first bytes, and answers with its length, its hash and how it was framed
/// (`chunked` or `length`); and whose `/pattern` sends a [`Pattern`] that waits for
/// the download's gate (the client's first bytes) before sending more than
/// [`GATE_AT`] chunks.
async fn streaming_backend() -> (TestBackend, Gates) {
    let gates = Gates::default();
    let upload_gate = Arc::clone(&gates.upload);
    let download_gate = Arc::clone(&gates.download);
    let backend = TestBackend::start(handler(move |req: Request<Incoming>| {
        let upload_gate = upload_gate.lock().unwrap().take();
        let download_gate = download_gate.lock().unwrap().take();
        async move {
            match req.uri().path() {
                "/sink" => {
                    let framing = if req.headers().contains_key("transfer-encoding") {
                        "chunked"
                    } else if req.headers().contains_key("content-length") {
                        "length"
                    } else {
                        "none"
                    };
                    let (len, hash) = digest(req.into_body(), upload_gate).await;
                    Ok(Response::new(text(format!("{len} {hash} {framing}"))))
                }
                _ => Ok(Response::new(
                    Pattern {
                        next: 0,
                        gate: download_gate,
                        exact_size: true,
                    }
                    .boxed(),
                )),
            }
        }
    }))
    .await;
    (backend, gates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_64_mib_each_way_without_buffering_it() {
    let (backend, gates) = streaming_backend().await;
    let gateway = Gateway::start(vec![route("big", &["big.test"], &[(backend.addr, 1)])]).await;
    let mut client = gateway.client().await;
    let (expected_len, expected_hash) = expected_digest();

    // Upload: chunked, of unknown length.
    let (open_upload, upload_opened) = oneshot::channel();
    *gates.upload.lock().unwrap() = Some(open_upload);
    let body = Pattern {
        next: 0,
        gate: Some(upload_opened),
        exact_size: false,
    };
    let req = Request::post("/sink")
        .header(HOST, "big.test")
        .body(body.boxed())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(answer, format!("{expected_len} {expected_hash} chunked"));

    // Download: with a Content-Length.
    let (open_download, download_opened) = oneshot::channel();
    *gates.download.lock().unwrap() = Some(download_opened);
    let req = Request::get("/pattern")
        .header(HOST, "big.test")
        .body(empty())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        expected_len.to_string().as_str()
    );
    let got = within(digest(response.into_body(), Some(open_download))).await;
    assert_eq!(got, (expected_len, expected_hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_64_mib_up_over_http2_with_or_without_a_length_on_one_pooled_socket() {
    let (backend, gates) = streaming_backend().await;
    let gateway = Gateway::start(vec![route("big", &["big.test"], &[(backend.addr, 1)])]).await;
    let sender = http2_client::<Pattern>(gateway.addr).await;
    let (expected_len, expected_hash) = expected_digest();
    // HTTP/2 frames a body by itself: the backend gets it chunked, or with the length
    // the client stated.
    for (exact_size, framing) in [(false, "chunked"), (true, "length")] {
        let (open_upload, upload_opened) = oneshot::channel();
        *gates.upload.lock().unwrap() = Some(open_upload);
        let body = Pattern {
            next: 0,
            gate: Some(upload_opened),
            exact_size,
        };
        let req = Request::post("http://big.test/sink").body(body).unwrap();
        let response = within(sender.clone().send_request(req)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let answer = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(answer, format!("{expected_len} {expected_hash} {framing}"));
    }
    // Both went on one plain socket, back in the pool after each.
    let stats = || gateway.proxy.backend(&backend.addr.to_string()).unwrap();
    eventually(|| stats().idle_connections == 1 && stats().in_flight == 0).await;
    assert_eq!(stats().connects_total, 1, "{:?}", stats());
}

/// A request body the test sends frame by frame; it ends when the sender is dropped.
struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|data| data.map(|data| Ok(Frame::data(data))))
    }
}

type Feed = tokio::sync::mpsc::Sender<Bytes>;

/// Sends a `POST` to `app.test` at `path` on `sender`, its body fed through the sender
/// returned (after `first`, if any), and the answer on its way.
async fn fed_post(
    sender: &mut hyper::client::conn::http2::SendRequest<Fed>,
    path: &str,
    first: Option<&'static [u8]>,
) -> (Feed, JoinHandle<hyper::Result<Response<Incoming>>>) {
    let (feed, body) = tokio::sync::mpsc::channel(4);
    if let Some(first) = first {
        feed.send(Bytes::from_static(first)).await.unwrap();
    }
    let req = Request::post(format!("http://app.test{path}"))
        .body(Fed(body))
        .unwrap();
    (feed, tokio::spawn(sender.send_request(req)))
}

/// The status and the whole body of the answer on its way.
async fn answer_of(response: JoinHandle<hyper::Result<Response<Incoming>>>) -> (StatusCode, Bytes) {
    let response = within(response).await.unwrap().unwrap();
    let status = response.status();
    let body = within(response.into_body().collect()).await.unwrap();
    (status, body.to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_end_of_an_http2_upload_reaches_the_client_and_ends_its_socket() {
    let backend = TestBackend::named("app").await;
    let gateway = Gateway::start(vec![route("app", &["app.test"], &[(backend.addr, 1)])]).await;
    let stats = || gateway.proxy.backend(&backend.addr.to_string()).unwrap();
    let mut sender = http2_client::<Fed>(gateway.addr).await;

    // An upload that has not ended, refused by the backend without reading it.
    let (feed, response) = fed_post(&mut sender, "/refuse", Some(b"the start of an upload")).await;
    let refused = answer_of(response).await;
    assert_eq!(refused, (StatusCode::PAYLOAD_TOO_LARGE, "refused\n".into()));
    eventually(|| stats().in_flight == 0).await;
    // The backend was left a request cut short: its socket is not pooled.
    assert_eq!(stats().idle_connections, 0, "{:?}", stats());
    drop(feed);

    // A body that ends with no data (its stream ended by an empty frame), then one
    // fed in pieces and counted once all of it is in: each on the pooled socket.
    let (feed, response) = fed_post(&mut sender, "/count", None).await;
    drop(feed);
    assert_eq!(answer_of(response).await, (StatusCode::OK, "0".into()));
    let (feed, response) = fed_post(&mut sender, "/count", None).await;
    for piece in ["one ", "two ", "three"] {
        feed.send(Bytes::from_static(piece.as_bytes()))
            .await
            .unwrap();
    }
    drop(feed);
    assert_eq!(answer_of(response).await, (StatusCode::OK, "13".into()));
    eventually(|| stats().idle_connections == 1 && stats().in_flight == 0).await;
    assert_eq!(stats().connects_total, 2, "{:?}", stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_byte_timeout_counts_from_the_last_bytes_of_an_http2_upload() {
    let backend = TestBackend::named("app").await;
    let config = ProxyConfig {
        first_byte_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    let gateway = Gateway::for_app(&backend, config).await;
    let mut sender = http2_client::<Fed>(gateway.addr).await;
    // An upload that takes longer than the timeout, its pieces well within it of each
    // other; the backend answers once it has all of it.
    let (feed, response) = fed_post(&mut sender, "/count", None).await;
    for _ in 0..6 {
        feed.send(Bytes::from_static(b"0123456789")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(feed);
    assert_eq!(answer_of(response).await, (StatusCode::OK, "60".into()));

    // And one that stops mid-way is the backend's wait, timed out.
    let (feed, response) = fed_post(&mut sender, "/count", Some(b"and then nothing")).await;
    let (status, _) = answer_of(response).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    drop(feed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_http2_with_prior_knowledge() {
    let backend = TestBackend::named("h2").await;
    let gateway = Gateway::start(vec![route("h2", &["app.test"], &[(backend.addr, 1)])]).await;
    let sender = http2_client(gateway.addr).await;

    let request = |method: Method, path: &str, body: &'static str| {
        let mut sender = sender.clone();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://App.Test{path}"))
            .body(if body.is_empty() { empty() } else { text(body) })
            .unwrap();
        async move {
            let response = within(sender.send_request(req)).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };

    assert_eq!(request(Method::GET, "/", "").await, ok("h2"));
    assert_eq!(request(Method::POST, "/echo", "ping").await, ok("ping"));
    let (status, seen) = request(Method::GET, "/headers", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(values(&seen, "host"), ["App.Test"]);
    assert_eq!(values(&seen, "x-forwarded-host"), ["App.Test"]);
    assert_eq!(values(&seen, "via"), ["2 switchyard"]);

    // Many streams at once on the one connection.
    let answers = futures_join_all((0..50).map(|_| request(Method::GET, "/", ""))).await;
    assert!(
        answers.iter().all(|answer| *answer == ok("h2")),
        "{answers:?}"
    );
}

/// Runs futures concurrently, each in its own task.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(within(task).await.unwrap());
    }
    outputs
}

/// Reads a response head, byte by byte, up to its blank line.
/// An HTTP/2 client with prior knowledge on a new connection to `addr`, whose
/// connection a task of its own drives.
pub(crate) async fn http2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

pub(crate) async fn read_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(within(stream.read_u8()).await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_an_upgrade_through_and_copies_bytes_both_ways() {
    let backend = TestBackend::named("ws").await;
    let gateway = Gateway::start(vec![route("ws", &["app.test"], &[(backend.addr, 1)])]).await;

    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    // The backend was asked to upgrade, with the hop-by-hop `keep-alive` gone.
    assert!(head.contains("\r\nx-saw-upgrade: echo\r\n"), "{head}");
    assert!(head.contains("\r\nx-saw-connection: upgrade\r\n"), "{head}");

    echoes_until_closed(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_backend_sends_with_its_101_reach_the_client_first() {
    // A backend that switches and speaks first, in the same write as its 101, then
    // echoes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let _ = read_head(&mut stream).await;
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\
                  Connection: Upgrade\r\nX-Kept: yes\r\n\r\nhello first",
            )
            .await
            .unwrap();
        let (mut from, mut to) = stream.split();
        let _ = tokio::io::copy(&mut from, &mut to).await;
    });
    let gateway = Gateway::start(vec![route("ws", &["app.test"], &[(addr, 1)])]).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nx-kept: yes\r\n"), "{head}");
    let mut first = [0; 11];
    within(stream.read_exact(&mut first)).await.unwrap();
    assert_eq!(&first, b"hello first");
    echoes_until_closed(&mut stream).await;
    // The tunnel's socket is the tunnel's: never pooled.
    let stats = gateway.proxy.backend(&addr.to_string()).unwrap();
    assert_eq!(stats.idle_connections, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_backend_declines_or_that_has_a_body_is_a_plain_request() {
    let backend = TestBackend::named("app").await;
    let gateway = Gateway::start(vec![route("app", &["app.test"], &[(backend.addr, 1)])]).await;
    let stats = || gateway.proxy.backend(&backend.addr.to_string()).unwrap();

    // Declined: the backend answers as to any request. The answer goes on, and the
    // socket, which the backend might have meant to switch, is not pooled.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut body = [0; 3];
    within(stream.read_exact(&mut body)).await.unwrap();
    assert_eq!(&body, b"app");
    eventually(|| stats().in_flight == 0).await;
    assert_eq!(stats().idle_connections, 0, "{:?}", stats());

    // With a body: sent whole, without the `Upgrade` (a client may not switch before
    // its request is sent whole, and a server may ignore the header).
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(
            b"POST /headers HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n\
              Upgrade: echo\r\nContent-Length: 4\r\n\r\nbody",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("a length")
        .parse()
        .unwrap();
    let mut seen = vec![0; length];
    within(stream.read_exact(&mut seen)).await.unwrap();
    let seen = String::from_utf8(seen).unwrap();
    assert!(values(&seen, "upgrade").is_empty(), "{seen}");
    assert!(values(&seen, "connection").is_empty(), "{seen}");
    assert_eq!(values(&seen, "content-length"), ["4"], "{seen}");
}

/// Through a tunnel to the `/ws` echo: bytes come back as sent, and closing our side
/// closes the backend's, which closes ours.
pub(crate) async fn echoes_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
) {
    for message in [&b"hello"[..], b"over the tunnel", &[7u8; 100_000]] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0; message.len()];
        within(stream.read_exact(&mut echoed)).await.unwrap();
        assert_eq!(echoed, message);
    }
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_the_backend_who_asked_and_strips_hop_by_hop_headers_both_ways() {
    let backend = TestBackend::named("app").await;
    let gateway = Gateway::start(vec![route("app", &["app.test"], &[(backend.addr, 1)])]).await;
    let mut client = gateway.client().await;

    let req = Request::get("/headers")
        .header(HOST, "App.Test:8080")
        .header(CONNECTION, "keep-alive, X-Hop")
        .header("x-hop", "dropped")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header(UPGRADE, "h2c")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-forwarded-proto", "https")
        .header("via", "1.0 edge")
        .header("x-kept", "yes")
        .body(empty())
        .unwrap();
    let response = client.send(req).await;
    let seen = response.into_body().collect().await.unwrap().to_bytes();
    let seen = String::from_utf8(seen.to_vec()).unwrap();

    assert_eq!(values(&seen, "host"), ["App.Test:8080"], "{seen}");
    assert_eq!(values(&seen, "x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(values(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&seen, "x-forwarded-host"), ["App.Test:8080"]);
    assert_eq!(values(&seen, "via"), ["1.0 edge, 1.1 switchyard"]);
    assert_eq!(values(&seen, "x-kept"), ["yes"]);
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            values(&seen, hop).is_empty(),
            "{hop} reached the backend:\n{seen}"
        );
    }

    let req = Request::get("/hop")
        .header(HOST, "app.test")
        .body(empty())
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["x-kept"], "yes");
    for hop in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !headers.contains_key(hop),
            "{hop} reached the client: {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_requests_by_weight() {
    let light = TestBackend::named("light").await;
    let heavy = TestBackend::named("heavy").await;
    let gateway = Gateway::start(vec![route(
        "app",
        &["app.test"],
        &[(light.addr, 1), (heavy.addr, 3)],
    )])
    .await;
    let mut client = gateway.client().await;

    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..4000 {
        let (status, name) = client.get("app.test", "/").await;
        assert_eq!(status, StatusCode::OK);
        *counts.entry(name).or_default() += 1;
    }
    // 1:3 of 4000 is 1000:3000, with a standard deviation of about 27.
    let light_share = counts.get("light").copied().unwrap_or_default();
    assert!((800..=1200).contains(&light_share), "{counts:?}");
    assert_eq!(light_share + counts["heavy"], 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuses_backend_connections() {
    let backend = TestBackend::named("app").await;
    let gateway = Gateway::start(vec![route("app", &["app.test"], &[(backend.addr, 1)])]).await;
    let mut client = gateway.client().await;
    for _ in 0..50 {
        assert_eq!(client.get("app.test", "/").await, ok("app"));
        assert_eq!(
            client.request(Method::HEAD, "app.test", "/", "").await,
            ok("")
        );
        assert_eq!(
            client.get("app.test", "/empty").await,
            (StatusCode::NO_CONTENT, String::new())
        );
        assert_eq!(
            client
                .request(Method::POST, "app.test", "/echo", "body")
                .await,
            ok("body")
        );
    }
    // The answer reaches the client just before the proxy puts the backend connection
    // back in its pool.
    let stats = || gateway.proxy.backend(&backend.addr.to_string()).unwrap();
    eventually(|| stats().idle_connections == 1 && stats().in_flight == 0).await;
    assert_eq!(stats().connects_total, 1, "{:?}", stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peak_of_requests_keeps_its_backend_connections_for_the_next_one() {
    const PEAK: usize = 40;
    let backend = TestBackend::named("app").await;
    let gateway = Gateway::start(vec![route("app", &["app.test"], &[(backend.addr, 1)])]).await;
    let stats = || gateway.proxy.backend(&backend.addr.to_string()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..PEAK {
        clients.push(gateway.client().await);
    }
    for round in 1..=2 {
        // All at once, each answered after a second: one backend connection apiece.
        let mut requests = tokio::task::JoinSet::new();
        for mut client in clients.drain(..) {
            requests.spawn(async move { (client.get("app.test", "/late").await, client) });
        }
        while let Some(done) = requests.join_next().await {
            let (answer, client) = done.unwrap();
            assert_eq!(answer, ok("late"));
            clients.push(client);
        }
        // Every one of them is kept: the next peak finds them, and connects no more.
        eventually(|| stats().idle_connections == PEAK && stats().in_flight == 0).await;
        assert_eq!(stats().connects_total, PEAK as u64, "round {round}");
    }
}

/// Waits until `check` holds, looking every few milliseconds.
pub(crate) async fn eventually(mut check: impl FnMut() -> bool) {
    within(async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_a_slow_answer_is_awaited() {
    let backend = TestBackend::named("app").await;
    let addr = backend.addr.to_string();
    let config = ProxyConfig {
        idle_timeout: Duration::from_millis(100),
        ..ProxyConfig::default()
    };
    let gateway = Gateway::for_app(&backend, config).await;

    // Waiting for a response head is not idling, on either side.
    let mut client = gateway.client().await;
    assert_eq!(client.get("app.test", "/late").await, ok("late"));

    // Then both connections go quiet and are closed.
    eventually(|| client.sender.is_closed()).await;
    eventually(|| {
        let stats = gateway.proxy.backend(&addr);
        stats.is_none_or(|stats| stats.idle_connections == 0)
    })
    .await;

    // So is a request head that trickles in and never ends.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    within(async {
        let mut buf = [0; 1];
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => panic!("an answer to half a request"),
                },
                () = tokio::time::sleep(Duration::from_millis(10)) => {
                    if stream.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_byte_timeout_counts_from_each_request_on_an_old_connection() {
    let backend = TestBackend::named("app").await;
    let config = ProxyConfig {
        first_byte_timeout: Duration::from_millis(2500),
        ..ProxyConfig::default()
    };
    let gateway = Gateway::for_app(&backend, config).await;
    let mut client = gateway.client().await;
    assert_eq!(client.get("app.test", "/").await, ok("app"));
    // The connection (and its first request) are now older than the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // An answer that takes a second is within the timeout of its own request.
    assert_eq!(client.get("app.test", "/late").await, ok("late"));
    // One that never comes still times out, on the same connection.
    assert_eq!(
        client.get("app.test", "/stall").await,
        (
            StatusCode::GATEWAY_TIMEOUT,
            "backend did not answer in time\n".to_string()
        )
    );
    assert_eq!(client.get("app.test", "/").await, ok("app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_retried_around_then_ejected() {
    let alive = TestBackend::named("alive").await;
    let doomed = TestBackend::named("doomed").await;
    let doomed_addr = doomed.addr.to_string();
    let backends = BackendConfig {
        eject_cooldown: Duration::from_secs(3600),
        ..BackendConfig::default()
    };
    let gateway = Gateway::start_with(
        vec![route(
            "app",
            &["app.test"],
            &[(alive.addr, 1), (doomed.addr, 1)],
        )],
        ProxyConfig::default(),
        backends,
    )
    .await;
    let mut client = gateway.client().await;

    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..50 {
        let (status, name) = client.get("app.test", "/").await;
        assert_eq!(status, StatusCode::OK);
        *seen.entry(name).or_default() += 1;
    }
    assert!(
        seen.contains_key("alive") && seen.contains_key("doomed"),
        "{seen:?}"
    );

    doomed.kill().await;
    // The proxy notices its pooled connections to it closing.
    eventually(|| {
        gateway
            .proxy
            .backend(&doomed_addr)
            .unwrap()
            .idle_connections
            == 0
    })
    .await;

    for _ in 0..100 {
        assert_eq!(client.get("app.test", "/").await, ok("alive"));
    }
    let stats = gateway.proxy.backend(&doomed_addr).unwrap();
    assert!(stats.ejected, "{stats:?}");
    assert!(stats.connect_failures_total >= 3, "{stats:?}");

    // Ejected: not even tried, for any method.
    for _ in 0..100 {
        assert_eq!(client.get("app.test", "/").await, ok("alive"));
        assert_eq!(
            client
                .request(Method::POST, "app.test", "/echo", "posted")
                .await,
            ok("posted")
        );
    }
    assert_eq!(gateway.proxy.backend(&doomed_addr).unwrap(), stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_only_for_idempotent_requests_without_a_body() {
    let live = TestBackend::named("live").await;
    let dead = dead_addr().await;
    // Nearly every first choice is the dead backend, and it is never ejected.
    let backends = BackendConfig {
        eject_after_failures: u32::MAX,
        ..BackendConfig::default()
    };
    let gateway = Gateway::start_with(
        vec![route("app", &["app.test"], &[(dead, 1000), (live.addr, 1)])],
        ProxyConfig::default(),
        backends,
    )
    .await;
    let mut client = gateway.client().await;

    for method in [Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS] {
        for _ in 0..10 {
            let (status, _) = client.request(method.clone(), "app.test", "/", "").await;
            assert_eq!(status, StatusCode::OK, "{method}");
        }
    }

    for (method, body) in [
        (Method::POST, ""),
        (Method::POST, "data"),
        (Method::PUT, "data"),
    ] {
        let mut failed = 0;
        for _ in 0..10 {
            match client
                .request(method.clone(), "app.test", "/echo", body)
                .await
            {
                (StatusCode::OK, echoed) => assert_eq!(echoed, body),
                (StatusCode::BAD_GATEWAY, answer) => {
                    assert_eq!(answer, "could not connect to a backend\n");
                    failed += 1;
                }
                other => panic!("{method}: {other:?}"),
            }
        }
        assert!(failed > 0, "{method} with {body:?} was retried");
    }
    let stats = gateway.proxy.backend(&dead.to_string()).unwrap();
    assert!(
        !stats.ejected && stats.connect_failures_total >= 40,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_table_is_used_from_the_next_request() {
    let first = TestBackend::named("first").await;
    let second = TestBackend::named("second").await;
    let gateway = Gateway::start(vec![route("first", &["first.test"], &[(first.addr, 1)])]).await;
    let mut client = gateway.client().await;

    assert_eq!(client.get("first.test", "/").await, ok("first"));
    assert_eq!(
        client.get("second.test", "/").await.0,
        StatusCode::NOT_FOUND
    );

    gateway.table.store(Arc::new(RouteTable::from_routes(
        2,
        [
            route("first", &["first.test"], &[(first.addr, 1)]),
            route("second", &["second.test"], &[(second.addr, 1)]),
        ],
    )));
    assert_eq!(client.get("second.test", "/").await, ok("second"));

    // A route moved to another backend moves at once, pooled connections or not.
    gateway.table.store(Arc::new(RouteTable::from_routes(
        3,
        [route("first", &["first.test"], &[(second.addr, 1)])],
    )));
    assert_eq!(client.get("first.test", "/").await, ok("second"));
    assert_eq!(
        client.get("second.test", "/").await.0,
        StatusCode::NOT_FOUND
    );
}

/// A backend that answers `/slow` once released (saying when it has the request), and
/// anything else at once with "quick".
async fn slow_backend() -> (TestBackend, Arc<Notify>, Arc<Notify>) {
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let backend = TestBackend::start({
        let arrived = Arc::clone(&arrived);
        let release = Arc::clone(&release);
        handler(move |req: Request<Incoming>| {
            let arrived = Arc::clone(&arrived);
            let release = Arc::clone(&release);
            async move {
                if req.uri().path() == "/slow" {
                    arrived.notify_one();
                    release.notified().await;
                    return Ok(Response::new(text("slow done")));
                }
                Ok(Response::new(text("quick")))
            }
        })
    })
    .await;
    (backend, arrived, release)
}

/// A gateway for `backend` whose drain can only end by its connections finishing.
async fn patient_gateway(backend: &TestBackend) -> Gateway {
    let config = ProxyConfig {
        // Far beyond `within`: the drain must end because connections finished.
        drain_timeout: Duration::from_secs(600),
        ..ProxyConfig::default()
    };
    Gateway::for_app(backend, config).await
}

/// Waits until the gateway's listener refuses connections.
async fn refused(addr: SocketAddr) {
    within(async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_requests_in_flight_and_refuses_new_connections() {
    let (backend, arrived, release) = slow_backend().await;
    let mut gateway = patient_gateway(&backend).await;

    // An idle keep-alive connection, which the drain closes.
    let mut idle_client = gateway.client().await;
    assert_eq!(idle_client.get("app.test", "/").await, ok("quick"));

    let mut slow_client = gateway.client().await;
    let slow = tokio::spawn(async move { slow_client.get("app.test", "/slow").await });
    within(arrived.notified()).await;

    gateway.stop.take().unwrap().send(()).unwrap();
    refused(gateway.addr).await;
    assert!(
        !gateway.served.is_finished(),
        "serve returned with a request in flight"
    );

    release.notify_one();
    assert_eq!(within(slow).await.unwrap(), ok("slow done"));
    within(&mut gateway.served).await.unwrap().unwrap();
    assert_eq!(gateway.proxy.stats().connections_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_lets_an_http2_stream_finish_then_closes_its_connection() {
    let (backend, arrived, release) = slow_backend().await;
    let mut gateway = patient_gateway(&backend).await;
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let get = |path: &str| {
        let mut sender = sender.clone();
        let req = Request::builder()
            .uri(format!("http://app.test{path}"))
            .body(empty())
            .unwrap();
        async move {
            let response = sender.send_request(req).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    assert_eq!(within(get("/")).await, ok("quick"));
    let slow = tokio::spawn(get("/slow"));
    within(arrived.notified()).await;

    gateway.stop.take().unwrap().send(()).unwrap();
    refused(gateway.addr).await;
    assert!(
        !gateway.served.is_finished(),
        "serve returned with a stream in flight"
    );

    release.notify_one();
    assert_eq!(within(slow).await.unwrap(), ok("slow done"));
    // The gateway said GOAWAY and closed the connection once the stream was done.
    within(conn).await.unwrap().unwrap();
    within(&mut gateway.served).await.unwrap().unwrap();
    assert_eq!(gateway.proxy.stats().connections_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_in_the_listen_queue_until_one_closes() {
    let backend = TestBackend::named("app").await;
    let config = ProxyConfig {
        max_connections: 2,
        ..ProxyConfig::default()
    };
    let gateway = Gateway::for_app(&backend, config).await;
    let mut first = gateway.client().await;
    let mut second = gateway.client().await;
    assert_eq!(first.get("app.test", "/").await, ok("app"));
    assert_eq!(second.get("app.test", "/").await, ok("app"));

    // A third connects (the kernel's handshake) but is not accepted: its request waits.
    let mut third = gateway.client().await;
    let waiting = tokio::spawn(async move {
        let answer = third.get("app.test", "/").await;
        (answer, third)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered over the limit");
    assert_eq!(gateway.proxy.stats().connections_open, 2);

    // The first closes: its room goes to the third, which is answered.
    drop(first);
    let (answer, mut third) = within(waiting).await.unwrap();
    assert_eq!(answer, ok("app"));
    assert_eq!(second.get("app.test", "/").await, ok("app"));
    assert_eq!(third.get("app.test", "/").await, ok("app"));
    assert_eq!(gateway.proxy.stats().connections_open, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_requests_by_status_class() {
    let backend = TestBackend::named("app").await;
    let dead = dead_addr().await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let routes = vec![
        route("app", &["app.test"], &[(backend.addr, 1)]),
        route("dead", &["dead.test"], &[(dead, 1)]),
    ];
    let gateway = Gateway::start_metered(routes, &recorder).await;
    let mut client = gateway.client().await;

    for _ in 0..3 {
        assert_eq!(client.get("app.test", "/").await, ok("app"));
    }
    assert_eq!(
        client.get("nowhere.test", "/").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get("dead.test", "/").await.0,
        StatusCode::BAD_GATEWAY
    );

    // The gauge drops when the proxy has finished sending, just after we have read.
    eventually(|| {
        metrics
            .render()
            .contains("switchyard_gateway_requests_in_flight 0\n")
    })
    .await;
    let mut rendered = metrics.render();
    gateway.proxy.render_metrics(&mut rendered);
    for line in [
        "switchyard_gateway_requests_total{code=\"2xx\"} 3\n",
        "switchyard_gateway_requests_total{code=\"4xx\"} 1\n",
        "switchyard_gateway_requests_total{code=\"5xx\"} 1\n",
        // The three answers that reached a backend; the 404 never chose one, and the
        // dead backend's connect failed before any head.
        "switchyard_gateway_upstream_duration_seconds_count 3\n",
        "switchyard_gateway_connections_open 1\n",
        // The proxy's own answers, by why.
        "switchyard_gateway_errors_total{reason=\"no_route\"} 1\n",
        "switchyard_gateway_errors_total{reason=\"connect\"} 1\n",
        "switchyard_gateway_errors_total{reason=\"timeout\"} 0\n",
        "switchyard_gateway_backend_ejections_total 0\n",
    ] {
        assert!(rendered.contains(line), "no {line:?} in\n{rendered}");
    }
    // The third failed connect in a row ejects the dead backend (the default), once.
    for _ in 0..3 {
        assert_eq!(
            client.get("dead.test", "/").await.0,
            StatusCode::BAD_GATEWAY
        );
    }
    let rendered = metrics.render();
    for line in [
        "switchyard_gateway_errors_total{reason=\"connect\"} 4\n",
        "switchyard_gateway_backend_ejections_total 1\n",
    ] {
        assert!(rendered.contains(line), "no {line:?} in\n{rendered}");
    }
    drop(client);
    eventually(|| {
        metrics
            .render()
            .contains("switchyard_gateway_connections_open 0\n")
    })
    .await;
}

/// A proxy serving `app.test` on threads of its own, from a listener on loopback.
struct Threaded {
    backend: TestBackend,
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Threaded {
    async fn start(threads: usize) -> Threaded {
        Threaded::start_with(threads, BackendConfig::default()).await
    }

    pub(crate) async fn start_with(threads: usize, backends: BackendConfig) -> Threaded {
        let backend = TestBackend::named("app").await;
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::from_routes(
            1,
            [route("app", &["app.test"], &[(backend.addr, 1)])],
        )));
        let proxy = Arc::new(Proxy::with_backend_config(
            Arc::clone(&table),
            ProxyConfig::default(),
            backends,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(
            Arc::clone(&proxy).serve_on_threads(listener, threads, async {
                let _ = stopped.await;
            }),
        );
        Threaded {
            backend,
            proxy,
            addr,
            stop,
            served,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_threads_of_its_own_and_drains_them_all() {
    let Threaded {
        backend,
        proxy,
        addr,
        stop,
        served,
    } = Threaded::start(3).await;

    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(Client::connect(addr).await);
    }
    for _ in 0..10 {
        for client in &mut clients {
            assert_eq!(client.get("app.test", "/").await, ok("app"));
        }
    }
    // One request at a time: each thread needed one backend connection, kept in its
    // own pool, whichever of the 12 client connections it served.
    let stats = proxy.backend(&backend.addr.to_string()).unwrap();
    assert!((1..=3).contains(&stats.connects_total), "{stats:?}");

    // The stop drains every thread: idle connections are closed, and serving ends.
    stop.send(()).unwrap();
    within(served).await.unwrap().unwrap();
    assert_eq!(proxy.stats().connections_open, 0);
    for client in &clients {
        eventually(|| client.sender.is_closed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_thread_keeps_its_own_idle_backend_connections() {
    let Threaded {
        backend,
        proxy,
        addr,
        stop,
        served,
    } = Threaded::start_with(
        2,
        BackendConfig {
            max_idle_per_backend: Some(1),
            ..BackendConfig::default()
        },
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Client::connect(addr).await);
    }
    eventually(|| proxy.stats().connections_per_thread.iter().all(|n| *n > 0)).await;
    for _ in 0..10 {
        for client in &mut clients {
            assert_eq!(client.get("app.test", "/").await, ok("app"));
        }
    }
    // One request at a time, on both threads: each keeps the one idle connection it
    // may. Had the one allowed been for both, one thread would connect for every
    // request it served.
    let stats = proxy.backend(&backend.addr.to_string()).unwrap();
    assert_eq!(stats.connects_total, 2, "{stats:?}");
    assert_eq!(stats.idle_connections, 2, "{stats:?}");

    stop.send(()).unwrap();
    within(served).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_spread_over_the_proxy_threads() {
    let Threaded {
        backend: _backend,
        proxy,
        addr,
        stop,
        served,
    } = Threaded::start(3).await;

    // All at once: whichever thread wakes first would accept them all.
    let connects: Vec<_> = (0..30)
        .map(|_| tokio::spawn(Client::connect(addr)))
        .collect();
    let mut clients = Vec::new();
    for connect in connects {
        clients.push(connect.await.unwrap());
    }
    eventually(|| proxy.stats().connections_open == 30).await;
    let per_thread = proxy.stats().connections_per_thread;
    assert_eq!(per_thread.len(), 3);
    assert_eq!(per_thread.iter().sum::<usize>(), 30, "{per_thread:?}");
    let (most, fewest) = (per_thread.iter().max(), per_thread.iter().min());
    assert!(most.unwrap() - fewest.unwrap() <= 2, "{per_thread:?}");

    // Connections handed from one thread to another are served there like any other.
    for client in &mut clients {
        assert_eq!(client.get("app.test", "/").await, ok("app"));
    }
    drop(clients);
    eventually(|| proxy.stats().connections_per_thread == [0, 0, 0]).await;

    stop.send(()).unwrap();
    within(served).await.unwrap().unwrap();
}
