//! Interleaved fixed-rate rounds (`--rounds`): every proxy of a mode up at once, and the
//! fixed-rate load moved from one to the next every `--slice-ms`, in an order that
//! turns by one each round. On this shared machine a few samples' p99 moves by a factor
//! of several for the same proxy, and the drift over minutes is as large as any
//! difference between proxies. Within a round every proxy is measured seconds from
//! nginx, so each round is one paired comparison, and rounds are cheap enough to take
//! many: the verdict is the median of the per-round ratios, with a sign test.
//!
//! The proxies that are not loaded sleep in their event loops (nginx and the gateway
//! wake about once a second for a timer). Each slice opens its own connections and
//! sends `SLICE_WARMUP` of load that is not counted, so a proxy's backend connections
//! and caches are warm when its slice is measured.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{peers, Bench, Mode, Peer, Running};
use crate::cmd::bench::gateway_load::{self, RateSettings};
use crate::cmd::bench::gateway_report::Slice;

/// Load sent at the start of each slice and not counted.
const SLICE_WARMUP: Duration = Duration::from_millis(200);

impl Bench<'_> {
    /// Runs --rounds undisturbed rounds of the `chosen` peers (but `direct`) at `rate` in `mode`,
    /// making up a disturbed round with another, up to twice as many rounds in all.
    /// Returns every slice measured, disturbed ones marked, and the error that stopped
    /// the rounds, if one did.
    pub(super) fn interleave(
        &mut self,
        mode: Mode,
        rate: u64,
        chosen: &[Peer],
    ) -> (Vec<Slice>, Option<String>) {
        let mut slices = Vec::new();
        let stopped = self
            .try_interleave(mode, rate, chosen, &mut slices)
            .err()
            .map(|err| {
                format!(
                    "the interleaved rounds in {} mode stopped: {err:#}",
                    mode.name()
                )
            });
        (slices, stopped)
    }

    fn try_interleave(
        &mut self,
        mode: Mode,
        rate: u64,
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
        let wanted = self.args.rounds as usize;
        let (mut kept, mut round) = (0, 0);
        while kept < wanted && round < 2 * wanted {
            round += 1;
            peers::check_interrupted()?;
            self.wait_for_quiet()?;
            let first = slices.len();
            for position in 0..running.len() {
                let which = (position + round - 1) % running.len();
                let slice = self.slice(mode, round, position, which, &running, rate)?;
                slices.push(slice);
            }
            let limits = (self.args.max_others_percent, self.args.max_steal_percent);
            let these = &mut slices[first..];
            let disturbed = these
                .iter()
                .any(|s| s.others_percent > limits.0 || s.steal_percent > limits.1);
            let mut line = format!(
                "bench: {} interleaved round {round} ({kept} of {wanted} kept so far):",
                mode.name()
            );
            for slice in these.iter_mut() {
                slice.disturbed = disturbed;
                let _ = write!(line, " {} p99 {:.3} ms;", slice.peer, slice.result.p99_ms);
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
                "bench: {} interleaved: only {kept} of {wanted} rounds were undisturbed in {round}; the figures are from those",
                mode.name()
            );
        }
        Ok(())
    }

    /// The load on `running[which]` for one slice; every running proxy's CPU counts as
    /// the benchmark's own, not as others'.
    fn slice(
        &self,
        mode: Mode,
        round: usize,
        position: usize,
        which: usize,
        running: &[(Peer, Running)],
        rate: u64,
    ) -> anyhow::Result<Slice> {
        let (peer, target) = &running[which];
        let proxy_secs = || -> Vec<f64> {
            running
                .iter()
                .map(|(_, r)| r.process.as_ref().map_or(0.0, |p| p.usage().cpu_secs))
                .collect()
        };
        let (cpus, backend) = (peers::cpu_times(), self.backend.usage().cpu_secs);
        let (own, proxies, at) = (
            gateway_load::process_cpu_secs(),
            proxy_secs(),
            Instant::now(),
        );
        let result = gateway_load::fixed_rate(&RateSettings {
            addr: target.addr,
            rate,
            connections: self.args.connections as usize,
            warmup: SLICE_WARMUP,
            duration: Duration::from_millis(self.args.slice_ms),
            cpus: mode.one_worker().then(|| self.layout.load.clone()),
        })
        .with_context(|| format!("loading {}", peer.name()))?;
        let wall = at.elapsed().as_secs_f64();
        let after = peers::cpu_times();
        let proxies: Vec<f64> = proxy_secs()
            .iter()
            .zip(&proxies)
            .map(|(now, then)| now - then)
            .collect();
        let ours = (self.backend.usage().cpu_secs - backend)
            + (gateway_load::process_cpu_secs() - own)
            + proxies.iter().sum::<f64>();
        let busy = self.busy_secs(&cpus, &after);
        Ok(Slice {
            mode: mode.name().into(),
            round,
            peer: peer.name().into(),
            position,
            proxy_cpu_percent: target
                .process
                .as_ref()
                .map(|_| 100.0 * proxies[which] / wall),
            others_percent: (100.0 * (busy - ours) / wall).max(0.0),
            steal_percent: self.steal_percent(&cpus, &after),
            disturbed: false,
            result,
        })
    }
}
