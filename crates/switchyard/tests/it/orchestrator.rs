//! Orchestrators as real processes sharing a region: shards spread over the members,
//! move when one is killed with SIGKILL, and move at once when one gets SIGTERM.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::switchyard;

const TOKEN: &str = "process-test-token-0123";
const SHARDS: u64 = 64;

/// A plain HTTP/1.1 GET: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls until `check` holds, up to a generous bound.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Orchestrator {
    pub member: String,
    pub addr: SocketAddr,
    pub child: Child,
}

impl Orchestrator {
    pub fn start(zk: &testkit::Zk, dir: &std::path::Path, member: &str) -> Orchestrator {
        let addr = SocketAddr::from(([127, 0, 0, 1], zkserver::ports::free_port().unwrap()));
        // One file per member: members start together, and rewriting a shared file
        // while another member reads it would hand that member an empty token.
        let token = dir.join(format!("{member}.token"));
        std::fs::write(&token, TOKEN).unwrap();
        let child = switchyard()
            .args([
                "orchestrator",
                "--region",
                "proc",
                "--shards",
                &SHARDS.to_string(),
            ])
            .args(["--zk", &zk.connect_string(), "--member-id", member])
            .args(["--listen", &addr.to_string(), "--session-timeout", "4s"])
            .arg("--token-file")
            .arg(&token)
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Orchestrator {
            member: member.into(),
            addr,
            child,
        }
    }

    pub fn wait_ready(&self) {
        eventually(&format!("{} to be ready", self.member), || {
            (get(self.addr, "/readyz")?.0 == 200).then_some(())
        });
    }

    /// Shard owners by member, as this orchestrator sees them.
    pub fn owners(&self) -> Option<BTreeMap<String, u64>> {
        let (status, body) = get(self.addr, "/v1/region")?;
        if status != 200 {
            return None;
        }
        let region: serde_json::Value = serde_json::from_str(&body).ok()?;
        let owners = region["owners"].as_object()?;
        Some(
            owners
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect(),
        )
    }

    pub fn signal(&self, signal: libc::c_int) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn shards_spread_over_members_and_move_on_sigkill_and_sigterm() {
    let zk = testkit::Zk::standalone();
    let dir = tempfile::tempdir().unwrap();
    let mut members: Vec<Orchestrator> = ["o1", "o2", "o3"]
        .iter()
        .map(|m| Orchestrator::start(&zk, dir.path(), m))
        .collect();
    for member in &members {
        member.wait_ready();
    }
    // Every shard is owned, by exactly one member, and each member has a share.
    let owners = eventually("three members to share the shards", || {
        let owners = members[0].owners()?;
        (owners.len() == 3 && owners.values().sum::<u64>() == SHARDS).then_some(owners)
    });
    assert!(owners.values().all(|n| *n > 0), "{owners:?}");

    // SIGKILL: o3's session times out and the others take its shards.
    members[2].signal(libc::SIGKILL);
    let _ = members[2].child.wait();
    let owners = eventually("o3's shards to move", || {
        let owners = members[0].owners()?;
        (owners.len() == 2 && owners.values().sum::<u64>() == SHARDS).then_some(owners)
    });
    assert!(!owners.contains_key("o3"), "{owners:?}");
    members[0].wait_ready();

    // SIGTERM: o2 releases its shards before it exits, so o1 can claim them at once
    // instead of after o2's session timeout.
    members[1].signal(libc::SIGTERM);
    let status = members[1].child.wait().unwrap();
    assert!(status.success(), "o2 exited with {status}");
    let still_o2 = zk_owner_count(&zk, "o2");
    assert_eq!(still_o2, 0, "o2 exited still owning {still_o2} shards");
    let owners = eventually("o1 to own every shard", || {
        let owners = members[0].owners()?;
        (owners.get("o1") == Some(&SHARDS)).then_some(owners)
    });
    assert_eq!(owners.len(), 1, "{owners:?}");
    members[0].wait_ready();
    members.truncate(1);
}

/// `&owner` nodes naming `member`, read straight from ZooKeeper.
fn zk_owner_count(zk: &testkit::Zk, member: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = coord::Zk::connect(coord::Config::new(zk.connect_string()))
            .await
            .unwrap();
        let mut count = 0;
        for shard in 0..SHARDS {
            let path = format!("/switchyard/proc/shards/{shard:04}");
            if let Some((owner, _)) = client.owner(&path).await.unwrap() {
                if owner == member.as_bytes() {
                    count += 1;
                }
            }
        }
        count
    })
}
