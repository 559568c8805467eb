//! How the proxy threads of [`Proxy::serve_on_threads`](super::Proxy::serve_on_threads)
//! share client connections.
//!
//! Every thread accepts from the shared listener, and the kernel wakes them all for a
//! new connection; whichever runs first accepts, and keeps accepting while connections
//! wait. So a burst of connections (a load balancer reconnecting, a client pool
//! starting) could land on one thread and leave the others idle for the connections'
//! whole lives. Instead, a thread that accepts a connection while it serves more than
//! the least busy thread (by more than [`SLACK`]) hands it to that thread, through the
//! thread's inbox. A connection crosses threads at most once, when it is accepted; its
//! requests never do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::mpsc;

/// How many more connections than the least busy thread a thread keeps for itself.
/// One: handing over costs a wake-up of another thread, and a difference of one is
/// what an odd count leaves anyway.
pub(super) const SLACK: usize = 1;

/// A connection handed from the thread that accepted it to the one that serves it,
/// whether it came from the TLS listener, and its room under the connection limit.
pub(super) type Handed = (
    std::net::TcpStream,
    SocketAddr,
    bool,
    tokio::sync::OwnedSemaphorePermit,
);

/// The threads' open connections, and their inboxes.
pub(super) struct Balance {
    open: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// One thread's part: its index, and its inbox's receiving end.
pub(super) struct Share {
    pub(super) balance: Arc<Balance>,
    pub(super) index: usize,
    pub(super) inbox: mpsc::UnboundedReceiver<Handed>,
}

impl Balance {
    /// A balance over `threads` threads, and each thread's share (in thread order).
    pub(super) fn new(threads: usize) -> (Arc<Balance>, Vec<Share>) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance {
            open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            inboxes: inboxes.into_boxed_slice(),
        });
        let shares = receivers
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Share {
                balance: Arc::clone(&balance),
                index,
                inbox,
            })
            .collect();
        (balance, shares)
    }

    /// Open connections per thread, in thread order.
    pub(super) fn open(&self) -> Vec<usize> {
        self.open.iter().map(|open| open.load(Relaxed)).collect()
    }

    /// The thread that is to serve a connection thread `mine` accepted, counted as
    /// open there from now on.
    pub(super) fn assign(&self, mine: usize) -> usize {
        let counts = self.open();
        let target = pick(&counts, mine);
        self.open[target].fetch_add(1, Relaxed);
        target
    }

    /// Sends `conn` to thread `to`'s inbox; gives it back if that thread has stopped.
    pub(super) fn hand(&self, to: usize, conn: Handed) -> Result<(), Handed> {
        self.inboxes[to].send(conn).map_err(|returned| returned.0)
    }

    /// Moves one open connection's count from thread `from` to thread `to` (a hand-over
    /// that failed).
    pub(super) fn moved(&self, from: usize, to: usize) {
        self.open[from].fetch_sub(1, Relaxed);
        self.open[to].fetch_add(1, Relaxed);
    }

    /// A connection thread `index` served has ended.
    pub(super) fn closed(&self, index: usize) {
        self.open[index].fetch_sub(1, Relaxed);
    }
}

/// Which thread serves a connection thread `mine` accepted, given each thread's open
/// connections: `mine`, unless it has more than [`SLACK`] above the least busy thread
/// (the first of those, in thread order).
pub(super) fn pick(counts: &[usize], mine: usize) -> usize {
    let (least, fewest) = counts
        .iter()
        .copied()
        .enumerate()
        .min_by_key(|&(_, open)| open)
        .expect("at least one thread");
    if counts[mine] > fewest + SLACK {
        least
    } else {
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_connection_unless_it_is_ahead_by_more_than_the_slack() {
        assert_eq!(pick(&[0], 0), 0);
        assert_eq!(pick(&[0, 0], 0), 0);
        assert_eq!(pick(&[1, 0], 0), 0);
        assert_eq!(pick(&[2, 0], 0), 1);
        assert_eq!(pick(&[5, 9, 3], 1), 2);
        assert_eq!(pick(&[5, 9, 3], 0), 2);
        assert_eq!(pick(&[4, 9, 3], 0), 0);
        // The least busy thread itself never hands over.
        assert_eq!(pick(&[7, 7, 7], 2), 2);
    }

    #[test]
    fn a_burst_accepted_by_one_thread_ends_up_spread_evenly() {
        let (balance, _shares) = Balance::new(3);
        for _ in 0..31 {
            balance.assign(0);
        }
        let open = balance.open();
        assert_eq!(open.iter().sum::<usize>(), 31);
        let (max, min) = (open.iter().max().unwrap(), open.iter().min().unwrap());
        assert!(max - min <= SLACK + 1, "{open:?}");
        balance.closed(0);
        balance.moved(1, 2);
        assert_eq!(balance.open().iter().sum::<usize>(), 30);
    }
}
