//! The tree cache converges on what ZooKeeper holds.

use std::collections::BTreeMap;
use std::time::Duration;

use coord::{Config, CreateMode, TreeCache, Zk};

use crate::runtime;

/// The tree under `root`, read node by node with plain requests.
async fn read_tree(zk: &Zk, root: &str) -> BTreeMap<String, Vec<u8>> {
    let mut tree = BTreeMap::new();
    let mut queue = vec![root.to_string()];
    while let Some(path) = queue.pop() {
        let Some((data, _)) = zk.get(&path).await.unwrap() else {
            continue;
        };
        for child in zk.children(&path).await.unwrap_or_default() {
            queue.push(format!("{path}/{child}"));
        }
        tree.insert(path, data);
    }
    tree
}

fn cached(cache: &TreeCache) -> BTreeMap<String, Vec<u8>> {
    cache.with_tree(|tree| {
        tree.iter()
            .map(|(path, entry)| (path.clone(), entry.data.as_ref().unwrap().to_vec()))
            .collect()
    })
}

/// Writes a marker and waits until the cache shows it: every earlier change is in.
async fn settle(zk: &Zk, cache: &TreeCache, mark: &str) {
    zk.set("/tree", mark.as_bytes(), None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut status = cache.status();
        loop {
            if cache.get("/tree").and_then(|e| e.data.ok()).as_deref() == Some(mark.as_bytes()) {
                return;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the cache caught up with the marker");
}

/// Random creates, sets and deletes from several tasks at once.
async fn scribble(zk: &Zk, seed: u64, ops: usize) {
    let mut x = seed | 1;
    for _ in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let parent = format!("/tree/p{}", x % 8);
        let child = format!("{parent}/c{}", (x >> 8) % 16);
        let value = format!("{x:x}");
        match (x >> 20) % 4 {
            0 | 1 => {
                let _ = zk.create(&parent, b"", CreateMode::Persistent).await;
                let _ = zk
                    .create(&child, value.as_bytes(), CreateMode::Persistent)
                    .await;
            }
            2 => {
                let _ = zk.set(&child, value.as_bytes(), None).await;
            }
            _ => {
                let _ = zk.delete(&child, None).await;
            }
        }
    }
}

#[test]
fn the_cache_matches_the_tree_after_random_concurrent_writes() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = Zk::connect(Config::new(zk.connect_string())).await.unwrap();
        client.ensure_path("/tree/p0").await.unwrap();
        client
            .create(
                "/tree/p0/before",
                b"loaded by the walk",
                CreateMode::Persistent,
            )
            .await
            .unwrap();
        let cache = TreeCache::start(&client, "/tree", None).await.unwrap();
        assert!(cache.status().borrow().loaded);
        assert_eq!(
            cache.get("/tree/p0/before").unwrap().data.unwrap().as_ref(),
            b"loaded by the walk"
        );

        let writers: Vec<_> = (0..4u64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { scribble(&client, 0x9e37_79b9 * (i + 1), 1500).await })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        settle(&client, &cache, "done").await;
        let truth = read_tree(&client, "/tree").await;
        assert!(truth.len() > 20, "the writes made a tree: {}", truth.len());
        assert_eq!(cached(&cache), truth);
        let mut children = cache.children("/tree");
        children.sort();
        let mut expected = client.children("/tree").await.unwrap();
        expected.sort();
        assert_eq!(children, expected);
    });
}

#[test]
fn the_cache_catches_up_after_its_server_restarts() {
    // A tick of 1 s lets the server grant the 20 s session asked for below (at most 20
    // ticks); the default tick (500 ms) cut it to 10 s, which a server's restart on a
    // busy machine could outlast.
    let mut zk = testkit::Zk::start(|c| {
        c.servers = 3;
        c.tick_time = Duration::from_secs(1);
    });
    let rt = runtime();
    let addrs: Vec<String> = zk
        .servers()
        .iter()
        .map(|s| s.client_addr().to_string())
        .collect();
    // The cache's client talks to server 1 only, so killing it cuts the cache off
    // while others keep writing through the rest of the quorum.
    let (reader, writer, cache) = rt.block_on(async {
        let mut config = Config::new(addrs[0].clone());
        config.session_timeout = Duration::from_secs(20);
        let reader = Zk::connect(config).await.unwrap();
        let writer = Zk::connect(Config::new(addrs[1..].join(",")))
            .await
            .unwrap();
        writer.ensure_path("/tree").await.unwrap();
        let cache = TreeCache::start(&reader, "/tree", None).await.unwrap();
        scribble(&writer, 7, 300).await;
        settle(&writer, &cache, "before").await;
        (reader, writer, cache)
    });
    zk.server(0).kill().unwrap();
    rt.block_on(scribble(&writer, 11, 600));
    zk.server(0).start().unwrap();
    zk.wait_ready();
    rt.block_on(async {
        settle(&writer, &cache, "after").await;
        let truth = read_tree(&writer, "/tree").await;
        assert_eq!(cached(&cache), truth);
        assert!(
            cache.status().borrow().reloads >= 1,
            "no re-walk after the reconnection"
        );
        assert_eq!(
            reader.session_stats().expiries,
            0,
            "the session should have survived"
        );
        // And the watch lives on after the reconnection: later changes arrive as
        // events, with no re-walk to bring them.
        let reloads = cache.status().borrow().reloads;
        scribble(&writer, 13, 300).await;
        settle(&writer, &cache, "live").await;
        assert_eq!(cached(&cache), read_tree(&writer, "/tree").await);
        assert_eq!(
            cache.status().borrow().reloads,
            reloads,
            "a re-walk, not the watch, caught up"
        );
    });
}

#[test]
fn the_walk_streams_every_node_then_loaded_and_batched_reads_answer_each_path() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = Zk::connect(Config::new(zk.connect_string())).await.unwrap();
        client.ensure_path("/tree").await.unwrap();
        // Many small nodes under a few parents, and some large incompressible ones, so
        // the walk's batches change size on the way.
        let mut writes = Vec::new();
        for p in 0..4 {
            writes.push(format!("/tree/p{p}"));
        }
        client
            .write_many(writes.iter().map(|path| coord::Op::Create {
                path: path.clone(),
                payload: Vec::new(),
                mode: CreateMode::Persistent,
            }))
            .await;
        let ops: Vec<coord::Op> = (0..3000)
            .map(|i| coord::Op::Create {
                path: format!("/tree/p{}/n{i}", i % 4),
                payload: if i % 500 == 0 {
                    crate::noise(200_000)
                } else {
                    format!("node {i}").into_bytes()
                },
                mode: CreateMode::Persistent,
            })
            .collect();
        let outcome = client.write_many(ops).await;
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);

        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let collect = tokio::spawn(async move {
            let mut streamed = BTreeMap::new();
            loop {
                match rx.recv().await.expect("the cache sends Loaded") {
                    coord::cache::Change::Upsert { path, entry } => {
                        streamed.insert(path, entry.data.unwrap().to_vec());
                    }
                    coord::cache::Change::Loaded => return streamed,
                    other => panic!("a change before Loaded: {other:?}"),
                }
            }
        });
        let cache = TreeCache::start(&client, "/tree", Some(tx)).await.unwrap();
        let streamed = collect.await.unwrap();
        let expected = read_tree(&client, "/tree").await;
        assert_eq!(streamed.len(), 3005);
        assert_eq!(streamed, expected);
        assert_eq!(cached(&cache), expected);

        let paths = ["/tree/p1/n1", "/tree/missing", "/tree/p0/n1000"].map(String::from);
        let read = client.get_many_raw(&paths).await.unwrap();
        assert_eq!(read.len(), 3);
        assert!(read[1].is_none());
        let decoded = |node: &Option<(Vec<u8>, coord::Stat)>| {
            node.as_ref()
                .map(|(raw, _)| coord::codec::decode(raw).unwrap())
        };
        assert_eq!(decoded(&read[0]), Some(b"node 1".to_vec()));
        assert_eq!(decoded(&read[2]), Some(expected["/tree/p0/n1000"].clone()));
        let listed = client
            .children_many(&["/tree/p3".to_string(), "/tree/nope".to_string()])
            .await
            .unwrap();
        assert_eq!(listed[0].as_ref().map(Vec::len), Some(750));
        assert_eq!(listed[1], None);
    });
}
