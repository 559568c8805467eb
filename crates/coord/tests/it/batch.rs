//! Bulk and atomic writes through `multi`.

use coord::{CreateMode, Error, Op};

use crate::{connect, payload, runtime};

#[test]
fn write_many_applies_every_op_and_reports_each_refusal() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |c| c.multi_ops = 100).await;
        client.ensure_path("/bulk").await.unwrap();
        client
            .create("/bulk/n500", b"already here", CreateMode::Persistent)
            .await
            .unwrap();
        let mut ops: Vec<Op> = (0..10_000)
            .map(|i| Op::Create {
                path: format!("/bulk/n{i}"),
                payload: payload(i),
                mode: CreateMode::Persistent,
            })
            .collect();
        ops.push(Op::Create {
            path: "/bulk/huge".into(),
            payload: crate::noise(2_000_000),
            mode: CreateMode::Persistent,
        });
        ops.push(Op::Create {
            path: "/no-such-parent/child".into(),
            payload: vec![],
            mode: CreateMode::Persistent,
        });
        let outcome = client.write_many(ops).await;
        assert_eq!(outcome.succeeded, 9_999, "{:?}", outcome.failed);
        let mut failed: Vec<_> = outcome
            .failed
            .iter()
            .map(|r| (r.path.as_str(), &r.error))
            .collect();
        failed.sort_by_key(|(p, _)| *p);
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert_eq!(failed[0].0, "/bulk/huge");
        assert!(
            matches!(failed[0].1, Error::NodeTooLarge { .. }),
            "{:?}",
            failed[0]
        );
        assert_eq!(failed[1].0, "/bulk/n500");
        assert!(failed[1].1.is_node_exists(), "{:?}", failed[1]);
        assert!(failed[2].1.is_no_node(), "{:?}", failed[2]);
        assert_eq!(client.children("/bulk").await.unwrap().len(), 10_000);
        assert_eq!(
            client.get("/bulk/n500").await.unwrap().unwrap().0,
            b"already here"
        );
        assert_eq!(
            client.get("/bulk/n9999").await.unwrap().unwrap().0,
            payload(9_999)
        );

        // Deletes in bulk, too.
        let deletes = (0..10_000).map(|i| Op::Delete {
            path: format!("/bulk/n{i}"),
            version: None,
        });
        let outcome = client.write_many(deletes).await;
        assert_eq!((outcome.succeeded, outcome.failed.len()), (10_000, 0));
        assert!(client.children("/bulk").await.unwrap().is_empty());
    });
}

#[test]
fn a_multi_is_all_or_nothing() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |_| {}).await;
        client
            .create("/fence", b"owner", CreateMode::Persistent)
            .await
            .unwrap();
        let fence = client.exists("/fence").await.unwrap().unwrap();
        client
            .create("/guarded", b"v0", CreateMode::Persistent)
            .await
            .unwrap();
        // A write fenced on the right version lands.
        client
            .multi(vec![
                Op::Check {
                    path: "/fence".into(),
                    version: fence.version,
                },
                Op::Set {
                    path: "/guarded".into(),
                    payload: b"v1".to_vec(),
                    version: None,
                },
            ])
            .await
            .unwrap();
        // The fence moves on; a write fenced on the old version is refused, whole.
        client.set("/fence", b"new owner", None).await.unwrap();
        let err = client
            .multi(vec![
                Op::Check {
                    path: "/fence".into(),
                    version: fence.version,
                },
                Op::Set {
                    path: "/guarded".into(),
                    payload: b"v2".to_vec(),
                    version: None,
                },
                Op::Create {
                    path: "/side-effect".into(),
                    payload: vec![],
                    mode: CreateMode::Persistent,
                },
            ])
            .await
            .unwrap_err();
        assert!(err.is_bad_version(), "{err:?}");
        assert_eq!(client.get("/guarded").await.unwrap().unwrap().0, b"v1");
        assert_eq!(client.exists("/side-effect").await.unwrap(), None);
    });
}

#[test]
fn write_groups_applies_each_group_whole_or_not_at_all() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = connect(&zk, |c| c.multi_ops = 10).await;
        client.ensure_path("/apps").await.unwrap();
        client.ensure_path("/domains").await.unwrap();
        client
            .create("/domains/taken.test", b"other", CreateMode::Persistent)
            .await
            .unwrap();
        // Each app is its node plus its domain's node: both or neither.
        let app = |name: &str, domain: &str| {
            vec![
                Op::Create {
                    path: format!("/apps/{name}"),
                    payload: name.as_bytes().to_vec(),
                    mode: CreateMode::Persistent,
                },
                Op::Create {
                    path: format!("/domains/{domain}"),
                    payload: name.as_bytes().to_vec(),
                    mode: CreateMode::Persistent,
                },
            ]
        };
        let mut groups: Vec<Vec<Op>> = (0..100)
            .map(|i| app(&format!("a{i}"), &format!("a{i}.test")))
            .collect();
        groups.insert(42, app("thief", "taken.test"));
        let outcome = client.write_groups(groups).await;
        assert_eq!(outcome.succeeded, 100);
        assert_eq!(outcome.failed.len(), 1);
        let refused = &outcome.failed[0];
        assert_eq!(
            (refused.index, refused.path.as_str()),
            (42, "/domains/taken.test")
        );
        assert!(refused.error.is_node_exists(), "{:?}", refused.error);
        assert_eq!(
            client.exists("/apps/thief").await.unwrap(),
            None,
            "half a group landed"
        );
        assert_eq!(client.children("/apps").await.unwrap().len(), 100);
        assert_eq!(client.children("/domains").await.unwrap().len(), 101);
    });
}
