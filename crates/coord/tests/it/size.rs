//! No node grows past ZooKeeper's limit: oversized writes are refused before they
//! are sent, and what is stored decodes or fails clearly.

use coord::{CreateMode, Error};

use crate::{connect, noise, runtime};

#[test]
fn an_oversized_write_is_refused_and_nothing_is_written() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |_| {}).await;
        let path = "/too-big";
        let err = client
            .create(path, &noise(1_100_000), CreateMode::Persistent)
            .await
            .unwrap_err();
        match &err {
            Error::NodeTooLarge {
                path: p,
                size_bytes,
                limit_bytes,
            } => {
                assert_eq!(p, path);
                assert!(*size_bytes > 1_100_000);
                assert_eq!(
                    *limit_bytes,
                    coord::DEFAULT_JUTE_MAXBUFFER - coord::REQUEST_OVERHEAD_BYTES - path.len()
                );
            }
            other => panic!("expected NodeTooLarge, got {other:?}"),
        }
        assert!(err.to_string().contains("/too-big"), "{err}");
        assert_eq!(client.exists(path).await.unwrap(), None);

        // The same refusal for a set on an existing node, which keeps its data.
        client
            .create(path, b"small", CreateMode::Persistent)
            .await
            .unwrap();
        let err = client.set(path, &noise(2_000_000), None).await.unwrap_err();
        assert!(matches!(err, Error::NodeTooLarge { .. }), "{err:?}");
        assert_eq!(client.get(path).await.unwrap().unwrap().0, b"small");
        // The connection survived: nothing oversized reached the server.
        assert_eq!(client.session_stats(), coord::SessionStats::default());
    });
}

#[test]
fn a_large_compressible_payload_is_stored_compressed_and_round_trips() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |_| {}).await;
        // 5 MB of text: five times the limit before compression, far under it after.
        let payload: Vec<u8> = (0..100_000)
            .flat_map(|i| format!("app-{i:08}.example.com\n").into_bytes())
            .collect();
        assert!(payload.len() > 2_000_000);
        client
            .create("/big-but-compressible", &payload, CreateMode::Persistent)
            .await
            .unwrap();
        let stat = client
            .exists("/big-but-compressible")
            .await
            .unwrap()
            .unwrap();
        assert!(
            (stat.data_length as usize) < payload.len() / 5,
            "stored {} bytes",
            stat.data_length
        );
        assert_eq!(
            client
                .get("/big-but-compressible")
                .await
                .unwrap()
                .unwrap()
                .0,
            payload
        );
        let (raw, _) = client
            .get_raw("/big-but-compressible")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&raw[..4], b"SY\x01\x01");
    });
}

#[test]
fn foreign_and_corrupt_data_are_clear_decode_errors() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |_| {}).await;
        // Written behind the layer's back, as another tool would.
        let raw = zookeeper_client::Client::connect(&zk.connect_string())
            .await
            .unwrap();
        let options = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        raw.create("/foreign", b"{\"plain\":\"json\"}", &options)
            .await
            .unwrap();
        raw.create("/future", b"SY\x07\x00later", &options)
            .await
            .unwrap();
        raw.create("/broken", b"SY\x01\x01not zstd", &options)
            .await
            .unwrap();
        for (path, expected) in [
            ("/foreign", coord::codec::DecodeError::NoHeader),
            ("/future", coord::codec::DecodeError::UnknownVersion(7)),
        ] {
            match client.get(path).await {
                Err(Error::Decode { path: p, source }) => {
                    assert_eq!(p, path);
                    assert_eq!(source, expected);
                }
                other => panic!("{path}: expected a decode error, got {other:?}"),
            }
        }
        assert!(matches!(
            client.get("/broken").await,
            Err(Error::Decode {
                source: coord::codec::DecodeError::Corrupt(_),
                ..
            })
        ));
    });
}

#[test]
fn the_ephemeral_budget_refuses_one_too_many() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |c| c.ephemeral_budget = 5).await;
        client.ensure_path("/eph").await.unwrap();
        for i in 0..5 {
            client
                .create(&format!("/eph/{i}"), b"", CreateMode::Ephemeral)
                .await
                .unwrap();
        }
        assert_eq!(client.ephemerals_held(), 5);
        let err = client
            .create("/eph/5", b"", CreateMode::Ephemeral)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::EphemeralBudget {
                    held: 5,
                    budget: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(client.exists("/eph/5").await.unwrap(), None);
        // Persistent nodes are not counted; deleting an ephemeral frees a slot.
        client
            .create("/eph-persistent", b"", CreateMode::Persistent)
            .await
            .unwrap();
        client.delete("/eph/0", None).await.unwrap();
        client
            .create("/eph/5", b"", CreateMode::Ephemeral)
            .await
            .unwrap();
        assert_eq!(client.ephemerals_held(), 5);
    });
}

#[test]
fn the_audit_names_nodes_near_the_limit_and_the_widest_parents() {
    let zk = testkit::Zk::start(|c| c.jute_maxbuffer = 200_000);
    runtime().block_on(async {
        let client = connect(&zk, |c| c.jute_maxbuffer = 200_000).await;
        client.ensure_path("/region/wide").await.unwrap();
        for i in 0..300 {
            client
                .create(
                    &format!("/region/wide/child-{i:05}"),
                    b"",
                    CreateMode::Persistent,
                )
                .await
                .unwrap();
        }
        // 190,000 bytes of noise is 95 % of the limit once encoded: over 90 %.
        client
            .create("/region/fat", &noise(190_000), CreateMode::Persistent)
            .await
            .unwrap();
        client
            .create("/region/slim", &noise(1_000), CreateMode::Persistent)
            .await
            .unwrap();
        let options = coord::AuditOptions {
            root: "/region".into(),
            threshold: 0.9,
            top: 3,
            concurrency: 64,
        };
        let mut seen = 0;
        let report = client.audit(&options, |n| seen = n).await.unwrap();
        assert_eq!(report.nodes, 2 + 300 + 2);
        assert_eq!(seen, report.nodes);
        assert!(report.alarming());
        assert_eq!(report.over.len(), 1, "{:?}", report.over);
        assert_eq!(report.over[0].path, "/region/fat");
        assert_eq!(report.largest[0].path, "/region/fat");
        assert_eq!(report.largest[1].path, "/region/slim");
        assert_eq!(report.widest[0].path, "/region/wide");
        assert_eq!(report.widest[0].children, 300);

        // The layer saw the fat node go by, and counts it as over the alert until it
        // sees it small again.
        assert_eq!(client.nodes_over_alert(), 1);
        client.set("/region/fat", b"slim now", None).await.unwrap();
        assert_eq!(client.nodes_over_alert(), 0);

        // Below the threshold, nothing alarms.
        client.delete("/region/fat", None).await.unwrap();
        let report = client.audit(&options, |_| {}).await.unwrap();
        assert!(!report.alarming(), "{:?}", report.over);
    });
}
