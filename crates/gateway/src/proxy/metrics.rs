//! The request path's metric names, in one place, and the handles it records with.
//!
//! **Invariant:** no label carries a host, an application or a backend: there are a
//! million of them. Requests are counted by status class only.

use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Gauge, Histogram, Unit};

/// Requests answered, by status class: label [`CODE_LABEL`] = `1xx` (upgrades) to `5xx`.
pub const REQUESTS_TOTAL: &str = "switchyard_gateway_requests_total";
/// From choosing a backend to its response head, in seconds (connects included).
pub const UPSTREAM_DURATION_SECONDS: &str = "switchyard_gateway_upstream_duration_seconds";
/// Requests whose response has not been fully sent yet (an upgraded connection counts
/// as one request until it closes).
pub const REQUESTS_IN_FLIGHT: &str = "switchyard_gateway_requests_in_flight";
/// Client connections open, upgraded ones included.
pub const CONNECTIONS_OPEN: &str = "switchyard_gateway_connections_open";
/// TLS handshakes that failed or timed out (a name no certificate covers, a client
/// that gave up, a protocol error).
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchyard_gateway_tls_handshake_failures_total";
/// The label of [`REQUESTS_TOTAL`].
pub const CODE_LABEL: &str = "code";

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Describes the request path's metrics (help text and units) to the installed
/// recorder. Call it once, after installing the recorder.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests answered by the gateway, by status class."
    );
    metrics::describe_histogram!(
        UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Time from choosing a backend to its response head."
    );
    metrics::describe_gauge!(
        REQUESTS_IN_FLIGHT,
        Unit::Count,
        "Requests whose response is not fully sent yet."
    );
    metrics::describe_gauge!(
        CONNECTIONS_OPEN,
        Unit::Count,
        "Client connections open, upgraded ones included."
    );
    metrics::describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        Unit::Count,
        "TLS handshakes that failed or timed out."
    );
}

/// Handles registered once, so a request does not look its metrics up by name.
pub(super) struct Metrics {
    requests: [Counter; 5],
    upstream_duration: Histogram,
    pub(super) in_flight: Gauge,
    pub(super) connections: Gauge,
    pub(super) tls_handshake_failures: Counter,
}

impl Metrics {
    /// Registers the handles with the recorder installed now (a no-op recorder when
    /// none is).
    pub(super) fn new() -> Metrics {
        Metrics {
            requests: CLASSES.map(|class| metrics::counter!(REQUESTS_TOTAL, CODE_LABEL => class)),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION_SECONDS),
            in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
            connections: metrics::gauge!(CONNECTIONS_OPEN),
            tls_handshake_failures: metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL),
        }
    }

    pub(super) fn count(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
    }

    pub(super) fn upstream_duration(&self, duration: Duration) {
        self.upstream_duration.record(duration.as_secs_f64());
    }
}
