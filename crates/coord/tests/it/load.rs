//! Load never turns into an error: the window makes callers wait.

use coord::CreateMode;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::{connect, payload, runtime};

#[test]
fn a_hundred_thousand_creates_issued_at_once_all_succeed_on_one_session() {
    const N: usize = 100_000;
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |c| c.window = 1000).await;
        let first_session = *client.session().borrow();
        client.ensure_path("/load").await.unwrap();
        let paths: Vec<String> = (0..N).map(|i| format!("/load/n{i}")).collect();
        // One task issues every request at once; the window holds all but 1000 back.
        let mut pending: FuturesUnordered<_> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let client = &client;
                async move {
                    client
                        .create(path, &payload(i), CreateMode::Persistent)
                        .await
                }
            })
            .collect();
        let mut peak_in_flight = 0;
        let mut ok = 0;
        while let Some(result) = pending.next().await {
            result.unwrap();
            ok += 1;
            peak_in_flight = peak_in_flight.max(client.in_flight());
        }
        assert_eq!(ok, N);
        assert!(peak_in_flight <= 1000, "window exceeded: {peak_in_flight}");
        assert_eq!(
            client.session_stats(),
            coord::SessionStats::default(),
            "a reconnect happened"
        );
        assert_eq!(*client.session().borrow(), first_session);
        assert_eq!(client.children("/load").await.unwrap().len(), N);
        let (data, _) = client.get("/load/n99999").await.unwrap().unwrap();
        assert_eq!(data, payload(99_999));
    });
}

#[test]
fn a_burst_survives_a_killed_leader_and_loses_nothing() {
    const N: usize = 50_000;
    let mut zk = testkit::Zk::ensemble();
    let rt = runtime();
    let client = rt.block_on(connect(&zk, |c| c.window = 500));
    rt.block_on(client.ensure_path("/burst")).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let burst = {
        let client = client.clone();
        let done = done.clone();
        rt.spawn(async move {
            let paths: Vec<String> = (0..N).map(|i| format!("/burst/n{i}")).collect();
            let results: Vec<_> = paths
                .iter()
                .enumerate()
                .map(|(i, path)| {
                    let client = &client;
                    let done = &done;
                    async move {
                        let created = client
                            .create(path, &payload(i), CreateMode::Persistent)
                            .await;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        created
                    }
                })
                .collect::<FuturesUnordered<_>>()
                .collect()
                .await;
            results
        })
    };
    // Wait until the burst is well under way (counted in the burst itself: a request
    // through the same window would queue behind it), then SIGKILL the leader.
    while done.load(std::sync::atomic::Ordering::Relaxed) < N / 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let leader = zk.leader().expect("a leader");
    zk.server(leader).kill().unwrap();
    let at_kill = done.load(std::sync::atomic::Ordering::Relaxed);
    assert!(at_kill < N, "the burst was over before the kill");
    let results = rt.block_on(burst).unwrap();
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures[0]
    );
    // Every follower drops its clients when the leader dies; the client notices soon.
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while client.session_stats().disconnects == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the kill did not disturb the client"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    zk.server(leader).start().unwrap();
    zk.wait_ready();
    rt.block_on(async {
        let children = client.children("/burst").await.unwrap();
        assert_eq!(children.len(), N);
        for i in [0, N / 2, N - 1] {
            let (data, _) = client.get(&format!("/burst/n{i}")).await.unwrap().unwrap();
            assert_eq!(data, payload(i));
        }
    });
}

#[test]
fn requests_under_load_share_batches_and_each_gets_its_own_answer() {
    const N: usize = 20_000;
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |c| {
            c.window = 1000;
            c.coalesce_above = 16;
            c.ephemeral_budget = N + 10;
        })
        .await;
        client.ensure_path("/co").await.unwrap();
        // Every seventh node exists already: those creates must fail alone.
        let taken: Vec<coord::Op> = (0..N)
            .step_by(7)
            .map(|i| coord::Op::Create {
                path: format!("/co/n{i}"),
                payload: b"taken".to_vec(),
                mode: CreateMode::Persistent,
            })
            .collect();
        let before = client.write_many(taken).await;
        assert!(before.failed.is_empty());

        let paths: Vec<String> = (0..N).map(|i| format!("/co/n{i}")).collect();
        let mut results: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let client = &client;
                async move {
                    let result = client
                        .create(path, &payload(i), CreateMode::Ephemeral)
                        .await;
                    (i, result)
                }
            })
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        results.sort_by_key(|(i, _)| *i);
        assert_eq!(results.len(), N);
        assert!(
            client.coalesced_creates() > (N / 2) as u64,
            "only {} of {N} creates were coalesced",
            client.coalesced_creates()
        );
        // Each answer is that create's own: refused where the node was taken, created
        // (with this create's data, on this session) everywhere else.
        let session = client.session().borrow().id;
        for (i, result) in results {
            let path = &paths[i];
            let (data, stat) = client.get(path).await.unwrap().unwrap();
            match result {
                Ok(()) if i % 7 != 0 => {
                    assert_eq!(data, payload(i), "{path}");
                    assert_eq!(stat.ephemeral_owner, session, "{path}");
                }
                Err(err) if i % 7 == 0 => {
                    assert!(err.is_node_exists(), "{path}: {err}");
                    assert_eq!(data, b"taken", "{path} was overwritten");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!(client.ephemerals_held(), N - N.div_ceil(7));

        // Reads under load share multiReads; each gets its own node, or None for one
        // that does not exist.
        let mut reads: Vec<_> = (0..N + 100)
            .map(|i| {
                let client = &client;
                async move { (i, client.get(&format!("/co/n{i}")).await) }
            })
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        reads.sort_by_key(|(i, _)| *i);
        assert!(
            client.coalesced_reads() > (N / 2) as u64,
            "only {} of {N} reads were coalesced",
            client.coalesced_reads()
        );
        for (i, read) in reads {
            let read = read.unwrap();
            match read {
                Some((data, _)) if i >= N => panic!("/co/n{i} does not exist, read {data:?}"),
                Some((data, stat)) if i % 7 == 0 => {
                    assert_eq!(data, b"taken");
                    assert_eq!(stat.ephemeral_owner, 0);
                }
                Some((data, stat)) => {
                    assert_eq!(data, payload(i), "/co/n{i}");
                    assert_eq!(stat.ephemeral_owner, session);
                }
                None => assert!(i >= N, "/co/n{i} exists but read as missing"),
            }
        }
    });
}

#[test]
fn requests_are_not_coalesced_when_coalescing_is_off() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |c| c.coalesce_above = 0).await;
        client.ensure_path("/single").await.unwrap();
        let paths: Vec<String> = (0..2000).map(|i| format!("/single/n{i}")).collect();
        let results: Vec<_> = paths
            .iter()
            .map(|path| client.create(path, b"x", CreateMode::Persistent))
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(client.coalesced_creates(), 0);
        let reads: Vec<_> = paths
            .iter()
            .map(|path| client.get(path))
            .collect::<FuturesUnordered<_>>()
            .collect()
            .await;
        assert!(reads
            .iter()
            .all(|r| matches!(r, Ok(Some((data, _))) if data == b"x")));
        assert_eq!(client.coalesced_reads(), 0);
        assert_eq!(client.children("/single").await.unwrap().len(), 2000);
    });
}
