//! Membership and ownership, on real servers, with real failures.

use std::time::Duration;

use coord::{Config, CreateMode, Error, Membership, Op, Zk};

use crate::{connect, runtime};

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn wait_members(membership: &Membership, expected: &[&str]) {
    let mut members = membership.members();
    within("the member list", async {
        loop {
            if *members.borrow_and_update() == expected {
                return;
            }
            members.changed().await.unwrap();
        }
    })
    .await;
}

#[test]
fn members_see_each_other_come_and_go() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let a = connect(&zk, |_| {}).await;
        let b = connect(&zk, |_| {}).await;
        let c = connect(&zk, |_| {}).await;
        let ma = Membership::join(&a, "/region/members", "a", b"10.0.0.1:7000")
            .await
            .unwrap();
        let mb = Membership::join(&b, "/region/members", "b", b"")
            .await
            .unwrap();
        let mc = Membership::join(&c, "/region/members", "c", b"")
            .await
            .unwrap();
        wait_members(&ma, &["a", "b", "c"]).await;
        wait_members(&mc, &["a", "b", "c"]).await;
        assert_eq!(
            a.get("/region/members/a").await.unwrap().unwrap().0,
            b"10.0.0.1:7000"
        );

        // A graceful leave is seen at once; so is a closed session.
        mc.leave().await.unwrap();
        wait_members(&ma, &["a", "b"]).await;
        drop(mb);
        b.close().await;
        wait_members(&ma, &["a"]).await;
    });
}

#[test]
fn exactly_one_of_two_claimants_owns_a_node() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let a = connect(&zk, |_| {}).await;
        let b = connect(&zk, |_| {}).await;
        a.ensure_path("/shards/0001").await.unwrap();
        let (ca, cb) = tokio::join!(a.claim("/shards/0001", b"a"), b.claim("/shards/0001", b"b"));
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        assert!(
            ca.is_some() != cb.is_some(),
            "both or neither won: {ca:?} {cb:?}"
        );
        let (winner, winner_zk, loser_zk, name) = match (ca, cb) {
            (Some(c), None) => (c, &a, &b, b"a"),
            (None, Some(c)) => (c, &b, &a, b"b"),
            _ => unreachable!(),
        };
        assert_eq!(
            loser_zk.owner("/shards/0001").await.unwrap().unwrap().0,
            name
        );
        // Claiming again from the owner's own session adopts its claim.
        assert_eq!(
            winner_zk.claim("/shards/0001", name).await.unwrap(),
            Some(winner.clone())
        );

        // A release hands the node over at once, at a higher epoch.
        winner_zk.release(&winner).await.unwrap();
        let next = loser_zk
            .claim("/shards/0001", b"next")
            .await
            .unwrap()
            .expect("free after release");
        assert!(next.epoch() > winner.epoch());
        // The old owner's fenced write is refused by ZooKeeper, and changes nothing.
        let err = winner_zk
            .fenced(
                &winner,
                vec![Op::Create {
                    path: "/shards/0001/x".into(),
                    payload: vec![],
                    mode: CreateMode::Persistent,
                }],
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Fenced { .. }), "{err:?}");
        assert_eq!(loser_zk.exists("/shards/0001/x").await.unwrap(), None);
        loser_zk
            .fenced(
                &next,
                vec![Op::Create {
                    path: "/shards/0001/x".into(),
                    payload: b"ok".to_vec(),
                    mode: CreateMode::Persistent,
                }],
            )
            .await
            .unwrap();
    });
}

#[test]
fn a_superseded_owner_is_fenced_even_while_its_session_lives() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let a = connect(&zk, |_| {}).await;
        let operator = connect(&zk, |_| {}).await;
        a.ensure_path("/shard").await.unwrap();
        a.create("/shard/data", b"v0", CreateMode::Persistent)
            .await
            .unwrap();
        let claim = a.claim("/shard", b"a").await.unwrap().unwrap();
        // An operator removes a's lock by hand and claims the shard.
        operator.delete("/shard/&owner", None).await.unwrap();
        let taken = operator
            .claim("/shard", b"operator")
            .await
            .unwrap()
            .unwrap();
        assert!(
            a.holds(&claim),
            "a's session is alive, so a cannot tell locally"
        );
        let err = a
            .fenced(
                &claim,
                vec![Op::Set {
                    path: "/shard/data".into(),
                    payload: b"stale".to_vec(),
                    version: None,
                }],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Fenced { epoch, .. } if epoch == claim.epoch()),
            "{err:?}"
        );
        assert_eq!(a.get("/shard/data").await.unwrap().unwrap().0, b"v0");
        assert!(taken.epoch() > claim.epoch());
    });
}

#[test]
fn ownership_moves_when_the_owners_server_dies_and_the_old_owner_is_fenced() {
    let mut zk = testkit::Zk::ensemble();
    let rt = runtime();
    let addrs: Vec<String> = zk
        .servers()
        .iter()
        .map(|s| s.client_addr().to_string())
        .collect();
    // a talks to server 1 only; b to the other two.
    let (a, b) = rt.block_on(async {
        let mut config = Config::new(addrs[0].clone());
        config.session_timeout = Duration::from_secs(2);
        let a = Zk::connect(config).await.unwrap();
        let b = Zk::connect(Config::new(addrs[1..].join(",")))
            .await
            .unwrap();
        (a, b)
    });
    let claim_a = rt.block_on(async {
        a.ensure_path("/shard").await.unwrap();
        a.create("/shard/data", b"from a", CreateMode::Persistent)
            .await
            .unwrap();
        let claim = a
            .claim("/shard", b"a")
            .await
            .unwrap()
            .expect("a owns the free shard");
        assert_eq!(b.claim("/shard", b"b").await.unwrap(), None);
        claim
    });

    zk.server(0).kill().unwrap();
    let claim_b = rt.block_on(async {
        // a's session times out on the surviving quorum; its &owner goes with it.
        within("a's ownership to lapse", b.wait_unowned("/shard"))
            .await
            .unwrap();
        let claim = b
            .claim("/shard", b"b")
            .await
            .unwrap()
            .expect("b takes over");
        assert!(claim.epoch() > claim_a.epoch());
        b.fenced(
            &claim,
            vec![Op::Set {
                path: "/shard/data".into(),
                payload: b"from b".to_vec(),
                version: None,
            }],
        )
        .await
        .unwrap();
        claim
    });

    // a's server comes back; a learns its session is gone and cannot write.
    zk.server(0).start().unwrap();
    zk.wait_ready();
    rt.block_on(async {
        let err = within(
            "a's fenced write to fail",
            a.fenced(
                &claim_a,
                vec![Op::Set {
                    path: "/shard/data".into(),
                    payload: b"stale a".to_vec(),
                    version: None,
                }],
            ),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, Error::Fenced { .. } | Error::SessionExpired { .. }),
            "{err:?}"
        );
        assert!(!a.holds(&claim_a));
        assert_eq!(b.get("/shard/data").await.unwrap().unwrap().0, b"from b");
        assert!(b.holds(&claim_b));
    });
}
