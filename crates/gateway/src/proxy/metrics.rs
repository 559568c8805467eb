//! The request path's metric names, in one place, and the handles it records with.
//!
//! **Invariant:** no label carries a host, an application or a backend: there are a
//! million of them. Requests are counted by status class only.
//!
//! Counters and gauges go to the installed `metrics` recorder. The upstream latency
//! histogram does not: the Prometheus exporter keeps every sample until its next upkeep
//! and bins them then, which cost a few hundred instructions per request, heap that came
//! and went, and a pause every few seconds on a busy gateway. [`Latency`] bins each sample
//! as it is recorded, into counters of the recording thread's own, and renders itself.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Gauge, Unit};

use super::answer::Failure;

/// Requests answered, by status class: label [`CODE_LABEL`] = `1xx` (upgrades) to `5xx`.
pub const REQUESTS_TOTAL: &str = "switchyard_gateway_requests_total";
/// From choosing a backend to its response head, in seconds (connects included).
pub const UPSTREAM_DURATION_SECONDS: &str = "switchyard_gateway_upstream_duration_seconds";
/// Requests whose response has not been fully sent yet (an upgraded connection counts
/// as one request until it closes).
pub const REQUESTS_IN_FLIGHT: &str = "switchyard_gateway_requests_in_flight";
/// Client connections open, upgraded ones included.
pub const CONNECTIONS_OPEN: &str = "switchyard_gateway_connections_open";
/// The most client connections served at once (`--max-connections`).
pub const CONNECTIONS_MAX: &str = "switchyard_gateway_connections_max";
/// TLS handshakes that failed or timed out (a name no certificate covers, a client
/// that gave up, a protocol error).
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchyard_gateway_tls_handshake_failures_total";
/// Connections the proxy could not accept (out of file descriptors or memory). They
/// wait in the listen queue meanwhile, or time out there.
pub const ACCEPT_ERRORS_TOTAL: &str = "switchyard_gateway_accept_errors_total";
/// Access log lines dropped because the disk did not keep up (see `proxy::AccessLog`).
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "switchyard_gateway_access_log_dropped_total";
/// The label of [`REQUESTS_TOTAL`].
pub const CODE_LABEL: &str = "code";
/// Requests the gateway answered itself (a 4xx or 5xx of its own), by [`REASON_LABEL`]:
/// `no_route`, `no_backend`, `connect`, `out_of_sockets`, `backend`, `bad_response`, `timeout`,
/// `bad_host`, `bad_body`, `head_too_long`, `malformed_head`, `unsupported_coding`,
/// `connect_method`.
pub const ERRORS_TOTAL: &str = "switchyard_gateway_errors_total";
/// The label of [`ERRORS_TOTAL`].
pub const REASON_LABEL: &str = "reason";
/// Times a backend was ejected after consecutive connect failures.
pub const BACKEND_EJECTIONS_TOTAL: &str = "switchyard_gateway_backend_ejections_total";
/// Requests sent again on a new connection because the pooled one they went out on,
/// quiet for a second or more, was closed by its backend before any byte of an answer:
/// a backend keep-alive timeout that runs out as requests arrive.
pub const BACKEND_RESENDS_TOTAL: &str = "switchyard_gateway_backend_resends_total";
/// Idle backend connections closed because a new one could not be opened for want of
/// file descriptors.
pub const BACKEND_IDLE_SHED_TOTAL: &str = "switchyard_gateway_backend_idle_shed_total";

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Describes the request path's metrics (help text and units) to the installed
/// recorder. Call it once, after installing the recorder.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests answered by the gateway, by status class."
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
    metrics::describe_gauge!(
        CONNECTIONS_MAX,
        Unit::Count,
        "The most client connections served at once; more wait in the listen queue."
    );
    metrics::describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        Unit::Count,
        "Connections the gateway could not accept (out of file descriptors or memory)."
    );
    metrics::describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "Requests the gateway answered itself, by reason."
    );
    metrics::describe_counter!(
        BACKEND_EJECTIONS_TOTAL,
        Unit::Count,
        "Times a backend was ejected after consecutive connect failures."
    );
    metrics::describe_counter!(
        BACKEND_RESENDS_TOTAL,
        Unit::Count,
        "Requests sent again because a pooled connection, quiet for a second or more, \
         was closed by its backend before answering."
    );
    metrics::describe_counter!(
        BACKEND_IDLE_SHED_TOTAL,
        Unit::Count,
        "Idle backend connections closed to open a new one when file descriptors ran out."
    );
    metrics::describe_counter!(
        ACCESS_LOG_DROPPED_TOTAL,
        Unit::Count,
        "Access log lines dropped because the disk did not keep up."
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
    errors: [Counter; Failure::REASONS.len()],
    pub(super) upstream_duration: Latency,
    pub(super) in_flight: Gauge,
    pub(super) connections: Gauge,
    pub(super) connections_max: Gauge,
    pub(super) tls_handshake_failures: Counter,
    pub(super) accept_errors: Counter,
}

impl Metrics {
    /// Registers the handles with the recorder installed now (a no-op recorder when
    /// none is).
    pub(super) fn new() -> Metrics {
        Metrics {
            requests: CLASSES.map(|class| metrics::counter!(REQUESTS_TOTAL, CODE_LABEL => class)),
            errors: Failure::REASONS
                .map(|reason| metrics::counter!(ERRORS_TOTAL, REASON_LABEL => reason)),
            upstream_duration: Latency::new(),
            in_flight: metrics::gauge!(REQUESTS_IN_FLIGHT),
            connections: metrics::gauge!(CONNECTIONS_OPEN),
            connections_max: metrics::gauge!(CONNECTIONS_MAX),
            tls_handshake_failures: metrics::counter!(TLS_HANDSHAKE_FAILURES_TOTAL),
            accept_errors: metrics::counter!(ACCEPT_ERRORS_TOTAL),
        }
    }

    pub(super) fn count(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
    }

    /// A request the proxy answers itself, because of `failure`.
    pub(super) fn failed(&self, failure: &Failure) {
        self.errors[failure.reason()].increment(1);
    }

    pub(super) fn upstream_duration(&self, duration: Duration) {
        self.upstream_duration.record(duration);
    }
}

/// Upper bounds of [`Latency`]'s buckets, in seconds: those of the process's other
/// `*_duration_seconds` histograms.
const BOUNDS: &[f64] = crate::metrics::DURATION_BUCKETS;
/// [`BOUNDS`] and `+Inf`.
const BUCKETS: usize = BOUNDS.len() + 1;
/// Shards of [`Latency`]: proxy thread `n` records into shard `n % SHARDS`.
const SHARDS: usize = 16;

/// A latency histogram ([`UPSTREAM_DURATION_SECONDS`]) binned at record time.
pub(crate) struct Latency {
    /// [`BOUNDS`] in nanoseconds.
    bounds: [u64; BUCKETS - 1],
    shards: Box<[Shard; SHARDS]>,
}

/// One thread's counts, on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Samples per bucket (not cumulative).
    counts: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

/// What a [`Latency`] has recorded so far, summed over its shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LatencyCounts {
    /// Samples per bucket of [`BOUNDS`] and `+Inf` (not cumulative).
    pub(crate) buckets: [u64; BUCKETS],
    pub(crate) sum_nanos: u64,
}

impl Latency {
    pub(crate) fn new() -> Latency {
        Latency {
            bounds: std::array::from_fn(|i| (BOUNDS[i] * 1e9).round() as u64),
            shards: Box::default(),
        }
    }

    pub(crate) fn record(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKETS - 1);
        let shard = &self.shards[super::upstream::this_thread() % SHARDS];
        shard.counts[bucket].fetch_add(1, Relaxed);
        shard.sum_nanos.fetch_add(nanos, Relaxed);
    }

    pub(crate) fn counts(&self) -> LatencyCounts {
        let mut out = LatencyCounts {
            buckets: [0; BUCKETS],
            sum_nanos: 0,
        };
        for shard in self.shards.iter() {
            for (total, count) in out.buckets.iter_mut().zip(&shard.counts) {
                *total += count.load(Relaxed);
            }
            out.sum_nanos = out.sum_nanos.wrapping_add(shard.sum_nanos.load(Relaxed));
        }
        out
    }

    /// Appends the histogram in the Prometheus text format, help and type included.
    pub(crate) fn render(&self, out: &mut String) {
        let counts = self.counts();
        let name = UPSTREAM_DURATION_SECONDS;
        let _ = writeln!(
            out,
            "# HELP {name} Time from choosing a backend to its response head.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, count) in counts.buckets.iter().enumerate() {
            cumulative += count;
            match BOUNDS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(out, "{name}_sum {}", counts.sum_nanos as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        let latency = Latency::new();
        latency.record(Duration::from_micros(500)); // on the first bound: le="0.0005"
        latency.record(Duration::from_micros(501));
        latency.record(Duration::from_millis(1));
        latency.record(Duration::from_secs(31)); // past the last bound: +Inf
        latency.record(Duration::MAX);
        let counts = latency.counts();
        assert_eq!(&counts.buckets[..3], &[1, 2, 0]);
        assert_eq!(counts.buckets[BUCKETS - 1], 2);
        assert_eq!(counts.buckets.iter().sum::<u64>(), 5);
    }

    #[test]
    fn shards_of_every_thread_add_up() {
        let latency = std::sync::Arc::new(Latency::new());
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let latency = std::sync::Arc::clone(&latency);
                std::thread::spawn(move || {
                    super::super::upstream::set_thread(n);
                    for _ in 0..1000 {
                        latency.record(Duration::from_millis(3));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let counts = latency.counts();
        // 3 ms is over 0.0025 and not over 0.005: the fourth bucket.
        assert_eq!(counts.buckets[3], 4000);
        assert_eq!(counts.sum_nanos, 4000 * 3_000_000);
    }

    #[test]
    fn it_renders_as_a_cumulative_prometheus_histogram() {
        let latency = Latency::new();
        latency.record(Duration::from_micros(200));
        latency.record(Duration::from_millis(2));
        latency.record(Duration::from_millis(2));
        let mut text = String::new();
        latency.render(&mut text);
        let name = UPSTREAM_DURATION_SECONDS;
        for line in [
            format!("# TYPE {name} histogram\n"),
            format!("{name}_bucket{{le=\"0.0005\"}} 1\n"),
            format!("{name}_bucket{{le=\"0.001\"}} 1\n"),
            format!("{name}_bucket{{le=\"0.0025\"}} 3\n"),
            format!("{name}_bucket{{le=\"30\"}} 3\n"),
            format!("{name}_bucket{{le=\"+Inf\"}} 3\n"),
            format!("{name}_sum 0.0042\n"),
            format!("{name}_count 3\n"),
        ] {
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
        assert_eq!(text.lines().count(), 2 + BUCKETS + 2, "{text}");
    }
}
