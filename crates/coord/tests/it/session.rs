//! Session expiry is seen at once, ephemerals bound to the old session are gone, and a
//! new session takes over without the caller building anything.

use std::time::Duration;

use coord::{CreateMode, Error, Membership, SessionState, TreeCache};

use crate::{connect, runtime};

#[test]
fn an_expired_session_is_published_and_replaced() {
    let mut zk = testkit::Zk::standalone();
    let rt = runtime();
    let client = rt.block_on(connect(&zk, |c| c.session_timeout = Duration::from_secs(2)));
    let (membership, cache) = rt.block_on(async {
        client
            .create("/mine", b"", CreateMode::Ephemeral)
            .await
            .unwrap();
        client
            .create("/kept", b"persistent", CreateMode::Persistent)
            .await
            .unwrap();
        let membership = Membership::join(&client, "/members", "me", b"")
            .await
            .unwrap();
        let cache = TreeCache::start(&client, "/kept", None).await.unwrap();
        (membership, cache)
    });
    let first = *client.session().borrow();
    assert_eq!(first.generation, 1);
    let mut session = client.session();

    // Freeze the server past the session timeout: when it thaws, it expires the session.
    zk.server(0).pause().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                session.changed().await.unwrap();
                if session.borrow().state == SessionState::Disconnected {
                    break;
                }
            }
        })
        .await
        .expect("the client saw the connection drop");
    });
    std::thread::sleep(Duration::from_secs(4));
    zk.server(0).resume().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let now = *session.borrow_and_update();
                if now.generation == 2 && now.state == SessionState::Connected {
                    break;
                }
                session.changed().await.unwrap();
            }
        })
        .await
        .expect("a new session was built");
    });
    let second = *client.session().borrow();
    assert_ne!(second.id, first.id);
    assert_eq!(client.session_stats().expiries, 1);
    // The two ephemerals of the old session (`/mine`, the member node) are forgotten;
    // the member recipe may already hold its node again on the new session.
    assert!(
        client.ephemerals_held() <= 1,
        "held: {}",
        client.ephemerals_held()
    );
    rt.block_on(async {
        // The old session's ephemeral goes; persistent data does not. The server
        // tells the client "expired" before its closeSession transaction has
        // removed the ephemerals, so their removal is awaited, not assumed.
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(stat) = client.exists("/mine").await.unwrap() {
                assert_eq!(
                    stat.ephemeral_owner, first.id,
                    "only the old session held /mine"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the expired session's ephemeral was removed");
        assert_eq!(client.get("/kept").await.unwrap().unwrap().0, b"persistent");
        // The new session works, ephemerals included.
        client
            .create("/mine", b"", CreateMode::Ephemeral)
            .await
            .unwrap();
        assert_eq!(
            client
                .exists("/mine")
                .await
                .unwrap()
                .unwrap()
                .ephemeral_owner,
            second.id
        );

        // The recipes re-establish what they held: the member node is back on the new
        // session, and the cache follows the tree again.
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(Some(stat)) = client.exists("/members/me").await {
                    if stat.ephemeral_owner == second.id {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the member re-registered");
        assert_eq!(*membership.members().borrow(), ["me"]);
        client
            .set("/kept", b"changed after expiry", None)
            .await
            .unwrap();
        let mut status = cache.status();
        tokio::time::timeout(Duration::from_secs(30), async {
            while cache.get("/kept").unwrap().data.unwrap().as_ref() != b"changed after expiry" {
                status.changed().await.unwrap();
            }
        })
        .await
        .expect("the cache follows the new session");
    });
}

#[test]
fn close_ends_the_session_and_its_ephemerals_at_once() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let a = connect(&zk, |_| {}).await;
        let b = connect(&zk, |_| {}).await;
        a.create("/a-was-here", b"", CreateMode::Ephemeral)
            .await
            .unwrap();
        a.close().await;
        assert!(matches!(a.get("/a-was-here").await, Err(Error::Closed)));
        assert_eq!(a.session().borrow().state, SessionState::Closed);
        // Gone without waiting for a session timeout.
        assert_eq!(b.exists("/a-was-here").await.unwrap(), None);
    });
}
