//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once the backend
//! has switched protocols on its plain socket (`h1::bridge`) and hyper has handed over
//! the client's connection, bytes are copied both ways until either side closes, the
//! tunnel is idle for the idle timeout, or a drain runs out.
//!
//! **Invariant:** a tunnel counts as its client connection and as a request in flight
//! to its backend until it ends, so draining waits for it and balancing sees it.

use std::sync::Arc;

use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::conn::{aborted, ClientConn};
use super::forward::RequestGuard;
use super::h1::Rewind;
use super::idle::{Activity, IdleTimer, Watched};
use super::upstream::{Lease, RawConn};

/// Runs the tunnel of an upgrade the backend accepted (its `101` is on the way to
/// the client): `early` is what the backend sent after its `101` in the same read.
pub(super) fn spawn(
    conn: Arc<ClientConn>,
    client: OnUpgrade,
    backend: RawConn,
    early: BytesMut,
    lease: Lease,
    request: RequestGuard,
) {
    tokio::spawn(async move {
        let mut drain = conn.drain.clone();
        // hyper hands the client's connection over once the 101 is written to it.
        let upgraded = tokio::select! {
            upgraded = client => upgraded,
            () = aborted(&mut drain) => return,
        };
        let client = match upgraded {
            Ok(client) => client,
            Err(error) => {
                tracing::debug!(%error, backend = lease.upstream().addr(), "upgrade failed");
                return;
            }
        };
        // Watching the client side sees bytes in both directions.
        let activity = Arc::new(Activity::default());
        let mut client = Watched::new(TokioIo::new(client), Arc::clone(&activity));
        let mut backend = Rewind::new(early.to_vec(), backend.into_stream());
        let mut idle = IdleTimer::new(conn.proxy.config.idle_timeout);
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(error) = result {
                    tracing::debug!(%error, backend = lease.upstream().addr(), "tunnel failed");
                }
            }
            () = idle.expired(&activity) => {}
            () = aborted(&mut drain) => {}
        }
        drop((lease, request));
    });
}
