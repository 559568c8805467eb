//! Interleaved rounds: every proxy of a mode up at once, and the load moved from one to
//! the next, in an order that turns by one each round. Two loads: fixed-rate
//! (`--rounds`, a slice of `--slice-ms`), for the p99, and wrk (`--wrk-rounds`, a slice
//! of `--wrk-slice-secs`), for requests/s and CPU per request. On this shared machine a
//! few samples' p99 moves by a factor of several for the same proxy, a proxy's
//! requests/s by a tenth from one start to the next, and the drift over minutes is as
//! large as any difference between proxies. Within a round every proxy is measured
//! seconds from nginx, so each round is one paired comparison, and rounds are cheap
//! enough to take many: the verdict is the median of the per-round ratios, with a sign
//! test.
//!
//! The proxies that are not loaded sleep in their event loops (nginx and the gateway
//! wake about once a second for a timer). A fixed-rate slice opens its own connections
//! and sends `SLICE_WARMUP` of load that is not counted, so a proxy's backend
//! connections and caches are warm when its slice is measured; wrk warms each proxy for
//! --warmup-secs once, before the first round (its later slices find the backend
//! connections kept alive). In the capped modes every proxy is in the one cgroup: only
//! the loaded one uses its quota.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{peers, wrk_threads, Bench, Mode, Peer, Running};
use crate::cmd::bench::gateway_load::{self, RateSettings, WrkSettings};
use crate::cmd::bench::gateway_report::{Slice, SliceResult};

/// The load of a mode's interleaved rounds.
#[derive(Debug, Clone, Copy)]
pub(super) enum RoundLoad {
    /// Fixed-rate, at this many requests/s (`--rounds`, `--slice-ms`).
    FixedRate(u64),
    /// wrk (`--wrk-rounds`, `--wrk-slice-secs`).
    Wrk,
}

impl RoundLoad {
    fn name(self) -> &'static str {
        match self {
            RoundLoad::FixedRate(_) => "fixed-rate",
            RoundLoad::Wrk => "wrk",
        }
    }
}

/// Load sent at the start of each slice and not counted.
const SLICE_WARMUP: Duration = Duration::from_millis(200);

impl Bench<'_> {
    /// Runs --rounds (fixed-rate) or --wrk-rounds (wrk) undisturbed rounds of the
    /// `chosen` peers (but `direct`) in `mode`, making up a disturbed round with another,
    /// up to twice as many rounds in all. Returns every slice measured, disturbed ones
    /// marked, and the error that stopped the rounds, if one did.
    pub(super) fn interleave(
        &mut self,
        mode: Mode,
        load: RoundLoad,
        chosen: &[Peer],
    ) -> (Vec<Slice>, Option<String>) {
        let mut slices = Vec::new();
        let stopped = self
            .try_interleave(mode, load, chosen, &mut slices)
            .err()
            .map(|err| {
                format!(
                    "the interleaved {} rounds in {} mode stopped: {err:#}",
                    load.name(),
                    mode.name()
                )
            });
        (slices, stopped)
    }

    fn try_interleave(
        &mut self,
        mode: Mode,
        load: RoundLoad,
        chosen: &[Peer],
        slices: &mut Vec<Slice>,
    ) -> anyhow::Result<()> {
        self.backend.check_running().context("the backend")?;
        let mut running: Vec<(Peer, Running)> = Vec::new();
        for &peer in chosen.iter().filter(|p| **p != Peer::Direct) {
            let started = self
                .start(mode, peer)
                .with_context(|| format!("starting {}", peer.name()))?;
            running.push((peer, started));
        }
        let wanted = match load {
            RoundLoad::FixedRate(_) => self.args.rounds,
            RoundLoad::Wrk => self.args.wrk_rounds,
        } as usize;
        if matches!(load, RoundLoad::Wrk) && self.args.warmup_secs > 0 {
            for (peer, target) in &running {
                let settings = self.wrk_settings(mode, target, self.args.warmup_secs)?;
                gateway_load::wrk(&settings)
                    .with_context(|| format!("warming up {} with wrk", peer.name()))?;
            }
        }
        let (mut kept, mut round) = (0, 0);
        while kept < wanted && round < 2 * wanted {
            round += 1;
            peers::check_interrupted()?;
            self.wait_for_quiet()?;
            let first = slices.len();
            for position in 0..running.len() {
                let which = (position + round - 1) % running.len();
                let slice = self.slice(mode, load, round, position, which, &running)?;
                slices.push(slice);
            }
            let limits = (self.args.max_others_percent, self.args.max_steal_percent);
            let these = &mut slices[first..];
            let disturbed = these
                .iter()
                .any(|s| s.others_percent > limits.0 || s.steal_percent > limits.1);
            let mut line = format!(
                "bench: {} interleaved {} round {round} ({kept} of {wanted} kept so far):",
                mode.name(),
                load.name()
            );
            for slice in these.iter_mut() {
                slice.disturbed = disturbed;
                let _ = match &slice.result {
                    SliceResult::FixedRate(r) => {
                        write!(line, " {} p99 {:.3} ms;", slice.peer, r.p99_ms)
                    }
                    SliceResult::Wrk(r) => write!(
                        line,
                        " {} {:.0} req/s, {} µs/req;",
                        slice.peer,
                        r.requests_per_sec,
                        slice
                            .cpu_us_per_request
                            .map_or("-".into(), |us| format!("{us:.1}"))
                    ),
                };
            }
            if disturbed {
                line.push_str(" DISTURBED (others or steal over the limits), left out");
            } else {
                kept += 1;
            }
            eprintln!("{line}");
        }
        for (peer, mut started) in running {
            if let Some(mut process) = started.process.take() {
                process
                    .check_running()
                    .with_context(|| format!("{} died under load", peer.name()))?;
                process.stop();
            }
        }
        if kept < wanted {
            // As a sample disturbed in its every attempt is kept and marked, this is
            // told (the table shows the rounds kept and left out), not a failure.
            eprintln!(
                "bench: {} interleaved {}: only {kept} of {wanted} rounds were undisturbed in {round}; the figures are from those",
                mode.name(),
                load.name()
            );
        }
        Ok(())
    }

    /// wrk's settings for `target` in `mode`, for `secs`.
    fn wrk_settings<'s>(
        &'s self,
        mode: Mode,
        target: &Running,
        secs: u64,
    ) -> anyhow::Result<WrkSettings<'s>> {
        let wrk = self.wrk.as_ref().context("wrk is not installed")?;
        Ok(WrkSettings {
            wrk: &wrk.path,
            addr: target.addr,
            threads: wrk_threads(mode, &self.layout),
            connections: self.args.connections as usize,
            duration: Duration::from_secs(secs),
            tls: self.tls.is_some(),
            close: self.args.new_connections,
            streams: self.streams(),
            upload: self.upload.as_deref(),
            cpus: mode.one_worker().then_some(self.layout.load.as_slice()),
        })
    }

    /// The load on `running[which]` for one slice; every running proxy's CPU counts as
    /// the benchmark's own, not as others'.
    fn slice(
        &self,
        mode: Mode,
        load: RoundLoad,
        round: usize,
        position: usize,
        which: usize,
        running: &[(Peer, Running)],
    ) -> anyhow::Result<Slice> {
        let (peer, target) = &running[which];
        let proxy_secs = || -> Vec<f64> {
            running
                .iter()
                .map(|(_, r)| r.process.as_ref().map_or(0.0, |p| p.usage().cpu_secs))
                .collect()
        };
        let (cpus, backend) = (peers::cpu_times(), self.backend.usage().cpu_secs);
        let throttling = self.cap.as_ref().map(|cap| cap.throttling());
        let (own, proxies, at) = (
            gateway_load::process_cpu_secs(),
            proxy_secs(),
            Instant::now(),
        );
        let (result, load_secs) = match load {
            RoundLoad::FixedRate(rate) => {
                let result = gateway_load::fixed_rate(&RateSettings {
                    addr: target.addr,
                    rate,
                    connections: self.args.connections as usize,
                    warmup: SLICE_WARMUP,
                    duration: Duration::from_millis(self.args.slice_ms),
                    cpus: mode.one_worker().then(|| self.layout.load.clone()),
                })
                .with_context(|| format!("loading {}", peer.name()))?;
                (SliceResult::FixedRate(result), 0.0)
            }
            RoundLoad::Wrk => {
                let settings = self.wrk_settings(mode, target, self.args.wrk_slice_secs)?;
                let result = gateway_load::wrk(&settings)
                    .with_context(|| format!("loading {} with wrk", peer.name()))?;
                // wrk is a child of its own, not counted in this process's CPU time.
                let secs = result.wrk_cpu_percent / 100.0 * at.elapsed().as_secs_f64();
                (SliceResult::Wrk(result), secs)
            }
        };
        let wall = at.elapsed().as_secs_f64();
        let after = peers::cpu_times();
        let proxies: Vec<f64> = proxy_secs()
            .iter()
            .zip(&proxies)
            .map(|(now, then)| now - then)
            .collect();
        let ours = (self.backend.usage().cpu_secs - backend)
            + (gateway_load::process_cpu_secs() - own)
            + load_secs
            + proxies.iter().sum::<f64>();
        let busy = self.busy_secs(&cpus, &after);
        let cpu_us_per_request = match &result {
            SliceResult::Wrk(r) if r.requests > 0 && target.process.is_some() => {
                Some(proxies[which] * 1e6 / r.requests as f64)
            }
            _ => None,
        };
        let throttled_percent = match (&self.cap, throttling) {
            (Some(cap), Some(then)) if mode.capped() => cap.throttling().percent_since(then),
            _ => None,
        };
        Ok(Slice {
            mode: mode.name().into(),
            load: load.name(),
            round,
            peer: peer.name().into(),
            position,
            proxy_cpu_percent: target
                .process
                .as_ref()
                .map(|_| 100.0 * proxies[which] / wall),
            cpu_us_per_request,
            throttled_percent,
            others_percent: (100.0 * (busy - ours) / wall).max(0.0),
            steal_percent: self.steal_percent(&cpus, &after),
            disturbed: false,
            result,
        })
    }
}
