//! Names of the layer's metrics, recorded through the `metrics` facade. The process
//! that installs a recorder (the orchestrator's `/metrics`) exports them.

/// Gauge: requests holding a window slot.
pub const ZK_IN_FLIGHT: &str = "switchyard_zk_requests_in_flight";
/// Counter: requests that found the window full and waited.
pub const ZK_WINDOW_WAITS: &str = "switchyard_zk_window_waits_total";
/// Histogram by `op`: request latency, retries included.
pub const ZK_REQUEST_DURATION: &str = "switchyard_zk_request_duration_seconds";
/// Counter by `kind`: requests that failed.
pub const ZK_ERRORS: &str = "switchyard_zk_errors_total";
/// Counter by `reason`: attempts retried.
pub const ZK_RETRIES: &str = "switchyard_zk_retries_total";
/// Counter: connections lost.
pub const ZK_DISCONNECTS: &str = "switchyard_zk_disconnects_total";
/// Counter: sessions expired.
pub const ZK_EXPIRIES: &str = "switchyard_zk_session_expiries_total";
/// Gauge: the largest encoded payload written or read, in bytes.
pub const ZK_LARGEST_PAYLOAD: &str = "switchyard_zk_largest_payload_bytes";
/// Counter: payloads over the alert share (90 %) of the size limit.
pub const ZK_PAYLOADS_OVER_ALERT: &str = "switchyard_zk_payloads_over_alert_total";
/// Gauge: nodes whose last seen size is over the alert share (90 %) of the limit.
pub const ZK_NODES_OVER_ALERT: &str = "switchyard_zk_nodes_over_alert";
/// Gauges by `server` and `figure`: a ZooKeeper server's `mntr` figures about sizes
/// (`zk_max_proposal_size`, `zk_max_client_response_size`, `zk_approximate_data_size`).
pub const ZK_SERVER_FIGURE: &str = "switchyard_zk_server_mntr";
/// Counter by `op` (`create`, `get`): single requests sent inside shared `multi` or
/// `multiRead` requests (coalesced under load).
pub const ZK_COALESCED: &str = "switchyard_zk_coalesced_requests_total";
