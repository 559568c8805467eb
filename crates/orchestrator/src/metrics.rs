//! Names of the orchestrator's metrics (the ZooKeeper layer's are in `coord::metrics`).

/// Gauge: applications known.
pub const APPS: &str = "switchyard_orchestrator_apps";
/// Gauge: shards this member owns.
pub const SHARDS_OWNED: &str = "switchyard_orchestrator_shards_owned";
/// Gauge: shards this member should own but does not yet.
pub const SHARDS_PENDING: &str = "switchyard_orchestrator_shards_pending";
/// Gauge: the route table's version.
pub const ROUTE_VERSION: &str = "switchyard_orchestrator_route_version";
/// Gauge: route-stream subscribers.
pub const ROUTE_SUBSCRIBERS: &str = "switchyard_orchestrator_route_subscribers";
/// Gauge: 1 when ready.
pub const READY: &str = "switchyard_orchestrator_ready";
/// Counter by `result` (`up`, `down`): health checks run.
pub const HEALTH_CHECKS: &str = "switchyard_orchestrator_health_checks_total";
/// Counter: backend state changes (up→down or down→up).
pub const HEALTH_TRANSITIONS: &str = "switchyard_orchestrator_health_transitions_total";
/// Gauge: cached nodes that could not be read.
pub const UNDECODABLE_NODES: &str = "switchyard_orchestrator_undecodable_nodes";
/// Gauge: ZooKeeper requests in flight (mirrors the layer's window).
pub const ZK_IN_FLIGHT: &str = "switchyard_zk_requests_in_flight";
/// Gauge: the largest ZooKeeper node written or read, in bytes.
pub const ZK_LARGEST_NODE: &str = "switchyard_zk_largest_payload_bytes";
