//! The harness itself, against real ZooKeeper servers: they start, serve reads and
//! writes, elect a new leader when one dies, and never outlive their handle.

use std::time::Duration;

use testkit::{Mode, Zk};
use zookeeper_client as zk;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn process_exists(pid: u32) -> bool {
    // Signal 0 checks existence; a reaped child is gone (ESRCH).
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn standalone_serves_reads_and_writes() {
    let zk = Zk::standalone();
    assert_eq!(zk.servers()[0].mode(), Some(Mode::Standalone));
    assert_eq!(zk.servers()[0].four_letter("ruok").unwrap(), "imok");
    let mntr = zk.servers()[0].mntr().unwrap();
    assert_eq!(
        mntr.get("zk_server_state").map(String::as_str),
        Some("standalone")
    );

    runtime().block_on(async {
        let client = zk::Client::connect(&zk.connect_string()).await.unwrap();
        client
            .create("/hello", b"world", &persistent())
            .await
            .unwrap();
        let (data, stat) = client.get_data("/hello").await.unwrap();
        assert_eq!(data, b"world");
        assert_eq!(stat.version, 0);
    });
}

#[test]
fn ensemble_replicates_and_elects_a_new_leader() {
    let mut zk = Zk::ensemble();
    assert_eq!(zk.servers().len(), 3);
    let modes: Vec<_> = zk.servers().iter().map(|s| s.mode().unwrap()).collect();
    assert_eq!(
        modes.iter().filter(|m| **m == Mode::Leader).count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| **m == Mode::Follower).count(),
        2,
        "{modes:?}"
    );

    let rt = runtime();
    // A write through one server is read through every other.
    let addrs: Vec<String> = zk
        .servers()
        .iter()
        .map(|s| s.client_addr().to_string())
        .collect();
    rt.block_on(async {
        let writer = zk::Client::connect(&addrs[0]).await.unwrap();
        writer
            .create("/replicated", b"v1", &persistent())
            .await
            .unwrap();
        for addr in &addrs[1..] {
            let reader = zk::Client::connect(addr).await.unwrap();
            reader.sync("/replicated").await.unwrap();
            assert_eq!(reader.get_data("/replicated").await.unwrap().0, b"v1");
        }
    });

    let old_leader = zk.leader().expect("a leader");
    let old_pid = zk.server(old_leader).pid().unwrap();
    zk.server(old_leader).kill().unwrap();
    assert!(
        !process_exists(old_pid),
        "killed leader {old_pid} still exists"
    );
    zk.wait_ready();
    let new_leader = zk.leader().expect("a new leader");
    assert_ne!(new_leader, old_leader);

    // The two survivors are a quorum: writes go on, and the restarted server catches up.
    let survivor = zk.servers()[new_leader].client_addr().to_string();
    rt.block_on(async {
        let client = zk::Client::connect(&survivor).await.unwrap();
        client.set_data("/replicated", b"v2", None).await.unwrap();
    });
    zk.server(old_leader).start().unwrap();
    zk.wait_ready();
    assert_eq!(zk.servers()[old_leader].mode(), Some(Mode::Follower));
    let rejoined = zk.servers()[old_leader].client_addr().to_string();
    rt.block_on(async {
        let client = zk::Client::connect(&rejoined).await.unwrap();
        client.sync("/replicated").await.unwrap();
        assert_eq!(client.get_data("/replicated").await.unwrap().0, b"v2");
    });
}

#[test]
fn a_paused_server_answers_nothing_until_resumed() {
    let mut zk = Zk::standalone();
    zk.server(0).pause().unwrap();
    assert!(zk.servers()[0].is_paused());
    assert_eq!(zk.servers()[0].mode(), None);
    assert!(
        zk.servers()[0].four_letter("ruok").is_err(),
        "a stopped JVM answered"
    );
    zk.server(0).resume().unwrap();
    zk.wait_ready();
    assert_eq!(zk.servers()[0].four_letter("ruok").unwrap(), "imok");
}

#[test]
fn restart_keeps_the_data() {
    let mut zk = Zk::standalone();
    let rt = runtime();
    let connect = zk.connect_string();
    rt.block_on(async {
        let client = zk::Client::connect(&connect).await.unwrap();
        client
            .create("/kept", b"across restarts", &persistent())
            .await
            .unwrap();
    });
    zk.server(0).restart().unwrap();
    zk.wait_ready();
    rt.block_on(async {
        let client = zk::Client::connect(&connect).await.unwrap();
        assert_eq!(
            client.get_data("/kept").await.unwrap().0,
            b"across restarts"
        );
    });
}

#[test]
fn jute_maxbuffer_is_applied_to_the_server() {
    let zk = Zk::start(|c| c.jute_maxbuffer = 4096);
    let rt = runtime();
    rt.block_on(async {
        let client = zk::Client::connect(&zk.connect_string()).await.unwrap();
        client
            .create("/small", &[7u8; 1000], &persistent())
            .await
            .unwrap();
        // The server drops a connection whose packet is over its limit.
        let err = client
            .create("/big", &[7u8; 8000], &persistent())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                zk::Error::ConnectionLoss | zk::Error::SessionExpired | zk::Error::ClientClosed
            ),
            "{err:?}"
        );
    });
}

#[test]
fn no_server_survives_its_handle() {
    let mut zk = Zk::standalone();
    let pid = zk.server(0).pid().unwrap();
    let dir = zk.path();
    assert!(process_exists(pid));
    drop(zk);
    assert!(!process_exists(pid), "server {pid} survived its handle");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn no_server_survives_a_panicking_test() {
    let (pids, received) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let mut zk = Zk::ensemble();
        let all: Vec<u32> = zk
            .servers_mut()
            .iter_mut()
            .map(|s| s.pid().unwrap())
            .collect();
        pids.send((all, zk.path())).unwrap();
        panic!("a test that fails while its servers run");
    })
    .join();
    assert!(panicked.is_err());
    let (pids, kept_dir) = received.recv_timeout(Duration::from_secs(1)).unwrap();
    // The harness keeps a failed test's folder for a post-mortem; this failure was on purpose.
    std::fs::remove_dir_all(kept_dir).unwrap();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(
            !process_exists(pid),
            "server {pid} survived a panicking test"
        );
    }
}
