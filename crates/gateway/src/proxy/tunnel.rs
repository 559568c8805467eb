//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once both the
//! client and the backend have switched protocols, bytes are copied both ways until
//! either side closes, the tunnel is idle for the idle timeout, or a drain runs out.
//!
//! **Invariant:** a tunnel counts as its client connection and as a request in flight
//! to its backend until it ends, so draining waits for it and balancing sees it.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::conn::{aborted, ClientConn};
use super::forward::RequestGuard;
use super::idle::{Activity, IdleTimer, Watched};
use super::upstream::{BackendConn, Lease};

/// Runs the tunnel of an upgrade the backend accepted (its `101` is on the way to
/// the client).
pub(super) fn spawn(
    conn: Arc<ClientConn>,
    client: OnUpgrade,
    backend: OnUpgrade,
    backend_conn: BackendConn,
    lease: Lease,
    request: RequestGuard,
) {
    tokio::spawn(async move {
        let mut drain = conn.drain.clone();
        let upgraded = tokio::select! {
            upgraded = async { tokio::try_join!(client, backend) } => upgraded,
            () = aborted(&mut drain) => return,
        };
        // The backend's HTTP/1 connection handed its socket over; its sender is spent.
        drop(backend_conn);
        let (client, backend) = match upgraded {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, backend = lease.upstream().addr(), "upgrade failed");
                return;
            }
        };
        // Watching the client side sees bytes in both directions.
        let activity = Arc::new(Activity::default());
        let mut client = Watched::new(TokioIo::new(client), Arc::clone(&activity));
        let mut backend = TokioIo::new(backend);
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
