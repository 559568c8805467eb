//! TLS on the proxy: certificates by SNI, HTTP/1.1 and HTTP/2 (ALPN) over it, refusals,
//! and reloading the certificate folder, with a real TLS client (rustls) on real
//! sockets and certificates made for each test by a test CA.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway::proxy::{Listeners, Proxy, ProxyConfig};
use gateway::tls::CertFolder;
use gateway::RouteTable;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::{
    echoes_until_closed, eventually, ok, read_head, route, values, within, TestBackend,
};

/// When the certificates [`TestCa::issue`] makes expire: 2040-01-01, Unix time.
pub(crate) const EXPIRES: f64 = 2_208_988_800.0;

/// A certificate authority the test client trusts, issuing server certificates.
pub(crate) struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root: CertificateDer<'static>,
}

impl TestCa {
    pub(crate) fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Switchyard test CA");
        let root = params.self_signed(&key).unwrap().der().clone();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            root,
        }
    }

    /// Writes `dir/file`: a certificate for `names` signed by this CA, valid until
    /// [`EXPIRES`], then its key. Returns the certificate.
    pub(crate) fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(
            dir.join(file),
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .unwrap();
        cert.der().clone()
    }

    /// A TLS client trusting this CA only, offering `alpn`.
    pub(crate) fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        self.client_with(alpn, true)
    }

    /// [`TestCa::client`]; without `sni`, it names no host in its hello (it still
    /// checks the certificate against the name it connects to).
    fn client_with(&self, alpn: &[&[u8]], sni: bool) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = sni;
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A TLS connection to `addr` asking for `name`, verified against the CA.
pub(crate) async fn connect(
    client: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    within(client.connect(name, tcp)).await
}

/// The certificate the server presented.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One GET over `stream` with hyper's client, HTTP/2 if ALPN chose it: the response's
/// version, status and body.
pub(crate) async fn get(
    stream: TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> (Version, StatusCode, String) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        within(sender.send_request(req)).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        within(sender.send_request(req)).await.unwrap()
    };
    let (version, status) = (response.version(), response.status());
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (version, status, String::from_utf8(body.to_vec()).unwrap())
}

/// A proxy with a plain and a TLS listener.
struct TlsGateway {
    plain: SocketAddr,
    tls: SocketAddr,
    proxy: Arc<Proxy>,
    certs: Arc<CertFolder>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<io::Result<()>>,
    _backends: Vec<TestBackend>,
}

impl TlsGateway {
    async fn start(certs: &Path) -> TlsGateway {
        TlsGateway::start_on(certs, 0).await
    }

    /// With `threads` > 0, on [`Proxy::serve_on_threads`].
    async fn start_on(certs: &Path, threads: usize) -> TlsGateway {
        let shop = TestBackend::named("shop").await;
        let blog = TestBackend::named("blog").await;
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::from_routes(
            1,
            [
                route("shop", &["shop.test"], &[(shop.addr, 1)]),
                route("blog", &["*.apps.test"], &[(blog.addr, 1)]),
            ],
        )));
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let proxy = metrics::with_local_recorder(&recorder, || {
            Proxy::new(Arc::clone(&table), ProxyConfig::default())
        });
        let certs = Arc::new(CertFolder::load(certs).unwrap());
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
        let listeners = Listeners::from(plain).with_tls(tls, certs.acceptor());
        let (stop, stopped) = oneshot::channel::<()>();
        let proxy = Arc::new(proxy);
        let stopped = async {
            let _ = stopped.await;
        };
        let served = match threads {
            0 => tokio::spawn(Arc::clone(&proxy).serve(listeners, stopped)),
            n => tokio::spawn(Arc::clone(&proxy).serve_on_threads(listeners, n, stopped)),
        };
        TlsGateway {
            plain: plain_addr,
            tls: tls_addr,
            proxy,
            certs,
            metrics,
            stop: Some(stop),
            served,
            _backends: vec![shop, blog],
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        within(self.served).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_each_domain_its_certificate_over_http1_and_http2() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let shop_cert = ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    let wild_cert = ca.issue(dir.path(), "apps.pem", &["*.apps.test"]);
    let gateway = TlsGateway::start(dir.path()).await;

    // HTTP/1.1 to an exact name.
    let client = ca.client(&[b"http/1.1"]);
    let stream = connect(&client, gateway.tls, "shop.test").await.unwrap();
    assert_eq!(presented(&stream), shop_cert);
    let (version, status, seen) = get(stream, "shop.test", "/headers").await;
    assert_eq!((version, status), (Version::HTTP_11, StatusCode::OK));
    assert_eq!(values(&seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&seen, "x-forwarded-host"), ["shop.test"]);

    // HTTP/2, chosen by ALPN, to a name under a wildcard.
    let client = ca.client(&[b"h2", b"http/1.1"]);
    let stream = connect(&client, gateway.tls, "blog.apps.test")
        .await
        .unwrap();
    assert_eq!(presented(&stream), wild_cert);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (version, status, seen) = get(stream, "blog.apps.test", "/headers").await;
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    assert_eq!(values(&seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&seen, "via"), ["2 switchyard"]);
    let stream = connect(&client, gateway.tls, "blog.apps.test")
        .await
        .unwrap();
    assert_eq!(
        get(stream, "blog.apps.test", "/").await,
        (Version::HTTP_2, StatusCode::OK, "blog".to_string())
    );

    // The plain listener is untouched and says so.
    let mut plain = crate::proxy::Client::connect(gateway.plain).await;
    let (status, seen) = plain.get("shop.test", "/headers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(values(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(plain.get("shop.test", "/").await, ok("shop"));

    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_no_certificate_covers_is_refused_in_the_handshake_and_counted() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    let gateway = TlsGateway::start(dir.path()).await;
    let client = ca.client(&[b"http/1.1"]);

    for name in ["other.test", "deep.blog.shop.test"] {
        let refused = connect(&client, gateway.tls, name).await;
        assert!(refused.is_err(), "{name} got a certificate");
    }
    // Plain HTTP sent to the TLS port is not a handshake either.
    let mut raw = TcpStream::connect(gateway.tls).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within(tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "answered plain HTTP on TLS");

    eventually(|| {
        gateway
            .metrics
            .render()
            .contains("switchyard_gateway_tls_handshake_failures_total 3\n")
    })
    .await;
    // A name it covers still works.
    let stream = connect(&client, gateway.tls, "shop.test").await.unwrap();
    assert_eq!(get(stream, "shop.test", "/").await.2, "shop");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_certificates_and_a_bad_folder_keeps_the_old_ones() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    let gateway = TlsGateway::start(dir.path()).await;
    let client = ca.client(&[b"http/1.1"]);
    assert!(connect(&client, gateway.tls, "blog.apps.test")
        .await
        .is_err());

    // A renewed certificate and a new domain, picked up by a reload.
    let renewed = ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    ca.issue(dir.path(), "apps.pem", &["*.apps.test"]);
    assert_ne!(first, renewed);
    assert_eq!(gateway.certs.reload().unwrap(), 2);
    let stream = connect(&client, gateway.tls, "shop.test").await.unwrap();
    assert_eq!(presented(&stream), renewed);
    let stream = connect(&client, gateway.tls, "blog.apps.test")
        .await
        .unwrap();
    assert_eq!(get(stream, "blog.apps.test", "/").await.2, "blog");

    // A broken file fails the reload; what was served is served on.
    std::fs::write(
        dir.path().join("broken.pem"),
        "-----BEGIN PRIVATE KEY-----\n",
    )
    .unwrap();
    let error = gateway.certs.reload().unwrap_err().to_string();
    assert!(error.contains("broken.pem"), "{error}");
    let stream = connect(&client, gateway.tls, "shop.test").await.unwrap();
    assert_eq!(presented(&stream), renewed);
    assert_eq!(gateway.certs.files(), 2);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_spread_over_proxy_threads_like_plain_ones() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    let gateway = TlsGateway::start_on(dir.path(), 3).await;
    let client = ca.client(&[b"http/1.1"]);

    // Thirty handshakes at once: a burst one thread would otherwise take whole.
    let connects = (0..30).map(|_| {
        let client = client.clone();
        let addr = gateway.tls;
        tokio::spawn(async move { connect(&client, addr, "shop.test").await.unwrap() })
    });
    let mut streams = Vec::new();
    for connect in connects {
        streams.push(within(connect).await.unwrap());
    }
    eventually(|| gateway.proxy.stats().connections_open == 30).await;
    let per_thread = gateway.proxy.stats().connections_per_thread;
    assert_eq!(per_thread.iter().sum::<usize>(), 30, "{per_thread:?}");
    let (least, most) = (per_thread.iter().min(), per_thread.iter().max());
    assert!(most.unwrap() - least.unwrap() <= 2, "{per_thread:?}");

    for stream in streams {
        assert_eq!(get(stream, "shop.test", "/").await.2, "shop");
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pem_serves_clients_that_name_no_host_or_an_unknown_one() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let shop = ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    let fallback = ca.issue(dir.path(), "default.pem", &["edge.test"]);
    let gateway = TlsGateway::start(dir.path()).await;

    let without_sni = ca.client_with(&[b"http/1.1"], false);
    let stream = connect(&without_sni, gateway.tls, "edge.test")
        .await
        .unwrap();
    assert_eq!(presented(&stream), fallback);
    // Routed by its Host header, like any request.
    assert_eq!(get(stream, "shop.test", "/").await.2, "shop");

    let with_sni = ca.client(&[b"http/1.1"]);
    let stream = connect(&with_sni, gateway.tls, "shop.test").await.unwrap();
    assert_eq!(presented(&stream), shop);
    // An unknown name gets the default certificate, which a client then refuses.
    assert!(connect(&with_sni, gateway.tls, "other.test").await.is_err());
    gateway.stop().await;
}

/// Writes `bytes` on a new TLS connection for `shop.test` and reads until the gateway
/// closes it, which it must do with a TLS close_notify (a cut would be an error here).
async fn transcript(gateway: &TlsGateway, ca: &TestCa, bytes: &[u8]) -> String {
    let mut stream = connect(&ca.client(&[b"http/1.1"]), gateway.tls, "shop.test")
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer))
        .await
        .expect("the connection ends with close_notify");
    String::from_utf8(answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_bodies_and_failures_are_served_over_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    let gateway = TlsGateway::start(dir.path()).await;

    // Four requests in one write: plain, a sized body, a chunked body, the last one
    // closing the connection.
    let answer = transcript(
        &gateway,
        &ca,
        b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\nhello\
          POST /echo HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n\
          GET /headers HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{answer}");
    let at = |needle: &str| {
        answer
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in {answer}"))
    };
    assert!(
        at("\r\n\r\nshop") < at("hello") && at("hello") < at("world"),
        "{answer}"
    );
    assert!(at("world") < at("x-forwarded-proto: https\n"), "{answer}");

    // A host nobody serves: the gateway's own answer.
    let answer = transcript(
        &gateway,
        &ca,
        b"GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");

    // Expect: 100-continue is answered before the body is sent.
    let client = ca.client(&[b"http/1.1"]);
    let mut stream = connect(&client, gateway.tls, "shop.test").await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let interim = read_head(&mut stream).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"ping").await.unwrap();
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ping"),
        "{answer}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_over_tls_is_passed_through() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "shop.pem", &["shop.test"]);
    let gateway = TlsGateway::start(dir.path()).await;
    let client = ca.client(&[b"http/1.1"]);
    let mut stream = connect(&client, gateway.tls, "shop.test").await.unwrap();

    // A request on the proxy's own path first, then the upgrade it hands to hyper.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut body = [0u8; 4];
    within(stream.read_exact(&mut body)).await.unwrap();
    assert_eq!(&body, b"shop");

    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    echoes_until_closed(&mut stream).await;
    gateway.stop().await;
}
