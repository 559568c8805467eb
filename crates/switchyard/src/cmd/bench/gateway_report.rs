//! What `bench gateway` records per run, and what it prints: the medians per peer, their
//! ratios to nginx measured in the same run, and the targets.

use std::fmt::Write as _;

use serde::Serialize;

use super::gateway_load::{RateResult, WrkResult};
use super::report::median;

/// The peer every ratio is taken against.
pub const REFERENCE: &str = "nginx";
/// The gateway's peers: with one route, and with the large table.
const SMALL: &str = "gateway";
const LARGE: &str = "gateway-large";

/// One proxy process's life under one kind of load.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub mode: String,
    pub run: usize,
    pub peer: String,
    /// Routes the peer knows (the gateway: in its table).
    pub routes: usize,
    /// From spawning the process to the first 200 proxied through it.
    pub start_to_first_ms: Option<f64>,
    /// How long the gateway says it took to load its snapshot and bind (its log).
    pub gateway_start_log_ms: Option<f64>,
    /// Peak resident set of the proxy's processes at the end of the load (VmHWM).
    pub peak_rss_mib: Option<f64>,
    /// Resident set at the end of the load (VmRSS).
    pub rss_mib: Option<f64>,
    /// CPU time of the proxy's processes over the load's wall time, in % of one CPU.
    pub proxy_cpu_percent: Option<f64>,
    /// Likewise for the backend.
    pub backend_cpu_percent: Option<f64>,
    /// One-core mode: CPU time used on the proxy's CPU by any task but the proxy (other
    /// users of the machine), in % of that CPU.
    pub others_on_proxy_cpu_percent: Option<f64>,
    /// Capped mode: the share of the CPU quota's periods in which the proxy used up its
    /// quota, in % (near 100: the proxy was what ran out).
    pub throttled_percent: Option<f64>,
    /// CPU time used on all CPUs by tasks other than the proxy, the backend and the load
    /// generator, in % of one CPU: how much the rest of the machine disturbed the sample.
    pub others_percent: Option<f64>,
    /// Which attempt this was (a sample the rest of the machine disturbed is measured
    /// again, see `--max-others-percent`).
    pub attempt: usize,
    /// Others still used more than `--max-others-percent` in the last attempt.
    pub disturbed: bool,
    /// Time the hypervisor gave to other guests, in % of all CPUs.
    pub steal_percent: Option<f64>,
    /// The 1-minute load average when the load began.
    pub load_average: Option<f64>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Wrk(WrkResult),
    FixedRate(RateResult),
    Failed { load: String, reason: String },
}

impl Sample {
    fn wrk(&self) -> Option<&WrkResult> {
        match &self.outcome {
            Outcome::Wrk(r) => Some(r),
            _ => None,
        }
    }

    fn rate(&self) -> Option<&RateResult> {
        match &self.outcome {
            Outcome::FixedRate(r) => Some(r),
            _ => None,
        }
    }

    pub fn errors(&self) -> u64 {
        match &self.outcome {
            Outcome::Wrk(r) => r.errors(),
            Outcome::FixedRate(r) => r.errors,
            Outcome::Failed { .. } => 0,
        }
    }
}

/// A proxy's share of one interleaved round: every proxy of the mode is up, and the
/// load (fixed-rate with `--rounds`, wrk with `--wrk-rounds`) moves from one to the
/// next, a slice each.
#[derive(Debug, Clone, Serialize)]
pub struct Slice {
    pub mode: String,
    /// `fixed-rate` or `wrk`.
    pub load: &'static str,
    pub round: usize,
    pub peer: String,
    /// Its place in the round's order (0: first); the order turns by one each round.
    pub position: usize,
    /// The proxy's CPU time over the slice's wall time (its warm-up too), in % of one CPU.
    pub proxy_cpu_percent: Option<f64>,
    /// wrk slices: the proxy's CPU time per request, in µs.
    pub cpu_us_per_request: Option<f64>,
    /// Capped modes: the share of the quota's periods in which the proxy used it up, in %.
    pub throttled_percent: Option<f64>,
    /// As [`Sample::others_percent`], over the slice.
    pub others_percent: f64,
    /// As [`Sample::steal_percent`], over the slice.
    pub steal_percent: f64,
    /// Some slice of this round was over --max-others-percent or --max-steal-percent:
    /// the whole round is left out of the figures.
    pub disturbed: bool,
    #[serde(flatten)]
    pub result: SliceResult,
}

/// What a slice's load reported (its fields flattened into the slice's JSON).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SliceResult {
    FixedRate(RateResult),
    Wrk(WrkResult),
}

impl Slice {
    pub fn rate(&self) -> Option<&RateResult> {
        match &self.result {
            SliceResult::FixedRate(r) => Some(r),
            SliceResult::Wrk(_) => None,
        }
    }

    pub fn wrk(&self) -> Option<&WrkResult> {
        match &self.result {
            SliceResult::Wrk(r) => Some(r),
            SliceResult::FixedRate(_) => None,
        }
    }

    pub fn errors(&self) -> u64 {
        match &self.result {
            SliceResult::FixedRate(r) => r.errors,
            SliceResult::Wrk(r) => r.errors(),
        }
    }
}

/// A peer that was not run at all, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub peer: String,
    pub reason: String,
}

/// One row: a peer's medians in one CPU mode.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub mode: String,
    pub peer: String,
    pub routes: usize,
    pub wrk_runs: usize,
    pub rate_runs: usize,
    pub failed_runs: usize,
    pub errors: u64,
    pub wrk_errors: u64,
    pub rate_errors: u64,
    pub requests_per_sec: Option<f64>,
    pub requests_per_sec_vs_nginx: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p99_vs_nginx: Option<f64>,
    pub proxy_cpu_percent: Option<f64>,
    /// Median over the wrk runs of the proxy's CPU time per request, in µs: what the
    /// proxy costs, whether or not the load side let it run flat out.
    pub cpu_us_per_request: Option<f64>,
    pub cpu_per_request_vs_nginx: Option<f64>,
    pub wrk_cpu_percent: Option<f64>,
    pub backend_cpu_percent: Option<f64>,
    /// Medians of [`Sample::others_percent`] under wrk and at the fixed rate.
    pub others_percent: Option<f64>,
    pub rate_others_percent: Option<f64>,
    pub steal_percent: Option<f64>,
    /// Samples measured again because others disturbed them (discarded ones).
    pub remeasured: usize,
    /// Samples kept although others still disturbed them (the last attempt).
    pub disturbed: usize,
    pub rate: Option<u64>,
    pub rate_achieved: Option<f64>,
    pub rate_p50_ms: Option<f64>,
    pub rate_p90_ms: Option<f64>,
    pub rate_p99_ms: Option<f64>,
    pub rate_p999_ms: Option<f64>,
    pub rate_max_ms: Option<f64>,
    pub rate_p99_vs_nginx: Option<f64>,
    pub rate_send_delay_p99_ms: Option<f64>,
    pub rate_pacer_late_p99_ms: Option<f64>,
    pub rate_generator_cpu_percent: Option<f64>,
    pub rate_proxy_cpu_percent: Option<f64>,
    pub rate_backend_cpu_percent: Option<f64>,
    pub start_to_first_ms: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// Per run (in run order): requests/s, and its ratio to nginx's in the same run.
    pub per_run_requests_per_sec: Vec<(usize, f64, Option<f64>)>,
    /// Interleaved rounds kept (undisturbed) and left out.
    pub interleaved_rounds: usize,
    pub interleaved_left_out: usize,
    pub interleaved_errors: u64,
    /// Medians over the kept rounds.
    pub interleaved_p50_ms: Option<f64>,
    pub interleaved_p99_ms: Option<f64>,
    pub interleaved_p999_ms: Option<f64>,
    pub interleaved_proxy_cpu_percent: Option<f64>,
    /// The median of the per-round ratios of the p99 to nginx's in the same round.
    pub interleaved_p99_vs_nginx: Option<f64>,
    /// Rounds in which the p99 was below nginx's, of the rounds in which it differed.
    pub interleaved_lower: Option<(usize, usize)>,
    /// The two-sided sign test of `interleaved_lower`: the chance of a split at least
    /// as uneven if each proxy were as likely as the other to have the lower p99.
    pub interleaved_sign_p: Option<f64>,
    /// Closed-loop interleaved rounds (`--wrk-rounds`) kept and left out.
    pub wrk_rounds: usize,
    pub wrk_rounds_left_out: usize,
    pub wrk_rounds_errors: u64,
    /// Medians over the kept rounds.
    pub wrk_rounds_requests_per_sec: Option<f64>,
    pub wrk_rounds_p99_ms: Option<f64>,
    pub wrk_rounds_cpu_us_per_request: Option<f64>,
    pub wrk_rounds_throttled_percent: Option<f64>,
    /// The median of the per-round ratios of requests/s to nginx's in the same round,
    /// and a 95 % confidence interval of that median (from the order statistics: it
    /// assumes nothing of the ratios' distribution).
    pub wrk_rounds_requests_per_sec_vs_nginx: Option<f64>,
    pub wrk_rounds_vs_nginx_interval: Option<(f64, f64)>,
    /// Rounds with more requests/s than nginx, of the rounds in which they differed, and
    /// the sign test of that split.
    pub wrk_rounds_ahead: Option<(usize, usize)>,
    pub wrk_rounds_sign_p: Option<f64>,
    /// Rounds at 1.1x nginx's requests/s or more, of the rounds paired with nginx.
    pub wrk_rounds_at_target: Option<(usize, usize)>,
    /// The median of the per-round ratios of CPU time per request to nginx's.
    pub wrk_rounds_cpu_per_request_vs_nginx: Option<f64>,
    /// `gateway-large`: the median of the per-round ratios of its requests/s to those of
    /// the gateway with one route.
    pub wrk_rounds_vs_one_route: Option<f64>,
    pub skipped: Option<String>,
}

fn med(values: impl Iterator<Item = f64>) -> Option<f64> {
    median(values.collect())
}

fn ratio(own: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (own, reference) {
        (Some(own), Some(reference)) if reference > 0.0 => Some(own / reference),
        _ => None,
    }
}

/// The rows of one mode, peers in the order given; `discarded` are the disturbed
/// samples that were measured again (only counted).
pub fn summarise(
    mode: &str,
    peers: &[(String, usize)],
    samples: &[Sample],
    discarded: &[Sample],
    skipped: &[Skipped],
) -> Vec<Row> {
    let of = |peer: &str| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.mode == mode && s.peer == peer)
            .collect()
    };
    let mut rows: Vec<Row> = peers
        .iter()
        .map(|(peer, routes)| {
            let all = of(peer);
            let wrk: Vec<(&Sample, &WrkResult)> =
                all.iter().filter_map(|s| Some((*s, s.wrk()?))).collect();
            let rate: Vec<&RateResult> = all.iter().filter_map(|s| s.rate()).collect();
            // Memory under the heaviest load: the closed-loop runs when there are any.
            let memory: Vec<&Sample> = if wrk.is_empty() {
                all.clone()
            } else {
                wrk.iter().map(|(s, _)| *s).collect()
            };
            Row {
                mode: mode.to_string(),
                peer: peer.clone(),
                routes: *routes,
                wrk_runs: wrk.len(),
                rate_runs: rate.len(),
                failed_runs: all
                    .iter()
                    .filter(|s| matches!(s.outcome, Outcome::Failed { .. }))
                    .count(),
                errors: all.iter().map(|s| s.errors()).sum(),
                wrk_errors: wrk.iter().map(|(_, r)| r.errors()).sum(),
                rate_errors: rate.iter().map(|r| r.errors).sum(),
                requests_per_sec: med(wrk.iter().map(|(_, r)| r.requests_per_sec)),
                p50_ms: med(wrk.iter().map(|(_, r)| r.p50_ms)),
                p99_ms: med(wrk.iter().map(|(_, r)| r.p99_ms)),
                proxy_cpu_percent: med(wrk.iter().filter_map(|(s, _)| s.proxy_cpu_percent)),
                cpu_us_per_request: med(wrk.iter().filter_map(|(s, r)| {
                    let cpu = s.proxy_cpu_percent?;
                    (r.requests_per_sec > 0.0).then(|| cpu * 1e4 / r.requests_per_sec)
                })),
                wrk_cpu_percent: med(wrk.iter().map(|(_, r)| r.wrk_cpu_percent)),
                backend_cpu_percent: med(wrk.iter().filter_map(|(s, _)| s.backend_cpu_percent)),
                others_percent: med(wrk.iter().filter_map(|(s, _)| s.others_percent)),
                rate_others_percent: med(all
                    .iter()
                    .filter(|s| s.rate().is_some())
                    .filter_map(|s| s.others_percent)),
                steal_percent: med(all.iter().filter_map(|s| s.steal_percent)),
                remeasured: discarded
                    .iter()
                    .filter(|s| s.mode == mode && &s.peer == peer)
                    .count(),
                disturbed: all.iter().filter(|s| s.disturbed).count(),
                rate: rate.first().map(|r| r.target_rate),
                rate_achieved: med(rate.iter().map(|r| r.achieved_rate)),
                rate_p50_ms: med(rate.iter().map(|r| r.p50_ms)),
                rate_p90_ms: med(rate.iter().map(|r| r.p90_ms)),
                rate_p99_ms: med(rate.iter().map(|r| r.p99_ms)),
                rate_p999_ms: med(rate.iter().map(|r| r.p999_ms)),
                rate_max_ms: med(rate.iter().map(|r| r.max_ms)),
                rate_send_delay_p99_ms: med(rate.iter().map(|r| r.send_delay_p99_ms)),
                rate_pacer_late_p99_ms: med(rate.iter().map(|r| r.pacer_late_p99_ms)),
                rate_generator_cpu_percent: med(rate.iter().map(|r| r.generator_cpu_percent)),
                rate_backend_cpu_percent: med(all
                    .iter()
                    .filter(|s| s.rate().is_some())
                    .filter_map(|s| s.backend_cpu_percent)),
                rate_proxy_cpu_percent: med(all
                    .iter()
                    .filter(|s| s.rate().is_some())
                    .filter_map(|s| s.proxy_cpu_percent)),
                start_to_first_ms: med(all.iter().filter_map(|s| s.start_to_first_ms)),
                peak_rss_mib: med(memory.iter().filter_map(|s| s.peak_rss_mib)),
                per_run_requests_per_sec: wrk
                    .iter()
                    .map(|(s, r)| (s.run, r.requests_per_sec, None))
                    .collect(),
                skipped: skipped
                    .iter()
                    .find(|s| &s.peer == peer)
                    .map(|s| s.reason.clone()),
                ..Row::default()
            }
        })
        .collect();
    let reference = rows.iter().find(|r| r.peer == REFERENCE).cloned();
    let reference_run = |run: usize| {
        samples
            .iter()
            .filter(|s| s.mode == mode && s.peer == REFERENCE && s.run == run)
            .find_map(|s| s.wrk().map(|r| r.requests_per_sec))
    };
    for row in &mut rows {
        if let Some(reference) = &reference {
            row.requests_per_sec_vs_nginx = ratio(row.requests_per_sec, reference.requests_per_sec);
            row.p99_vs_nginx = ratio(row.p99_ms, reference.p99_ms);
            row.cpu_per_request_vs_nginx =
                ratio(row.cpu_us_per_request, reference.cpu_us_per_request);
            row.rate_p99_vs_nginx = ratio(row.rate_p99_ms, reference.rate_p99_ms);
        }
        for (run, rps, vs) in &mut row.per_run_requests_per_sec {
            *vs = ratio(Some(*rps), reference_run(*run));
        }
    }
    rows
}

/// Fills in the figures of one mode's interleaved rounds, from the undisturbed rounds
/// only: each peer's medians, and against nginx in the same round, the median ratio of
/// the p99s and how many rounds each had the lower one.
pub fn summarise_interleaved(mode: &str, rows: &mut [Row], slices: &[Slice]) {
    let of_mode = || {
        slices
            .iter()
            .filter(|s| s.mode == mode && s.rate().is_some())
    };
    let kept: Vec<(&Slice, &RateResult)> = of_mode()
        .filter(|s| !s.disturbed)
        .filter_map(|s| Some((s, s.rate()?)))
        .collect();
    let reference_p99 = |round: usize| {
        kept.iter()
            .find(|(s, _)| s.round == round && s.peer == REFERENCE)
            .map(|(_, r)| r.p99_ms)
    };
    for row in rows {
        let own: Vec<(&Slice, &RateResult)> = kept
            .iter()
            .copied()
            .filter(|(s, _)| s.peer == row.peer)
            .collect();
        row.interleaved_left_out = of_mode()
            .filter(|s| s.disturbed && s.peer == row.peer)
            .count();
        if own.is_empty() {
            continue;
        }
        row.interleaved_rounds = own.len();
        row.interleaved_errors = own.iter().map(|(_, r)| r.errors).sum();
        row.interleaved_p50_ms = med(own.iter().map(|(_, r)| r.p50_ms));
        row.interleaved_p99_ms = med(own.iter().map(|(_, r)| r.p99_ms));
        row.interleaved_p999_ms = med(own.iter().map(|(_, r)| r.p999_ms));
        row.interleaved_proxy_cpu_percent =
            med(own.iter().filter_map(|(s, _)| s.proxy_cpu_percent));
        if row.peer == REFERENCE {
            continue;
        }
        let pairs: Vec<(f64, f64)> = own
            .iter()
            .filter_map(|(s, r)| Some((r.p99_ms, reference_p99(s.round)?)))
            .collect();
        row.interleaved_p99_vs_nginx = med(pairs
            .iter()
            .filter(|(_, reference)| *reference > 0.0)
            .map(|(p99, reference)| p99 / reference));
        let lower = pairs.iter().filter(|(p99, r)| p99 < r).count();
        let differed = pairs.iter().filter(|(p99, r)| p99 != r).count();
        if differed > 0 {
            row.interleaved_lower = Some((lower, differed));
            row.interleaved_sign_p = sign_test(lower, differed);
        }
    }
}

/// The requests/s target, as a ratio to nginx's.
pub const REQUESTS_TARGET: f64 = 1.1;

/// Fills in the figures of one mode's closed-loop interleaved rounds (`--wrk-rounds`),
/// from the undisturbed rounds only: each peer's medians, and against nginx in the same
/// round, the median ratio of requests/s with its confidence interval, how many rounds
/// each was ahead, and the median ratio of CPU time per request.
pub fn summarise_wrk_rounds(mode: &str, rows: &mut [Row], slices: &[Slice]) {
    let of_mode = || {
        slices
            .iter()
            .filter(|s| s.mode == mode && s.wrk().is_some())
    };
    let kept: Vec<(&Slice, &WrkResult)> = of_mode()
        .filter(|s| !s.disturbed)
        .filter_map(|s| Some((s, s.wrk()?)))
        .collect();
    let of_round = |round: usize, peer: &str| {
        kept.iter()
            .find(|(s, _)| s.round == round && s.peer == peer)
            .copied()
    };
    let reference = |round: usize| of_round(round, REFERENCE);
    for row in rows {
        let own: Vec<(&Slice, &WrkResult)> = kept
            .iter()
            .copied()
            .filter(|(s, _)| s.peer == row.peer)
            .collect();
        row.wrk_rounds_left_out = of_mode()
            .filter(|s| s.disturbed && s.peer == row.peer)
            .count();
        if own.is_empty() {
            continue;
        }
        row.wrk_rounds = own.len();
        row.wrk_rounds_errors = own.iter().map(|(_, r)| r.errors()).sum();
        row.wrk_rounds_requests_per_sec = med(own.iter().map(|(_, r)| r.requests_per_sec));
        row.wrk_rounds_p99_ms = med(own.iter().map(|(_, r)| r.p99_ms));
        row.wrk_rounds_cpu_us_per_request =
            med(own.iter().filter_map(|(s, _)| s.cpu_us_per_request));
        row.wrk_rounds_throttled_percent = med(own.iter().filter_map(|(s, _)| s.throttled_percent));
        if row.peer == REFERENCE {
            continue;
        }
        let paired: Vec<(&Slice, &WrkResult, &Slice, &WrkResult)> = own
            .iter()
            .filter_map(|(s, r)| {
                let (rs, rr) = reference(s.round)?;
                Some((*s, *r, rs, rr))
            })
            .collect();
        let ratios: Vec<f64> = paired
            .iter()
            .filter(|(_, _, _, rr)| rr.requests_per_sec > 0.0)
            .map(|(_, r, _, rr)| r.requests_per_sec / rr.requests_per_sec)
            .collect();
        row.wrk_rounds_requests_per_sec_vs_nginx = median(ratios.clone());
        row.wrk_rounds_vs_nginx_interval = median_interval(&ratios);
        if !ratios.is_empty() {
            let at = ratios.iter().filter(|v| **v >= REQUESTS_TARGET).count();
            row.wrk_rounds_at_target = Some((at, ratios.len()));
        }
        let ahead = paired
            .iter()
            .filter(|(_, r, _, rr)| r.requests_per_sec > rr.requests_per_sec)
            .count();
        let differed = paired
            .iter()
            .filter(|(_, r, _, rr)| r.requests_per_sec != rr.requests_per_sec)
            .count();
        if differed > 0 {
            row.wrk_rounds_ahead = Some((ahead, differed));
            row.wrk_rounds_sign_p = sign_test(ahead, differed);
        }
        row.wrk_rounds_cpu_per_request_vs_nginx = med(paired
            .iter()
            .filter_map(|(s, _, rs, _)| ratio(s.cpu_us_per_request, rs.cpu_us_per_request)));
        if row.peer == LARGE {
            row.wrk_rounds_vs_one_route = med(own.iter().filter_map(|(s, r)| {
                let (_, small) = of_round(s.round, SMALL)?;
                ratio(Some(r.requests_per_sec), Some(small.requests_per_sec))
            }));
        }
    }
}

/// A 95 % confidence interval of the median of `values`, assuming nothing of their
/// distribution: the k-th smallest and k-th largest, for the largest k at which the
/// chance that fewer than k values fall below the median is at most 2.5 %. None for
/// fewer than 6 values (too few for any such k) or more than 1000.
pub fn median_interval(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if !(6..=1000).contains(&n) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // P(X <= k - 1) <= 2.5 % < P(X <= k): the k-th values from either end.
    let k = lower_tails(n).take_while(|tail| *tail <= 0.025).count();
    (k >= 1).then(|| (sorted[k - 1], sorted[n - k]))
}

/// P(X <= 0), P(X <= 1), ..., P(X <= n) for X ~ Binomial(n, 1/2), term by term from
/// C(n, 0) / 2^n.
fn lower_tails(n: usize) -> impl Iterator<Item = f64> {
    let mut term = 0.5f64.powi(n as i32);
    let mut tail = 0.0;
    (0..=n).map(move |i| {
        if i > 0 {
            term *= (n - i + 1) as f64 / i as f64;
        }
        tail += term;
        tail
    })
}

/// The two-sided sign test: the chance, if either outcome of each of `n` trials were
/// equally likely, that one of them came `k` times or fewer (or as many more).
pub fn sign_test(k: usize, n: usize) -> Option<f64> {
    if n == 0 || k > n || n > 1000 {
        return None;
    }
    let tail = lower_tails(n).nth(k.min(n - k))?;
    Some((2.0 * tail).min(1.0))
}

/// A target, and how this run did against it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub mode: String,
    pub target: String,
    pub result: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

/// The targets, from the rows of one mode. `gateway` and `gateway-large` are
/// the peer names of the gateway with one route and with the large table. A `capped`
/// mode (each proxy held to a CPU quota) leaves out the p99 targets, whose tail is the
/// quota's, and the start time, which the quota slows.
pub fn targets(mode: &str, rows: &[Row], capped: bool) -> Vec<Target> {
    let find = |peer: &str| rows.iter().find(|r| r.peer == peer);
    let mut out = Vec::new();
    let mut push = |target: String, result: String, met: Option<bool>| {
        out.push(Target {
            mode: mode.to_string(),
            target,
            result,
            met,
        })
    };
    let x = |v: Option<f64>| v.map_or("not measured".to_string(), |v| format!("{v:.2}x"));
    for peer in [SMALL, LARGE] {
        let Some(row) = find(peer) else { continue };
        let label = if peer == SMALL {
            "gateway (1 route)".to_string()
        } else {
            format!("gateway ({} routes)", row.routes)
        };
        // As for the p99 below: the interleaved rounds, when there are any, decide.
        match (row.wrk_rounds_requests_per_sec_vs_nginx, row.wrk_rounds_ahead) {
            (Some(vs), Some((ahead, differed))) => push(
                format!("{label}: requests/s >= 1.1x nginx's (interleaved rounds)"),
                format!(
                    "{vs:.3}x (median of {} rounds' ratios, 95 % interval {}; ahead in {ahead} of {differed}, sign test {}; at 1.1x or more in {}; CPU per request {})",
                    row.wrk_rounds,
                    row.wrk_rounds_vs_nginx_interval
                        .map_or("-".into(), |(lo, hi)| format!("{lo:.3}x to {hi:.3}x")),
                    p_text(row.wrk_rounds_sign_p),
                    row.wrk_rounds_at_target
                        .map_or("-".into(), |(at, of)| format!("{at} of {of}")),
                    x(row.wrk_rounds_cpu_per_request_vs_nginx),
                ),
                Some(vs >= REQUESTS_TARGET),
            ),
            _ => push(
                format!("{label}: requests/s >= 1.1x nginx's"),
                x(row.requests_per_sec_vs_nginx),
                row.requests_per_sec_vs_nginx.map(|v| v >= REQUESTS_TARGET),
            ),
        }
        if capped {
            continue;
        }
        push(
            format!("{label}: p99 (wrk) <= nginx's"),
            format!(
                "{} ({} ms against {} ms)",
                x(row.p99_vs_nginx),
                ms(row.p99_ms),
                ms(find(REFERENCE).and_then(|r| r.p99_ms))
            ),
            row.p99_vs_nginx.map(|v| v <= 1.0),
        );
        // The interleaved rounds, when there are any, decide: many paired comparisons
        // against the few runs' medians, which the machine's drift moves.
        match (row.interleaved_p99_vs_nginx, row.interleaved_lower) {
            (Some(vs), Some((lower, differed))) => push(
                format!("{label}: p99 at a fixed rate <= nginx's (interleaved rounds)"),
                format!(
                    "{vs:.3}x (median of {} rounds' ratios; lower in {lower} of {differed}, sign test {}; medians {} ms against {} ms)",
                    row.interleaved_rounds,
                    p_text(row.interleaved_sign_p),
                    ms(row.interleaved_p99_ms),
                    ms(find(REFERENCE).and_then(|r| r.interleaved_p99_ms))
                ),
                Some(vs <= 1.0),
            ),
            _ => push(
                format!("{label}: p99 at a fixed rate <= nginx's"),
                format!(
                    "{} ({} ms against {} ms)",
                    x(row.rate_p99_vs_nginx),
                    ms(row.rate_p99_ms),
                    ms(find(REFERENCE).and_then(|r| r.rate_p99_ms))
                ),
                row.rate_p99_vs_nginx.map(|v| v <= 1.0),
            ),
        }
    }
    if let (Some(small), Some(large)) = (find(SMALL), find(LARGE)) {
        // Paired in the interleaved rounds when there are any, as the targets above.
        let (same, how) = match large.wrk_rounds_vs_one_route {
            Some(paired) => (Some(paired), " (interleaved rounds)"),
            None => (ratio(large.requests_per_sec, small.requests_per_sec), ""),
        };
        push(
            format!(
                "gateway: {} routes as fast as 1 (requests/s ratio >= 0.95){how}",
                large.routes
            ),
            x(same),
            same.map(|v| v >= 0.95),
        );
        push(
            format!("gateway: peak RSS with {} routes < 400 MB", large.routes),
            large.peak_rss_mib.map_or("not measured".into(), |mib| {
                format!("{:.0} MB ({mib:.0} MiB)", mib * 1.048_576)
            }),
            large.peak_rss_mib.map(|mib| mib * 1.048_576 < 400.0),
        );
        if capped {
            return out;
        }
        push(
            format!(
                "gateway: process start to first proxied request with {} routes < 1 s",
                large.routes
            ),
            large
                .start_to_first_ms
                .map_or("not measured".into(), |v| format!("{v:.0} ms")),
            large.start_to_first_ms.map(|v| v < 1000.0),
        );
    }
    out
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.3}"))
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// A chance to three decimals, or its power of ten when it is below 0.001.
fn p_value(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(p) if p < 0.001 => format!("<1e{}", p.log10().floor() as i32 + 1),
        Some(p) => format!("{p:.3}"),
    }
}

/// `p = 0.375`, or `p < 1e-3`.
fn p_text(value: Option<f64>) -> String {
    let p = p_value(value);
    match p.strip_prefix('<') {
        Some(bound) => format!("p < {bound}"),
        None => format!("p = {p}"),
    }
}

fn times(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}x"))
}

fn status(row: &Row, runs: usize) -> String {
    if let Some(reason) = &row.skipped {
        return format!("SKIPPED: {reason}");
    }
    let done = row.wrk_runs + row.rate_runs;
    let mut status = match (done, row.failed_runs, row.errors) {
        (0, 0, _) => "not run".to_string(),
        (0, _, _) => format!("FAILED: none of {} runs reported", row.failed_runs),
        (_, 0, 0) => format!("ok ({runs} runs)"),
        (_, 0, e) => format!("{e} ERRORS"),
        (_, f, _) => format!("FAILED {f} runs (medians over the others)"),
    };
    if row.remeasured > 0 {
        let _ = write!(status, "; {} re-measured", row.remeasured);
    }
    if row.disturbed > 0 {
        let _ = write!(status, "; {} DISTURBED", row.disturbed);
    }
    status
}

/// The closed-loop table of one mode.
pub fn wrk_table(rows: &[Row], runs: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>6} {:>6} {:>6} {:>9} {:>8} {:>7}  STATUS",
        "PEER",
        "ROUTES",
        "REQ/S",
        "vs nginx",
        "p50 ms",
        "p99 ms",
        "vs nginx",
        "CPU%",
        "CPU µs",
        "vs nginx",
        "wrk%",
        "bknd%",
        "othr%",
        "START ms",
        "RSS MiB",
        "ERRORS"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<15} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>6} {:>6} {:>6} {:>9} {:>8} {:>7}  {}",
            row.peer,
            row.routes,
            num(row.requests_per_sec, 0),
            times(row.requests_per_sec_vs_nginx),
            ms(row.p50_ms),
            ms(row.p99_ms),
            times(row.p99_vs_nginx),
            num(row.proxy_cpu_percent, 0),
            num(row.cpu_us_per_request, 1),
            times(row.cpu_per_request_vs_nginx),
            num(row.wrk_cpu_percent, 0),
            num(row.backend_cpu_percent, 0),
            num(row.others_percent, 0),
            num(row.start_to_first_ms, 1),
            num(row.peak_rss_mib, 1),
            row.wrk_errors,
            status(row, runs)
        );
    }
    out
}

/// The fixed-rate table of one mode.
pub fn rate_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>6} {:>6} {:>6} {:>6} {:>7}",
        "PEER",
        "ROUTES",
        "RATE",
        "ACHIEVED",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "vs nginx",
        "wait p99",
        "pacer p99",
        "CPU%",
        "gen%",
        "bknd%",
        "othr%",
        "ERRORS"
    );
    for row in rows.iter().filter(|r| r.rate_runs > 0) {
        let _ = writeln!(
            out,
            "{:<15} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>6} {:>6} {:>6} {:>6} {:>7}",
            row.peer,
            row.routes,
            row.rate.map_or("-".into(), |r| r.to_string()),
            num(row.rate_achieved, 0),
            ms(row.rate_p50_ms),
            ms(row.rate_p90_ms),
            ms(row.rate_p99_ms),
            ms(row.rate_p999_ms),
            ms(row.rate_max_ms),
            times(row.rate_p99_vs_nginx),
            ms(row.rate_send_delay_p99_ms),
            ms(row.rate_pacer_late_p99_ms),
            num(row.rate_proxy_cpu_percent, 0),
            num(row.rate_generator_cpu_percent, 0),
            num(row.rate_backend_cpu_percent, 0),
            num(row.rate_others_percent, 0),
            row.rate_errors,
        );
    }
    out
}

/// The interleaved rounds' table of one mode.
pub fn interleaved_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>7} {:>6} {:>7}",
        "PEER",
        "ROUTES",
        "ROUNDS",
        "LEFT OUT",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "vs nginx",
        "lower in",
        "sign p",
        "CPU%",
        "ERRORS"
    );
    for row in rows
        .iter()
        .filter(|r| r.interleaved_rounds + r.interleaved_left_out > 0)
    {
        let _ = writeln!(
            out,
            "{:<15} {:>8} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>7} {:>6} {:>7}",
            row.peer,
            row.routes,
            row.interleaved_rounds,
            row.interleaved_left_out,
            ms(row.interleaved_p50_ms),
            ms(row.interleaved_p99_ms),
            ms(row.interleaved_p999_ms),
            times(row.interleaved_p99_vs_nginx),
            row.interleaved_lower
                .map_or("-".into(), |(lower, of)| format!("{lower}/{of}")),
            p_value(row.interleaved_sign_p),
            num(row.interleaved_proxy_cpu_percent, 0),
            row.interleaved_errors,
        );
    }
    out
}

/// The closed-loop interleaved rounds' table of one mode.
pub fn wrk_rounds_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>7} {:>9} {:>9} {:>8} {:>17} {:>9} {:>7} {:>9} {:>8} {:>7} {:>8} {:>6} {:>7}",
        "PEER",
        "ROUTES",
        "ROUNDS",
        "LEFT OUT",
        "REQ/S",
        "vs nginx",
        "95 % interval",
        "ahead in",
        "sign p",
        ">= 1.1x",
        "p99 ms",
        "CPU µs",
        "vs nginx",
        "thr%",
        "ERRORS"
    );
    for row in rows
        .iter()
        .filter(|r| r.wrk_rounds + r.wrk_rounds_left_out > 0)
    {
        let pair = |v: Option<(usize, usize)>| v.map_or("-".into(), |(k, n)| format!("{k}/{n}"));
        let _ = writeln!(
            out,
            "{:<15} {:>8} {:>7} {:>9} {:>9} {:>8} {:>17} {:>9} {:>7} {:>9} {:>8} {:>7} {:>8} {:>6} {:>7}",
            row.peer,
            row.routes,
            row.wrk_rounds,
            row.wrk_rounds_left_out,
            num(row.wrk_rounds_requests_per_sec, 0),
            num(row.wrk_rounds_requests_per_sec_vs_nginx, 3),
            row.wrk_rounds_vs_nginx_interval
                .map_or("-".into(), |(lo, hi)| format!("{lo:.3} to {hi:.3}")),
            pair(row.wrk_rounds_ahead),
            p_value(row.wrk_rounds_sign_p),
            pair(row.wrk_rounds_at_target),
            ms(row.wrk_rounds_p99_ms),
            num(row.wrk_rounds_cpu_us_per_request, 1),
            times(row.wrk_rounds_cpu_per_request_vs_nginx),
            num(row.wrk_rounds_throttled_percent, 0),
            row.wrk_rounds_errors,
        );
    }
    out
}

/// Requests/s per run with the same-run ratio to nginx.
pub fn per_run(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows
        .iter()
        .filter(|r| !r.per_run_requests_per_sec.is_empty())
    {
        let runs: Vec<String> = row
            .per_run_requests_per_sec
            .iter()
            .map(|(run, rps, vs)| match vs {
                Some(vs) => format!("run {run}: {rps:.0} ({vs:.2}x)"),
                None => format!("run {run}: {rps:.0}"),
            })
            .collect();
        // The paired estimate: each run's peers are measured seconds apart, so a run's
        // ratio is untouched by the machine's drift between runs.
        let ratios: Vec<f64> = row
            .per_run_requests_per_sec
            .iter()
            .filter_map(|(_, _, vs)| *vs)
            .collect();
        let paired = match median(ratios.clone()) {
            Some(m) if ratios.len() > 1 && row.peer != REFERENCE => {
                format!("; median of the ratios {m:.2}x")
            }
            _ => String::new(),
        };
        let _ = writeln!(out, "  {:<15} {}{paired}", row.peer, runs.join(", "));
    }
    out
}

pub fn targets_text(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "  [{verdict:>12}] {}: {} -> {}",
            t.mode, t.target, t.result
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrk_sample(run: usize, peer: &str, rps: f64, p99: f64) -> Sample {
        Sample {
            mode: "one-core".into(),
            run,
            peer: peer.into(),
            routes: 1,
            start_to_first_ms: Some(10.0),
            gateway_start_log_ms: None,
            peak_rss_mib: Some(20.0),
            rss_mib: Some(15.0),
            proxy_cpu_percent: Some(99.0),
            backend_cpu_percent: Some(30.0),
            others_on_proxy_cpu_percent: None,
            throttled_percent: None,
            others_percent: None,
            attempt: 1,
            disturbed: false,
            steal_percent: None,
            load_average: None,
            outcome: Outcome::Wrk(WrkResult {
                requests_per_sec: rps,
                p99_ms: p99,
                ..WrkResult::default()
            }),
        }
    }

    fn rate_sample(run: usize, peer: &str, p99: f64) -> Sample {
        Sample {
            outcome: Outcome::FixedRate(RateResult {
                target_rate: 1000,
                p99_ms: p99,
                ..RateResult::default()
            }),
            ..wrk_sample(run, peer, 0.0, 0.0)
        }
    }

    #[test]
    fn rows_take_medians_and_ratios_to_nginx_of_the_same_mode() {
        let samples = vec![
            wrk_sample(1, "nginx", 100.0, 2.0),
            wrk_sample(2, "nginx", 200.0, 4.0),
            wrk_sample(3, "nginx", 300.0, 6.0),
            wrk_sample(1, "gateway", 220.0, 2.0),
            wrk_sample(2, "gateway", 330.0, 3.0),
            wrk_sample(3, "gateway", 10.0, 9.0),
            rate_sample(1, "nginx", 1.0),
            rate_sample(1, "gateway", 0.5),
            Sample {
                mode: "all-cores".into(),
                ..wrk_sample(1, "nginx", 1.0, 1.0)
            },
        ];
        let peers = vec![("nginx".to_string(), 1), ("gateway".to_string(), 1)];
        let rows = summarise("one-core", &peers, &samples, &[], &[]);
        assert_eq!(rows[0].requests_per_sec, Some(200.0));
        assert_eq!(rows[1].requests_per_sec, Some(220.0));
        assert_eq!(rows[1].requests_per_sec_vs_nginx, Some(1.1));
        assert_eq!(rows[1].p99_vs_nginx, Some(0.75));
        assert_eq!(rows[1].rate_p99_vs_nginx, Some(0.5));
        assert_eq!((rows[1].wrk_runs, rows[1].rate_runs), (3, 1));
        assert_eq!(rows[1].per_run_requests_per_sec[0], (1, 220.0, Some(2.2)));
        // 99 % of a CPU over 200 and 220 req/s (the medians of each run's own figure).
        assert_eq!(rows[0].cpu_us_per_request, Some(4950.0));
        assert_eq!(rows[1].cpu_us_per_request, Some(4500.0));
        let cheaper = rows[1].cpu_per_request_vs_nginx.unwrap();
        assert!((cheaper - 10.0 / 11.0).abs() < 1e-9, "{cheaper}");
        let targets = targets("one-core", &rows, false);
        assert_eq!(targets[0].met, Some(true), "{targets:?}");
        assert_eq!(targets[1].met, Some(true));
        assert_eq!(targets[2].met, Some(true));
        let throughput_only = super::targets("capped", &rows, true);
        assert_eq!(throughput_only.len(), 1, "{throughput_only:?}");
        assert!(throughput_only[0].target.contains("requests/s"));
        let text = wrk_table(&rows, 3);
        assert!(text.contains("1.10x"), "{text}");
        // Per run 2.2x, 1.65x and 0.03x: the paired median is 1.65x, nginx has none.
        let runs = per_run(&rows);
        let lines: Vec<&str> = runs.lines().collect();
        assert!(!lines[0].contains("median"), "{runs}");
        assert!(lines[1].ends_with("; median of the ratios 1.65x"), "{runs}");
        assert!(rate_table(&rows).contains("0.50x"));
    }

    #[test]
    fn large_table_targets_compare_with_the_one_route_gateway() {
        let mut large = wrk_sample(1, "gateway-large", 95.0, 1.0);
        large.routes = 1_000_000;
        large.peak_rss_mib = Some(390.0);
        large.start_to_first_ms = Some(900.0);
        let samples = vec![
            wrk_sample(1, "nginx", 100.0, 1.0),
            wrk_sample(1, "gateway", 100.0, 1.0),
            large,
        ];
        let peers = vec![
            ("nginx".to_string(), 1),
            ("gateway".to_string(), 1),
            ("gateway-large".to_string(), 1_000_000),
        ];
        let rows = summarise("one-core", &peers, &samples, &[], &[]);
        let capped = targets("capped", &rows, true);
        assert!(
            !capped.iter().any(|t| t.target.contains("first proxied")),
            "{capped:?}"
        );
        assert!(capped.iter().any(|t| t.target.contains("as fast as 1")));
        let targets = targets("one-core", &rows, false);
        let get = |needle: &str| targets.iter().find(|t| t.target.contains(needle)).unwrap();
        assert_eq!(get("as fast as 1").met, Some(true));
        // 390 MiB is 409 MB.
        assert_eq!(get("peak RSS").met, Some(false));
        assert_eq!(get("first proxied").met, Some(true));
        assert_eq!(get("fixed rate").met, None);
    }

    #[test]
    fn interleaved_rounds_pair_each_round_with_nginx_and_leave_out_disturbed_ones() {
        let slice = |round: usize, peer: &str, p99: f64, disturbed: bool| Slice {
            mode: "one-core".into(),
            load: "fixed-rate",
            round,
            peer: peer.into(),
            position: 0,
            proxy_cpu_percent: Some(40.0),
            cpu_us_per_request: None,
            throttled_percent: None,
            others_percent: 0.0,
            steal_percent: 0.0,
            disturbed,
            result: SliceResult::FixedRate(RateResult {
                target_rate: 1000,
                p99_ms: p99,
                ..RateResult::default()
            }),
        };
        let mut slices = Vec::new();
        for (round, (nginx, gateway)) in
            [(1.0, 0.5), (2.0, 1.0), (3.0, 6.0), (4.0, 2.0), (5.0, 2.5)]
                .into_iter()
                .enumerate()
        {
            slices.push(slice(round + 1, "nginx", nginx, false));
            slices.push(slice(round + 1, "gateway", gateway, false));
        }
        // A disturbed round counts for nothing but its count, whatever it measured.
        slices.push(slice(6, "nginx", 1.0, true));
        slices.push(slice(6, "gateway", 100.0, true));
        // Another mode's rounds stay out of this one's figures.
        slices.push(Slice {
            mode: "all-cores".into(),
            ..slice(1, "gateway", 100.0, false)
        });
        let peers = vec![("nginx".to_string(), 1), ("gateway".to_string(), 1)];
        let mut rows = summarise("one-core", &peers, &[], &[], &[]);
        summarise_interleaved("one-core", &mut rows, &slices);
        assert_eq!(
            (rows[0].interleaved_rounds, rows[0].interleaved_left_out),
            (5, 1)
        );
        assert_eq!(rows[0].interleaved_p99_ms, Some(3.0));
        assert_eq!(rows[0].interleaved_p99_vs_nginx, None);
        assert_eq!(
            (rows[1].interleaved_rounds, rows[1].interleaved_left_out),
            (5, 1)
        );
        assert_eq!(rows[1].interleaved_p99_ms, Some(2.0));
        // Ratios 0.5, 0.5, 2, 0.5, 0.5; lower in 4 of 5.
        assert_eq!(rows[1].interleaved_p99_vs_nginx, Some(0.5));
        assert_eq!(rows[1].interleaved_lower, Some((4, 5)));
        assert_eq!(rows[1].interleaved_sign_p, Some(0.375));
        let targets = targets("one-core", &rows, false);
        let fixed = targets
            .iter()
            .find(|t| t.target.contains("fixed rate"))
            .unwrap();
        assert!(fixed.target.contains("interleaved"), "{fixed:?}");
        assert!(
            fixed.result.starts_with("0.500x") && fixed.result.contains("lower in 4 of 5"),
            "{fixed:?}"
        );
        assert_eq!(fixed.met, Some(true));
        let table = interleaved_table(&rows);
        assert!(table.contains("4/5") && table.contains("0.375"), "{table}");
    }

    fn wrk_slice(round: usize, peer: &str, rps: f64, cpu_us: f64, disturbed: bool) -> Slice {
        Slice {
            mode: "capped".into(),
            load: "wrk",
            round,
            peer: peer.into(),
            position: 0,
            proxy_cpu_percent: Some(50.0),
            cpu_us_per_request: Some(cpu_us),
            throttled_percent: Some(95.0),
            others_percent: 0.0,
            steal_percent: 0.0,
            disturbed,
            result: SliceResult::Wrk(WrkResult {
                requests: (rps * 2.0) as u64,
                requests_per_sec: rps,
                p99_ms: 1.0,
                ..WrkResult::default()
            }),
        }
    }

    #[test]
    fn closed_loop_rounds_pair_requests_per_sec_and_cpu_with_nginx_in_the_same_round() {
        let mut slices = Vec::new();
        // Per-round ratios 1.2, 1.0, 0.9, 1.3, 1.15, 1.25, 1.1: median 1.15, ahead in 5
        // of the 6 rounds that differed, at 1.1x or more in 5 of 7.
        for (round, (nginx, gateway)) in [
            (100.0, 120.0),
            (100.0, 100.0),
            (200.0, 180.0),
            (100.0, 130.0),
            (100.0, 115.0),
            (80.0, 100.0),
            (100.0, 110.0),
        ]
        .into_iter()
        .enumerate()
        {
            slices.push(wrk_slice(round + 1, "nginx", nginx, 20.0, false));
            slices.push(wrk_slice(round + 1, "gateway", gateway, 16.0, false));
        }
        // Left out: a disturbed round, and the fixed-rate slices of the same mode.
        slices.push(wrk_slice(8, "nginx", 100.0, 20.0, true));
        slices.push(wrk_slice(8, "gateway", 1.0, 16.0, true));
        slices.push(Slice {
            load: "fixed-rate",
            result: SliceResult::FixedRate(RateResult::default()),
            ..wrk_slice(1, "gateway", 0.0, 0.0, false)
        });
        let peers = vec![("nginx".to_string(), 1), ("gateway".to_string(), 1)];
        let mut rows = summarise("capped", &peers, &[], &[], &[]);
        summarise_wrk_rounds("capped", &mut rows, &slices);
        summarise_interleaved("capped", &mut rows, &slices);
        let (nginx, gateway) = (&rows[0], &rows[1]);
        assert_eq!((nginx.wrk_rounds, nginx.wrk_rounds_left_out), (7, 1));
        assert_eq!(nginx.wrk_rounds_requests_per_sec, Some(100.0));
        assert_eq!(nginx.wrk_rounds_requests_per_sec_vs_nginx, None);
        assert_eq!((gateway.wrk_rounds, gateway.wrk_rounds_left_out), (7, 1));
        assert_eq!(gateway.wrk_rounds_requests_per_sec, Some(115.0));
        let vs = gateway.wrk_rounds_requests_per_sec_vs_nginx.unwrap();
        assert!((vs - 1.15).abs() < 1e-9, "{vs}");
        // Seven values: the smallest and largest are the 95 % interval.
        let (lo, hi) = gateway.wrk_rounds_vs_nginx_interval.unwrap();
        assert!(
            (lo - 0.9).abs() < 1e-9 && (hi - 1.3).abs() < 1e-9,
            "{lo} {hi}"
        );
        assert_eq!(gateway.wrk_rounds_ahead, Some((5, 6)));
        assert_eq!(gateway.wrk_rounds_sign_p, sign_test(5, 6));
        assert_eq!(gateway.wrk_rounds_at_target, Some((5, 7)));
        assert_eq!(gateway.wrk_rounds_cpu_per_request_vs_nginx, Some(0.8));
        assert_eq!(gateway.wrk_rounds_cpu_us_per_request, Some(16.0));
        assert_eq!(gateway.wrk_rounds_throttled_percent, Some(95.0));
        // The fixed-rate slice is the fixed-rate figures' alone.
        assert_eq!(gateway.interleaved_rounds, 1);

        let found = targets("capped", &rows, true);
        let rps = found
            .iter()
            .find(|t| t.target.contains("requests/s"))
            .unwrap();
        assert!(rps.target.contains("interleaved"), "{rps:?}");
        assert!(
            rps.result.starts_with("1.150x") && rps.result.contains("ahead in 5 of 6"),
            "{rps:?}"
        );
        assert_eq!(rps.met, Some(true));
        let table = wrk_rounds_table(&rows);
        assert!(
            table.contains("0.900 to 1.300") && table.contains("5/7") && table.contains("0.80x"),
            "{table}"
        );

        // A median under 1.1x misses the target whatever the runs' medians say.
        for slice in slices.iter_mut().filter(|s| s.peer == "gateway") {
            if let SliceResult::Wrk(r) = &mut slice.result {
                r.requests_per_sec *= 0.9;
            }
        }
        summarise_wrk_rounds("capped", &mut rows, &slices);
        let found = targets("capped", &rows, true);
        let rps = found
            .iter()
            .find(|t| t.target.contains("requests/s"))
            .unwrap();
        assert_eq!(rps.met, Some(false), "{rps:?}");
    }

    #[test]
    fn the_large_table_is_paired_with_the_one_route_gateway_in_the_rounds() {
        // The runs' medians say 0.80x; the rounds, where both are measured seconds
        // apart, 1.0x, 0.9x and 1.1x: the paired median, 1.0x, decides.
        let mut large = wrk_sample(1, "gateway-large", 80.0, 1.0);
        large.routes = 1_000_000;
        let samples = vec![
            wrk_sample(1, "nginx", 100.0, 1.0),
            wrk_sample(1, "gateway", 100.0, 1.0),
            large,
        ];
        let mut slices = Vec::new();
        for (round, (small, big)) in [(100.0, 100.0), (200.0, 180.0), (100.0, 110.0)]
            .into_iter()
            .enumerate()
        {
            slices.push(wrk_slice(round + 1, "nginx", 100.0, 20.0, false));
            slices.push(wrk_slice(round + 1, "gateway", small, 16.0, false));
            slices.push(wrk_slice(round + 1, "gateway-large", big, 16.0, false));
        }
        let peers = vec![
            ("nginx".to_string(), 1),
            ("gateway".to_string(), 1),
            ("gateway-large".to_string(), 1_000_000),
        ];
        for slice in &mut slices {
            slice.mode = "one-core".into();
        }
        let mut rows = summarise("one-core", &peers, &samples, &[], &[]);
        let unpaired = targets("one-core", &rows, false);
        let same = |found: &[Target]| {
            found
                .iter()
                .find(|t| t.target.contains("as fast as 1"))
                .cloned()
                .unwrap()
        };
        assert_eq!(same(&unpaired).met, Some(false), "{unpaired:?}");
        summarise_wrk_rounds("one-core", &mut rows, &slices);
        assert_eq!(rows[1].wrk_rounds_vs_one_route, None);
        assert_eq!(rows[2].wrk_rounds_vs_one_route, Some(1.0));
        let paired = same(&targets("one-core", &rows, false));
        assert!(paired.target.contains("interleaved"), "{paired:?}");
        assert_eq!((paired.result.as_str(), paired.met), ("1.00x", Some(true)));
    }

    #[test]
    fn small_chances_are_printed_as_their_power_of_ten() {
        assert_eq!(p_value(Some(0.375)), "0.375");
        assert_eq!(p_value(Some(0.001)), "0.001");
        assert_eq!(p_value(Some(0.000_45)), "<1e-3");
        assert_eq!(p_value(Some(2.0e-9)), "<1e-8");
        assert_eq!(p_value(None), "-");
        assert_eq!(p_text(Some(0.375)), "p = 0.375");
        assert_eq!(p_text(Some(0.000_45)), "p < 1e-3");
    }

    #[test]
    fn the_median_interval_is_the_order_statistics_of_the_binomial() {
        let values = |n: usize| (1..=n).map(|v| v as f64).rev().collect::<Vec<_>>();
        // Below 6 values no pair of order statistics covers the median 95 % of the time.
        assert_eq!(median_interval(&values(5)), None);
        // 6: P(X <= 0) = 1/64 <= 2.5 % < P(X <= 1) = 7/64: the extremes.
        assert_eq!(median_interval(&values(6)), Some((1.0, 6.0)));
        // 20: P(X <= 5) = 2.07 %, P(X <= 6) = 5.77 %: the 6th from either end.
        assert_eq!(median_interval(&values(20)), Some((6.0, 15.0)));
        // 100: the textbook 40th and 61st.
        assert_eq!(median_interval(&values(100)), Some((40.0, 61.0)));
        assert_eq!(median_interval(&values(1001)), None);
    }

    #[test]
    fn the_sign_test_is_the_binomial_tail_on_both_sides() {
        // P(X <= 0) = 1/1024, both sides.
        assert_eq!(sign_test(0, 10), Some(2.0 / 1024.0));
        assert_eq!(sign_test(10, 10), Some(2.0 / 1024.0));
        // P(X <= 2) = (1 + 10 + 45) / 1024.
        assert_eq!(sign_test(2, 10), Some(112.0 / 1024.0));
        assert_eq!(sign_test(8, 10), Some(112.0 / 1024.0));
        assert_eq!(sign_test(5, 10), Some(1.0));
        assert_eq!(sign_test(0, 1), Some(1.0));
        let p = sign_test(20, 1000).unwrap();
        assert!(p > 0.0 && p < 1e-200, "{p}");
        assert_eq!(sign_test(0, 0), None);
        assert_eq!(sign_test(3, 2), None);
        assert_eq!(sign_test(1, 1001), None);
    }
}
