//! The orchestrator in-process against real ZooKeeper servers, through real HTTP.

mod api;
mod routes;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use orchestrator::Config;

pub const TOKEN: &str = "test-token-0123456789";

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, testkit::free_port().unwrap()))
}

/// An orchestrator running in this process until dropped (or `stop`ped).
pub struct Orch {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), orchestrator::Error>>>,
}

impl Orch {
    pub fn config(zk: &testkit::Zk, member: &str) -> Config {
        Config {
            zk: zk.connect_string(),
            region: "test".into(),
            member_id: Some(member.into()),
            listen: free_addr(),
            token: Some(TOKEN.into()),
            shards: 16,
            health_interval: Duration::from_millis(300),
            health_timeout: Duration::from_millis(200),
            ..Config::default()
        }
    }

    pub fn start(config: Config) -> Orch {
        let addr = config.listen;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(orchestrator::run(config, async move {
            let _ = stopped.await;
        }));
        Orch {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Ok(r) = http("GET", &self.url("/readyz"), &[], "").await {
                    if r.status == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the orchestrator became ready");
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Orch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}: {}", self.body))
    }
}

/// One HTTP request; `headers` as (name, value).
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

pub async fn write(method: &str, url: &str, body: &str, extra: &[(&str, &str)]) -> Answer {
    let (name, value) = auth();
    let mut headers = vec![(name, value.as_str())];
    headers.extend_from_slice(extra);
    http(method, url, &headers, body).await.unwrap()
}

pub fn app_json(id: &str, domains: &[&str], backends: &[&str]) -> String {
    serde_json::json!({
        "id": id,
        "domains": domains,
        "backends": backends.iter().map(|b| serde_json::json!({"addr": b})).collect::<Vec<_>>(),
    })
    .to_string()
}
