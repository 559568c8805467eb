//! The route stream and readiness: a snapshot then deltas, resumable; never a table
//! from an orchestrator that is not ready; routes follow backends' health.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use coord::{CreateMode, Zk};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use model::{Route, StreamLine};
use tokio::sync::mpsc;

use crate::{app_json, http, runtime, write, Orch};

/// Follows `/v1/routes` like a gateway does, sending each line on.
async fn follow(url: String) -> (u16, mpsc::UnboundedReceiver<StreamLine>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let (lines, receiver) = mpsc::unbounded_channel();
    let mut body = response.into_body();
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if lines
                    .send(StreamLine::parse(&line).expect("a valid stream line"))
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    (status, receiver)
}

/// A gateway's view: the table, built from the lines.
#[derive(Default)]
struct Reader {
    table: BTreeMap<String, Route>,
    version: u64,
    snapshots: usize,
    resumes: usize,
    /// The last snapshot is complete (its `ready` line came), or the stream resumed.
    complete: bool,
}

impl Reader {
    fn apply(&mut self, line: StreamLine) {
        match line {
            StreamLine::Snapshot { .. } => {
                self.table.clear();
                self.snapshots += 1;
                self.complete = false;
            }
            StreamLine::Route(route) => {
                self.table.insert(route.app.to_string(), route);
            }
            StreamLine::Ready { version } => {
                self.complete = true;
                self.version = version;
            }
            StreamLine::Ping { version } => self.version = version,
            StreamLine::Resume { version } => {
                self.resumes += 1;
                self.complete = true;
                self.version = version;
            }
            StreamLine::Upsert { version, route } => {
                self.table.insert(route.app.to_string(), route);
                self.version = version;
            }
            StreamLine::Remove { version, app } => {
                self.table.remove(app.as_str());
                self.version = version;
            }
        }
    }

    /// Reads lines until `done` holds.
    async fn until(
        &mut self,
        lines: &mut mpsc::UnboundedReceiver<StreamLine>,
        done: impl Fn(&Reader) -> bool,
    ) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !done(self) {
                let line = lines.recv().await.expect("the stream went on");
                self.apply(line);
            }
        })
        .await
        .expect("the route stream delivered");
    }
}

fn backends(route: &Route) -> Vec<&str> {
    let mut addrs: Vec<&str> = route.backends.iter().map(|b| b.addr()).collect();
    addrs.sort();
    addrs
}

#[test]
fn no_table_comes_from_an_orchestrator_that_is_not_ready() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        // A stuck owner holds one shard: the orchestrator cannot claim all of its own.
        let config = Orch::config(&zk, "o1");
        let squatter = Zk::connect(coord::Config::new(zk.connect_string()))
            .await
            .unwrap();
        let root = "/switchyard/test";
        let layout = orchestrator::Layout::new("test")
            .open(&squatter, 16)
            .await
            .unwrap();
        assert_eq!(layout.root(), root);
        squatter
            .create(
                &format!("{root}/shards/0003/&owner"),
                b"squatter",
                CreateMode::Ephemeral,
            )
            .await
            .unwrap();

        let orch = Orch::start(config);
        let not_ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(answer) = http("GET", &orch.url("/readyz"), &[], "").await {
                    if answer.json()["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains("15 of 16")
                    {
                        return answer;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("readyz explained what it waits for");
        assert_eq!(not_ready.status, 503);
        assert!(
            not_ready.json()["detail"]
                .as_str()
                .unwrap()
                .contains("15 of 16"),
            "{}",
            not_ready.body
        );
        let routes = http("GET", &orch.url("/v1/routes"), &[], "").await.unwrap();
        assert_eq!(routes.status, 503);
        assert_eq!(routes.json()["error"], "not_ready");
        assert_eq!(
            http("GET", &orch.url("/healthz"), &[], "")
                .await
                .unwrap()
                .status,
            200
        );

        // The squatter goes; the orchestrator claims the shard and serves a table.
        squatter.close().await;
        orch.ready().await;
        let (status, mut lines) = follow(orch.url("/v1/routes")).await;
        assert_eq!(status, 200);
        let mut reader = Reader::default();
        reader.until(&mut lines, |r| r.complete).await;
        assert_eq!(reader.snapshots, 1);
        let region = http("GET", &orch.url("/v1/region"), &[], "")
            .await
            .unwrap()
            .json();
        assert_eq!(region["shards_owned_here"], 16);
        // `unowned` is the region's view, from the tree cache: it sees the claim of
        // the last shard a moment after the claimant does.
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let region = http("GET", &orch.url("/v1/region"), &[], "")
                    .await
                    .unwrap()
                    .json();
                if region["unowned"] == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the region's view shows every shard owned");
        orch.stop().await;
    });
}

#[test]
fn a_reader_follows_deltas_and_resumes_after_a_restart() {
    let zk = testkit::Zk::standalone();
    let rt = runtime();
    rt.block_on(async {
        let config = Orch::config(&zk, "o1");
        let orch = Orch::start(config.clone());
        orch.ready().await;
        for i in 0..3 {
            let r = write(
                "POST",
                &orch.url("/v1/apps"),
                &app_json(
                    &format!("a{i}"),
                    &[&format!("a{i}.test")],
                    &["127.0.0.1:9001"],
                ),
                &[],
            )
            .await;
            assert_eq!(r.status, 201);
        }
        let (_, mut lines) = follow(orch.url("/v1/routes")).await;
        let mut reader = Reader::default();
        reader.until(&mut lines, |r| r.complete).await;
        assert_eq!(reader.table.keys().collect::<Vec<_>>(), ["a0", "a1", "a2"]);

        // Changes arrive as deltas.
        write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("a3", &["a3.test"], &["127.0.0.1:9002"]),
            &[],
        )
        .await;
        write("DELETE", &orch.url("/v1/apps/a0"), "", &[]).await;
        reader
            .until(&mut lines, |r| {
                r.table.contains_key("a3") && !r.table.contains_key("a0")
            })
            .await;
        assert_eq!(reader.snapshots, 1);

        // Reconnecting with since= resumes: only what changed meanwhile, no snapshot.
        drop(lines);
        let seen = reader.version;
        write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("a4", &["a4.test"], &["127.0.0.1:9003"]),
            &[],
        )
        .await;
        let (_, mut lines) = follow(orch.url(&format!("/v1/routes?since={seen}"))).await;
        reader
            .until(&mut lines, |r| r.table.contains_key("a4"))
            .await;
        assert_eq!((reader.snapshots, reader.resumes), (1, 1));

        // After a restart the orchestrator cannot vouch for that version: a full
        // snapshot, and the reader ends with the same table.
        drop(lines);
        orch.stop().await;
        let orch = Orch::start(config);
        orch.ready().await;
        write("DELETE", &orch.url("/v1/apps/a1"), "", &[]).await;
        let (_, mut lines) =
            follow(orch.url(&format!("/v1/routes?since={}", reader.version))).await;
        reader
            .until(&mut lines, |r| {
                r.snapshots == 2 && r.complete && !r.table.contains_key("a1")
            })
            .await;
        assert_eq!(reader.table.keys().collect::<Vec<_>>(), ["a2", "a3", "a4"]);
        orch.stop().await;
    });
}

/// A tiny HTTP backend that answers 200 until dropped.
async fn backend() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    (addr, task)
}

#[test]
fn routes_follow_the_health_of_real_backends_and_fail_open() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let orch = Orch::start(Orch::config(&zk, "o1"));
        orch.ready().await;
        let (a, task_a) = backend().await;
        let (b, task_b) = backend().await;
        let body = serde_json::json!({
            "id": "checked",
            "domains": ["checked.test"],
            "backends": [{"addr": a}, {"addr": b}],
            "health_check": {"type": "http", "path": "/health"},
        });
        let created = write("POST", &orch.url("/v1/apps"), &body.to_string(), &[]).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let (_, mut lines) = follow(orch.url("/v1/routes")).await;
        let mut reader = Reader::default();
        reader
            .until(&mut lines, |r| r.table.contains_key("checked"))
            .await;
        let mut both = vec![a.as_str(), b.as_str()];
        both.sort();
        assert_eq!(backends(&reader.table["checked"]), both);

        // b stops answering: after a few failed checks it leaves the route.
        task_b.abort();
        let _ = task_b.await;
        reader
            .until(&mut lines, |r| {
                backends(&r.table["checked"]) == [a.as_str()]
            })
            .await;
        assert!(!reader.table["checked"].fail_open);

        // a stops too: nothing is healthy, so the route lists both and says so.
        task_a.abort();
        let _ = task_a.await;
        reader
            .until(&mut lines, |r| r.table["checked"].fail_open)
            .await;
        assert_eq!(backends(&reader.table["checked"]), both);

        // The health is stored in the shard's node, for the next owner.
        let health = http("GET", &orch.url("/v1/region"), &[], "").await.unwrap();
        assert_eq!(health.status, 200);
        orch.stop().await;
    });
}
