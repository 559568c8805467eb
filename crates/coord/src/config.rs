//! The ZooKeeper layer's settings, with the defaults every component starts from.

use std::time::Duration;

/// `jute.maxbuffer`'s default: the largest packet a ZooKeeper server accepts, in bytes.
/// Servers and clients must agree on it; this is the one place Switchyard defines it.
pub const DEFAULT_JUTE_MAXBUFFER: usize = 1_048_575;

/// Bytes of a write request that are not its payload: packet length, request header,
/// path length prefix, ACL list, flags. Reserved so that a payload that passes the
/// check also passes the server's check on the whole packet.
pub const REQUEST_OVERHEAD_BYTES: usize = 1024;

/// How the layer talks to ZooKeeper.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connect string: `host:port[,host:port...]`.
    pub connect: String,
    /// Session timeout to negotiate; the server bounds it by 2 and 20 ticks.
    pub session_timeout: Duration,
    /// Requests in flight at most; callers beyond it wait. The post-mortem's semaphore.
    pub window: usize,
    /// `jute.maxbuffer` of the servers, in bytes.
    pub jute_maxbuffer: usize,
    /// Payloads larger than this are zstd-compressed, in bytes.
    pub compress_above_bytes: usize,
    /// Share of the largest allowed payload above which a write raises a size alert.
    pub size_alert_ratio: f64,
    /// Ephemeral nodes one session may hold (ZOOKEEPER-4306: a closing session with
    /// hundreds of thousands of them can take an ensemble down).
    pub ephemeral_budget: usize,
    /// How long a request is retried across connection losses and session expiries
    /// before it fails.
    pub retry_for: Duration,
    /// Operations per `multi` transaction in bulk writes (fewer when the size limit says so).
    pub multi_ops: usize,
    /// Bulk `multi` transactions in flight at most (each also holds a window slot).
    pub multi_in_flight: usize,
    /// Requests in flight from which single creates are coalesced: a create issued
    /// while at least this many requests are in flight joins a queue, and the queue
    /// goes out as shared `multi` transactions (of up to `multi_ops`, at most
    /// `multi_in_flight` at once). Each create still gets its own answer. 0 never
    /// coalesces.
    pub coalesce_above: usize,
}

impl Config {
    /// Defaults for a connect string.
    pub fn new(connect: impl Into<String>) -> Config {
        Config {
            connect: connect.into(),
            session_timeout: Duration::from_secs(6),
            window: 1000,
            jute_maxbuffer: DEFAULT_JUTE_MAXBUFFER,
            compress_above_bytes: 4096,
            size_alert_ratio: 0.9,
            ephemeral_budget: 10_000,
            retry_for: Duration::from_secs(60),
            multi_ops: 100,
            multi_in_flight: 64,
            coalesce_above: 64,
        }
    }

    /// The largest encoded payload a write to `path` may carry.
    pub fn max_payload_bytes(&self, path: &str) -> usize {
        self.jute_maxbuffer
            .saturating_sub(REQUEST_OVERHEAD_BYTES + path.len())
    }
}
