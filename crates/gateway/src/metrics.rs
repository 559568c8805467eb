//! The gateway's metric names, and the Prometheus recorder `/metrics` renders.
//!
//! The control side's metrics (table, staleness, held updates, snapshot writes, the
//! route stream) are *sampled at scrape time* from the gateway's own state into a
//! recorder of its own, rather than pushed as they change: staleness is then exact at
//! each scrape, and several gateways in one process (the tests) each render their own
//! values. The request path records into the global recorder that [`install`] sets up,
//! rendered after them. No metric has a host or application label: there are a million.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Applications routed by the table being served.
pub const ROUTES: &str = "switchyard_gateway_routes";
/// Host names and wildcard domains routed by the table being served.
pub const DOMAINS: &str = "switchyard_gateway_domains";
/// Version of the table being served (a ZooKeeper zxid).
pub const TABLE_VERSION: &str = "switchyard_gateway_route_table_version";
/// Seconds since the served table was last known to match an orchestrator's; before the
/// first sync, counted from the loaded snapshot file's modification time.
pub const STALENESS: &str = "switchyard_gateway_route_table_staleness_seconds";
/// 1 while the stream delivered an update the guards hold (invariant 1), else 0.
pub const HELD_UPDATES: &str = "switchyard_gateway_held_updates";
/// Seconds the current held update has been held (0 when none is).
pub const HELD_AGE: &str = "switchyard_gateway_held_update_age_seconds";
/// Routes the held update would remove (0 when none is held).
pub const HELD_REMOVED: &str = "switchyard_gateway_held_update_removed_routes";
/// 1 once a table is loaded (from disk or an orchestrator) and the gateway is not stopping.
pub const READY: &str = "switchyard_gateway_ready";
/// Connections opened to orchestrators' route streams.
pub const STREAM_CONNECTS: &str = "switchyard_gateway_route_stream_connects_total";
/// Route stream attempts that failed or ended (refused, 503, errors, EOF, ping timeout).
pub const STREAM_FAILURES: &str = "switchyard_gateway_route_stream_failures_total";
/// Route stream answers of 503: an orchestrator that is not ready (never applied).
pub const STREAM_NOT_READY: &str = "switchyard_gateway_route_stream_not_ready_total";
/// Full snapshots applied from an orchestrator.
pub const SNAPSHOTS_APPLIED: &str = "switchyard_gateway_route_snapshots_applied_total";
/// Delta lines (upserts and removes) applied.
pub const DELTAS_APPLIED: &str = "switchyard_gateway_route_deltas_applied_total";
/// Updates the guards held (each counted once, when it began to be held).
pub const UPDATES_HELD: &str = "switchyard_gateway_route_updates_held_total";
/// Snapshot files written.
pub const SNAPSHOT_WRITES: &str = "switchyard_gateway_snapshot_writes_total";
/// Snapshot writes that failed (the table stays pending and is retried).
pub const SNAPSHOT_WRITE_ERRORS: &str = "switchyard_gateway_snapshot_write_errors_total";
/// Duration of the last snapshot write: encoding, compression, fsyncs.
pub const SNAPSHOT_WRITE_DURATION: &str = "switchyard_gateway_snapshot_last_write_duration_seconds";
/// Uncompressed payload of the last snapshot written.
pub const SNAPSHOT_WRITE_BYTES: &str = "switchyard_gateway_snapshot_last_write_bytes";
/// Unix time of the last snapshot written.
pub const SNAPSHOT_WRITE_TIME: &str = "switchyard_gateway_snapshot_last_write_timestamp_seconds";
/// Table version of the snapshot on disk: the one loaded at start, then the last written.
pub const SNAPSHOT_VERSION: &str = "switchyard_gateway_snapshot_table_version";
/// Seconds the served table has been waiting to be written to disk (0 when the disk holds
/// it, or after a write that left only a newer update waiting). It grows while writes
/// fail or another process holds the state folder: a restart then would serve the older
/// table on disk.
pub const SNAPSHOT_UNSAVED: &str = "switchyard_gateway_snapshot_unsaved_seconds";
/// 1 while this gateway holds its state folder's lock (`gateway.lock`) and so writes its
/// table there; 0 while another process holds it (the gateway it replaces, for a few
/// seconds; for longer, two gateways given one `--state-dir`).
pub const STATE_FOLDER_HELD: &str = "switchyard_gateway_state_folder_held";
/// Time to read, check and decode the snapshot at start-up.
pub const SNAPSHOT_LOAD_DURATION: &str = "switchyard_gateway_snapshot_load_duration_seconds";
/// Client connections open per proxy thread (label [`THREAD_LABEL`], from 1), when the
/// proxy runs on threads of its own: how evenly they share the load.
pub const THREAD_CONNECTIONS: &str = "switchyard_gateway_thread_connections_open";
/// The label of [`THREAD_CONNECTIONS`].
pub const THREAD_LABEL: &str = "thread";
/// Certificate files the TLS listener serves (absent without TLS).
pub const TLS_CERTIFICATES: &str = "switchyard_gateway_tls_certificates";
/// When the first of the served certificates expires, in seconds since the Unix epoch:
/// alert on `switchyard_gateway_tls_earliest_expiry_timestamp_seconds - time() < 14 * 86400`.
pub const TLS_EARLIEST_EXPIRY: &str = "switchyard_gateway_tls_earliest_expiry_timestamp_seconds";

/// Files the process has open (client and backend connections among them), under the
/// Prometheus client libraries' usual name.
pub const OPEN_FDS: &str = "process_open_fds";
/// The most files the process may open: at [`OPEN_FDS`] = this, new connections wait.
pub const MAX_FDS: &str = "process_max_fds";
/// Resident memory, in bytes.
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// CPU time used, user and system, in seconds.
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
/// When the process started, in seconds since the Unix epoch: a change is a restart.
pub const START_TIME: &str = "process_start_time_seconds";

/// Sets the process's figures ([`OPEN_FDS`], [`MAX_FDS`], [`RESIDENT_MEMORY`],
/// [`CPU_SECONDS`], [`START_TIME`]) in the recorder in use, read from `/proc`; one that
/// cannot be read is left out.
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
        // A gauge: `metrics` counters count whole units, and the usual name is in
        // seconds (PromQL's rate() takes it all the same).
        (CPU_SECONDS, process.cpu_seconds_total),
        (START_TIME, process.start_time_seconds.map(|s| s as f64)),
    ];
    for (name, value) in figures {
        if let Some(value) = value {
            metrics::gauge!(name).set(value);
        }
    }
}

/// Latency buckets, in seconds, for every `*_duration_seconds` histogram (the request
/// path's among them): Prometheus renders histograms, not client-side summaries.
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The global recorder's handle, `None` if another recorder took the global slot.
static GLOBAL: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's Prometheus recorder as the global `metrics` recorder, once,
/// before the proxy registers its metrics (see `proxy::metrics`). If another recorder was
/// installed first, the proxy's metrics go there and `/metrics` shows the control side's
/// only (a warning says so).
pub(crate) fn install() {
    GLOBAL.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("duration_seconds".to_string()),
                DURATION_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => {
                crate::proxy::metrics::describe();
                Some(handle)
            }
            Err(_) => {
                tracing::warn!(
                    "another metrics recorder is installed; /metrics shows the control side's metrics only"
                );
                None
            }
        }
    });
}

/// Drains the global recorder's histograms into their buckets now and then, so an
/// unscraped gateway does not grow them; runs until the task is dropped.
pub(crate) async fn upkeep() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        if let Some(Some(handle)) = GLOBAL.get() {
            handle.run_upkeep();
        }
    }
}

/// One gateway's control-side metrics: a recorder of its own, not the global one, so
/// that its sampled values (counters are set with `absolute`) are its own even when a
/// process runs several gateways.
pub(crate) struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// One scrape at a time samples and renders.
    scrape: Mutex<()>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        Registry {
            recorder,
            handle,
            scrape: Mutex::new(()),
        }
    }

    /// One scrape: `sample` sets this gateway's values (with the `metrics` macros); then
    /// they are rendered as Prometheus text, followed by the global recorder's metrics.
    pub(crate) fn render(&self, sample: impl FnOnce()) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        metrics::with_local_recorder(&self.recorder, sample);
        let mut text = self.handle.render();
        if let Some(Some(global)) = GLOBAL.get() {
            global.run_upkeep();
            text.push_str(&global.render());
        }
        text
    }
}

/// Help text and units of the control side's metrics.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        ROUTES,
        Unit::Count,
        "Applications routed by the served table."
    );
    describe_gauge!(
        DOMAINS,
        Unit::Count,
        "Host names and wildcards routed by the served table."
    );
    describe_gauge!(TABLE_VERSION, "Version (zxid) of the served route table.");
    describe_gauge!(
        STALENESS,
        Unit::Seconds,
        "Seconds since the served table was last known to match an orchestrator's."
    );
    describe_gauge!(
        HELD_UPDATES,
        Unit::Count,
        "1 while a route table update is held by the empty-table or mass-deletion guard."
    );
    describe_gauge!(
        HELD_AGE,
        Unit::Seconds,
        "Seconds the held update has been held."
    );
    describe_gauge!(
        HELD_REMOVED,
        Unit::Count,
        "Routes the held update would remove."
    );
    describe_gauge!(READY, "1 when /readyz answers 200.");
    describe_counter!(
        STREAM_CONNECTS,
        Unit::Count,
        "Route stream connections opened."
    );
    describe_counter!(
        STREAM_FAILURES,
        Unit::Count,
        "Route stream attempts that ended or failed."
    );
    describe_counter!(
        STREAM_NOT_READY,
        Unit::Count,
        "Route stream answers of 503 (never applied)."
    );
    describe_counter!(
        SNAPSHOTS_APPLIED,
        Unit::Count,
        "Route table snapshots applied."
    );
    describe_counter!(DELTAS_APPLIED, Unit::Count, "Route changes applied.");
    describe_gauge!(OPEN_FDS, Unit::Count, "Files the process has open.");
    describe_gauge!(MAX_FDS, Unit::Count, "The most files the process may open.");
    describe_gauge!(RESIDENT_MEMORY, Unit::Bytes, "Resident memory size.");
    describe_gauge!(CPU_SECONDS, Unit::Seconds, "User and system CPU time used.");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Start time, since the Unix epoch."
    );
    describe_counter!(
        UPDATES_HELD,
        Unit::Count,
        "Route table updates held by the guards."
    );
    describe_counter!(
        SNAPSHOT_WRITES,
        Unit::Count,
        "Route table snapshots written to disk."
    );
    describe_counter!(
        SNAPSHOT_WRITE_ERRORS,
        Unit::Count,
        "Route table snapshot writes that failed."
    );
    describe_gauge!(
        SNAPSHOT_WRITE_DURATION,
        Unit::Seconds,
        "Duration of the last snapshot write."
    );
    describe_gauge!(
        SNAPSHOT_WRITE_BYTES,
        Unit::Bytes,
        "Payload size of the last snapshot written."
    );
    describe_gauge!(
        SNAPSHOT_WRITE_TIME,
        Unit::Seconds,
        "Unix time of the last snapshot written."
    );
    describe_gauge!(
        SNAPSHOT_VERSION,
        "Table version of the snapshot on disk (loaded at start, then written)."
    );
    describe_gauge!(
        SNAPSHOT_UNSAVED,
        Unit::Seconds,
        "How long the served table has waited to be written to disk."
    );
    describe_gauge!(
        STATE_FOLDER_HELD,
        "1 while this gateway holds its state folder's lock and writes its table there."
    );
    describe_gauge!(
        SNAPSHOT_LOAD_DURATION,
        Unit::Seconds,
        "Time to load and decode the snapshot at start-up."
    );
    describe_gauge!(
        TLS_CERTIFICATES,
        Unit::Count,
        "Certificate files the TLS listener serves."
    );
    describe_gauge!(
        TLS_EARLIEST_EXPIRY,
        Unit::Seconds,
        "When the first of the served TLS certificates expires (Unix time)."
    );
    describe_gauge!(
        THREAD_CONNECTIONS,
        Unit::Count,
        "Client connections open per proxy thread."
    );
}
