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

/// Gauge: files the process has open (ZooKeeper and client connections among them),
/// under the Prometheus client libraries' usual name, as the gateway has it.
pub const OPEN_FDS: &str = "process_open_fds";
/// Gauge: the most files the process may open.
pub const MAX_FDS: &str = "process_max_fds";
/// Gauge: resident memory, in bytes (the cached ZooKeeper tree is most of it).
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Gauge: CPU time used, user and system, in seconds.
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Gauge: when the process started, in seconds since the Unix epoch.
pub const START_TIME: &str = "process_start_time_seconds";

/// Sets the process's figures in the global recorder, read from `/proc`; one that cannot
/// be read is left out.
pub(crate) fn record_process() {
    let process = metrics_process::collector::collect();
    let figures = [
        (OPEN_FDS, process.open_fds.map(|n| n as f64)),
        // 0 is an unlimited limit: no figure to compare with.
        (
            MAX_FDS,
            process.max_fds.filter(|n| *n > 0).map(|n| n as f64),
        ),
        (
            RESIDENT_MEMORY,
            process.resident_memory_bytes.map(|n| n as f64),
        ),
        // `metrics` counters count whole units: seconds with their fraction take a gauge.
        (CPU_SECONDS, process.cpu_seconds_total),
        (START_TIME, process.start_time_seconds.map(|s| s as f64)),
    ];
    for (name, value) in figures {
        if let Some(value) = value {
            ::metrics::gauge!(name).set(value);
        }
    }
}
