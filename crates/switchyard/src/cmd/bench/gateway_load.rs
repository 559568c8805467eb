//! The load `bench gateway` puts on a proxy: `wrk` (closed loop: every connection sends
//! its next request when the last one is answered; `h2load` in its place for HTTP/2)
//! and a fixed-rate generator (open loop) written here on hyper and tokio.
//!
//! Why our own fixed-rate generator: wrk2 is not packaged by Debian, and `oha` would
//! have to be built from crates.io. A closed-loop tool measures latency only while the
//! proxy is saturated, and when the proxy stalls it stops sending, so the stall shows
//! in few samples (coordinated omission). Here requests are *scheduled* at a fixed
//! rate by a pacing thread (a `nanosleep` with 1 µs timer slack, not tokio's
//! millisecond timer wheel), queued, and sent by whichever of the connections is free;
//! a request's latency runs from its scheduled time to the end of its response, so
//! time spent waiting for a free connection behind a slow answer counts, as wrk2 does.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::gateway_peers::{self, HOST};

// ---------------------------------------------------------------------------------------
// wrk.

/// What `wrk` is asked to do (or `h2load`, with `streams`).
pub struct WrkSettings<'a> {
    /// wrk, or h2load with `streams`.
    pub wrk: &'a Path,
    pub addr: SocketAddr,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    /// The proxy speaks TLS (wrk then does too, and does not check its certificate).
    pub tls: bool,
    /// Every request asks for `Connection: close`, so wrk connects anew for each.
    pub close: bool,
    /// HTTP/2, with this many requests in flight on each connection: the program is
    /// h2load (`-m`), which speaks it with prior knowledge in clear text, or by ALPN
    /// over TLS.
    pub streams: Option<usize>,
    /// With `streams`: each request is a POST of this file's bytes (h2load's -d).
    pub upload: Option<&'a Path>,
    pub cpus: Option<&'a [usize]>,
}

/// One `wrk --latency` run, as it reported it (or an h2load run, as its log of every
/// request gives it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub latency_mean_ms: f64,
    pub latency_max_ms: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// wrk's own CPU time over the wall time of its run, in % of one CPU.
    pub wrk_cpu_percent: f64,
}

impl WrkResult {
    pub fn errors(&self) -> u64 {
        self.socket_errors + self.non_2xx
    }
}

/// Runs wrk against `http://addr/` (`https://` with `tls`) with `Host:
/// bench.example.test` (and `Connection: close` with `close`); bounded by its duration
/// plus 30 s, after which it is killed. With `streams`, h2load instead.
pub fn wrk(settings: &WrkSettings<'_>) -> anyhow::Result<WrkResult> {
    let secs = settings.duration.as_secs().max(1);
    let mut command = Command::new(settings.wrk);
    // h2load's log of every request: the latency distribution it does not print.
    let log = match settings.streams {
        Some(streams) => {
            let log = tempfile::NamedTempFile::new().context("a file for h2load's log")?;
            command
                .arg(format!("-t{}", settings.threads))
                .arg(format!("-c{}", settings.connections))
                .arg(format!("-m{streams}"))
                .arg(format!("-D{secs}"))
                .arg(format!("--log-file={}", log.path().display()))
                .arg("-H")
                .arg(format!(":authority: {HOST}"));
            if let Some(upload) = settings.upload {
                command.arg(format!("--data={}", upload.display()));
            }
            Some(log)
        }
        None => {
            command
                .arg(format!("-t{}", settings.threads))
                .arg(format!("-c{}", settings.connections))
                .arg(format!("-d{secs}s"))
                .args(["--latency", "--timeout", "5s", "-H"])
                .arg(format!("Host: {HOST}"));
            if settings.close {
                command.args(["-H", "Connection: close"]);
            }
            None
        }
    };
    command
        .arg(format!(
            "{}://{}/",
            if settings.tls { "https" } else { "http" },
            settings.addr
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cpus) = settings.cpus {
        gateway_peers::pin_command(&mut command, cpus);
    }
    let started = Instant::now();
    let mut child = zkserver::spawn_bound(command)
        .with_context(|| format!("starting {}", settings.wrk.display()))?;
    let pid = child.id() as libc::pid_t;
    let deadline = started + Duration::from_secs(secs + 30);
    // Reaped with wait4 for its resource usage; `child` is never waited on.
    let (status, rusage) = loop {
        // SAFETY: wait4 writes only into the two locals.
        let mut status = 0;
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
        if reaped == pid {
            break (status, rusage);
        }
        if reaped < 0 {
            bail!("waiting for wrk: {}", std::io::Error::last_os_error());
        }
        if gateway_peers::interrupted() || Instant::now() >= deadline {
            // SAFETY: killpg and a blocking wait4 on our own child.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, std::ptr::null_mut());
            }
            gateway_peers::check_interrupted()?;
            bail!("wrk did not finish within {} s; killed", secs + 30);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed().as_secs_f64();
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "wrk failed (wait status {status}): {}{}",
            stderr.trim(),
            stdout.trim()
        );
    }
    let mut result = match &log {
        None => parse_wrk(&stdout).with_context(|| format!("reading wrk's output:\n{stdout}"))?,
        Some(log) => {
            let requests = std::fs::read_to_string(log.path()).context("reading h2load's log")?;
            parse_h2load(&stdout, &requests)
                .with_context(|| format!("reading h2load's output:\n{stdout}"))?
        }
    };
    let cpu = timeval_secs(rusage.ru_utime) + timeval_secs(rusage.ru_stime);
    result.wrk_cpu_percent = 100.0 * cpu / wall;
    Ok(result)
}

fn timeval_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Reads wrk 4's report (`--latency`).
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult::default();
    let (mut rate, mut requests, mut p50, mut p99) = (false, false, false, false);
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        match tokens.as_slice() {
            ["Latency", mean, _stdev, max, _] => {
                result.latency_mean_ms = duration_ms(mean)?;
                result.latency_max_ms = duration_ms(max)?;
            }
            [percent, value] if percent.ends_with('%') => {
                let value = duration_ms(value)?;
                match *percent {
                    "50%" => {
                        result.p50_ms = value;
                        p50 = true;
                    }
                    "75%" => result.p75_ms = value,
                    "90%" => result.p90_ms = value,
                    "99%" => {
                        result.p99_ms = value;
                        p99 = true;
                    }
                    _ => {}
                }
            }
            [count, "requests", "in", ..] => {
                result.requests = count.parse().context("the request count")?;
                requests = true;
            }
            ["Socket", "errors:", rest @ ..] => {
                result.socket_errors = rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                result.non_2xx = count.parse().context("the non-2xx count")?;
            }
            ["Requests/sec:", value] => {
                result.requests_per_sec = value.parse().context("requests/sec")?;
                rate = true;
            }
            _ => {}
        }
    }
    if !(rate && requests && p50 && p99) {
        bail!("no Requests/sec, request count or latency distribution");
    }
    Ok(result)
}

/// Reads h2load's report and its log of every request (`--log-file`: the start in µs
/// since the epoch, the status, the µs until the end of the response, tab-separated).
pub fn parse_h2load(report: &str, log: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult::default();
    let (mut rate, mut counts) = (false, false);
    let number = |token: &str, what: &str| -> anyhow::Result<u64> {
        token
            .trim_end_matches(',')
            .parse()
            .with_context(|| format!("{what}: {token:?}"))
    };
    for line in report.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        match tokens.as_slice() {
            ["finished", "in", _, per_sec, "req/s," | "req/s", ..] => {
                result.requests_per_sec = per_sec
                    .parse()
                    .with_context(|| format!("requests/s: {per_sec:?}"))?;
                rate = true;
            }
            ["requests:", total, "total,", _, "started,", _, "done,", _, "succeeded,", failed, "failed,", errored, "errored,", timeout, "timeout"] =>
            {
                result.requests = number(total, "the request count")?;
                // A failed request is one answered with a 4xx or 5xx, counted below.
                let _ = number(failed, "failed requests")?;
                result.socket_errors =
                    number(errored, "errored requests")? + number(timeout, "timed out requests")?;
                counts = true;
            }
            ["status", "codes:", _, "2xx,", _, "3xx,", c4, "4xx,", c5, "5xx"] => {
                result.non_2xx = number(c4, "4xx")? + number(c5, "5xx")?;
            }
            _ => {}
        }
    }
    if !(rate && counts) {
        bail!("no req/s or request counts");
    }
    let mut micros: Vec<u64> = Vec::new();
    for line in log.lines() {
        let duration = line
            .split('\t')
            .nth(2)
            .and_then(|field| field.trim().parse().ok())
            .with_context(|| format!("a line of h2load's log: {line:?}"))?;
        micros.push(duration);
    }
    anyhow::ensure!(!micros.is_empty(), "h2load's log has no request");
    micros.sort_unstable();
    let ms = |p: f64| percentile(&micros, p) as f64 / 1000.0;
    result.p50_ms = ms(50.0);
    result.p75_ms = ms(75.0);
    result.p90_ms = ms(90.0);
    result.p99_ms = ms(99.0);
    result.latency_max_ms = micros[micros.len() - 1] as f64 / 1000.0;
    result.latency_mean_ms = micros.iter().sum::<u64>() as f64 / micros.len() as f64 / 1000.0;
    Ok(result)
}

/// `345.12us`, `1.20ms`, `2.00s`, `1.00m` (wrk's units) in milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let units = [
        ("us", 0.001),
        ("ms", 1.0),
        ("s", 1000.0),
        ("m", 60_000.0),
        ("h", 3_600_000.0),
    ];
    for (unit, ms) in units {
        if let Some(number) = text.strip_suffix(unit) {
            let value: f64 = number
                .parse()
                .with_context(|| format!("a duration: {text:?}"))?;
            return Ok(value * ms);
        }
    }
    bail!("a duration without a unit: {text:?}")
}

// ---------------------------------------------------------------------------------------
// The fixed-rate generator.

/// What the fixed-rate generator is asked to do.
#[derive(Debug, Clone)]
pub struct RateSettings {
    pub addr: SocketAddr,
    /// Requests per second, all connections together.
    pub rate: u64,
    pub connections: usize,
    /// Sent at the rate but not counted.
    pub warmup: Duration,
    pub duration: Duration,
    /// The CPUs of the generator's threads.
    pub cpus: Option<Vec<usize>>,
}

/// One fixed-rate run: the requests scheduled in the measured window and their latency
/// from their scheduled time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RateResult {
    pub target_rate: u64,
    /// 200 answers to measured requests per second of the measured window.
    pub achieved_rate: f64,
    /// Requests scheduled in the measured window.
    pub scheduled: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Of those: another status, a connection error, no answer within 5 s, or not even
    /// sent before the run's deadline.
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// How late requests left, at the 99th percentile: waiting for a free connection
    /// (behind a slow answer) and the generator's own delays; part of the latency.
    pub send_delay_p99_ms: f64,
    /// How late the pacing thread scheduled requests, at the 99th percentile: the
    /// generator's own health (its thread not getting the CPU in time).
    pub pacer_late_p99_ms: f64,
    /// CPU time of the generator's process over the run, in % of one CPU.
    pub generator_cpu_percent: f64,
}

/// No answer within this long is an error (as wrk's `--timeout 5s`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Samples {
    latencies_us: Vec<u64>,
    send_delays_us: Vec<u64>,
    ok: u64,
    errors: u64,
}

/// Runs the generator on a thread of its own (pinned to `cpus`) and waits for it.
pub fn fixed_rate(settings: &RateSettings) -> anyhow::Result<RateResult> {
    anyhow::ensure!(settings.rate > 0, "the rate must be at least 1 request/s");
    anyhow::ensure!(settings.connections > 0, "at least one connection");
    let settings = settings.clone();
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    let thread = std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || -> anyhow::Result<RateResult> {
            if let Some(cpus) = &settings.cpus {
                gateway_peers::pin_this_thread(cpus).context("pinning the load generator")?;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the load generator's runtime")?;
            runtime.block_on(drive(&settings))
        })
        .context("starting the load generator thread")?;
    let mut result = thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    let wall = started.elapsed().as_secs_f64();
    result.generator_cpu_percent = 100.0 * (process_cpu_secs() - cpu_before) / wall;
    Ok(result)
}

async fn drive(settings: &RateSettings) -> anyhow::Result<RateResult> {
    let mut senders = Vec::with_capacity(settings.connections);
    for _ in 0..settings.connections {
        senders.push(
            connect(settings.addr)
                .await
                .with_context(|| format!("connecting to {}", settings.addr))?,
        );
    }
    let (queue, incoming) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let incoming = Arc::new(tokio::sync::Mutex::new(incoming));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + settings.warmup;
    let end = measure_from + settings.duration;

    let mut tasks = Vec::new();
    for sender in senders {
        tasks.push(tokio::spawn(connection(
            settings.addr,
            sender,
            Arc::clone(&incoming),
            measure_from,
            Arc::clone(&samples),
        )));
    }
    let pacer = {
        let (rate, cpus) = (settings.rate, settings.cpus.clone());
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || pace(queue, rate, start, measure_from, end, cpus))
            .context("starting the pacing thread")?
    };
    // Whatever is still queued or in flight this long after the last scheduled send is
    // an error: the run is bounded.
    let limit =
        (end + REQUEST_TIMEOUT + Duration::from_secs(5)).saturating_duration_since(Instant::now());
    let all = futures::future::join_all(tasks);
    let finished = tokio::time::timeout(limit, all).await.is_ok();
    let (scheduled, mut pacer_late_us) = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .context("joining the pacing thread")?
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    if !finished {
        tracing::warn!("requests were still queued or in flight at the end of a fixed-rate run");
    }
    pacer_late_us.sort_unstable();
    samples.latencies_us.sort_unstable();
    samples.send_delays_us.sort_unstable();
    let ms = |values: &[u64], p: f64| percentile(values, p) as f64 / 1000.0;
    Ok(RateResult {
        target_rate: settings.rate,
        achieved_rate: samples.ok as f64 / settings.duration.as_secs_f64(),
        scheduled,
        ok: samples.ok,
        // Every scheduled request not answered 200 in time: another status, a failure,
        // or still queued or in flight at the deadline.
        errors: scheduled.saturating_sub(samples.ok),
        p50_ms: ms(&samples.latencies_us, 50.0),
        p90_ms: ms(&samples.latencies_us, 90.0),
        p99_ms: ms(&samples.latencies_us, 99.0),
        p999_ms: ms(&samples.latencies_us, 99.9),
        max_ms: samples.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        send_delay_p99_ms: ms(&samples.send_delays_us, 99.0),
        pacer_late_p99_ms: ms(&pacer_late_us, 99.0),
        generator_cpu_percent: 0.0,
    })
}

/// Puts the scheduled time of every request on the queue, at that time; returns how
/// many fell in the measured window, and how late each of those was queued (µs).
fn pace(
    queue: tokio::sync::mpsc::UnboundedSender<Instant>,
    rate: u64,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    cpus: Option<Vec<usize>>,
) -> anyhow::Result<(u64, Vec<u64>)> {
    if let Some(cpus) = &cpus {
        gateway_peers::pin_this_thread(cpus).context("pinning the pacing thread")?;
    }
    let mut late_us = Vec::new();
    // SAFETY: prctl(PR_SET_TIMERSLACK) affects only this thread's sleeps: 1 ns instead
    // of the default 50 µs of slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut measured = 0u64;
    for k in 0u64.. {
        let offset_ns = u128::from(k) * 1_000_000_000 / u128::from(rate);
        let at = start + Duration::from_nanos(offset_ns as u64);
        if at >= end || gateway_peers::interrupted() {
            break;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if queue.send(at).is_err() {
            break;
        }
        if at >= measure_from {
            measured += 1;
            late_us.push(Instant::now().saturating_duration_since(at).as_micros() as u64);
        }
    }
    Ok((measured, late_us))
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One connection: takes the next scheduled request off the queue, sends it, records
/// its latency; reconnects after an error.
async fn connection(
    addr: SocketAddr,
    sender: Sender,
    queue: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>,
    measure_from: Instant,
    samples: Arc<Mutex<Samples>>,
) {
    let mut sender = Some(sender);
    loop {
        let scheduled = {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(at) => at,
                None => return,
            }
        };
        let sent = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, addr)).await;
        let done = Instant::now();
        let ok = matches!(outcome, Ok(Ok(200)));
        if !matches!(outcome, Ok(Ok(_))) {
            // A failed or timed-out exchange leaves the connection unusable.
            sender = None;
        }
        if scheduled < measure_from {
            continue;
        }
        let mut samples = samples.lock().unwrap_or_else(PoisonError::into_inner);
        if ok {
            samples.ok += 1;
            samples
                .latencies_us
                .push(done.duration_since(scheduled).as_micros() as u64);
            samples
                .send_delays_us
                .push(sent.saturating_duration_since(scheduled).as_micros() as u64);
        } else {
            samples.errors += 1;
        }
    }
}

async fn exchange(sender: &mut Option<Sender>, addr: SocketAddr) -> anyhow::Result<u16> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect(addr).await?);
    }
    let sender = sender.as_mut().expect("connected above");
    sender.ready().await?;
    let request = http::Request::builder()
        .uri("/")
        .header(http::header::HOST, HOST)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// The nearest-rank percentile of sorted `values` (0 when empty).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Less a hair, so that 99.9 % of 1000 is rank 999 despite floating point.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// User and system CPU time of this process so far.
pub fn process_cpu_secs() -> f64 {
    // SAFETY: getrusage writes only into the local.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   345.12us  100.23us   5.00ms   90.00%
    Req/Sec    90.00k     5.00k   100.00k    70.00%
  Latency Distribution
     50%  320.00us
     75%  380.00us
     90%  450.00us
     99%    1.25ms
  900123 requests in 10.00s, 100.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 10
Requests/sec:  90012.30
Transfer/sec:     10.00MB
";

    #[test]
    fn wrk_output_is_read_with_its_units() {
        let r = parse_wrk(WRK_OUTPUT).unwrap();
        assert_eq!(r.requests, 900_123);
        assert_eq!(r.requests_per_sec, 90_012.3);
        assert!((r.latency_mean_ms - 0.34512).abs() < 1e-9);
        assert_eq!(r.latency_max_ms, 5.0);
        assert!((r.p50_ms - 0.32).abs() < 1e-9);
        assert_eq!(r.p99_ms, 1.25);
        assert_eq!((r.socket_errors, r.non_2xx, r.errors()), (3, 10, 13));
    }

    /// h2load 1.52's report, as it prints it.
    const H2LOAD_OUTPUT: &str = "starting benchmark...
spawning thread #0: 32 total client(s). Timing-based test with 0s of warm-up time and 4s of main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
progress: 10% of clients started
finished in 4.00s, 41920.00 req/s, 2.03MB/s
requests: 167680 total, 167712 started, 167680 done, 167670 succeeded, 10 failed, 4 errored, 1 timeout
status codes: 167670 2xx, 0 3xx, 7 4xx, 3 5xx
traffic: 8.15MB (8548139) total, 1.47MB (1541120) headers (space savings 90.90%), 3.84MB (4024320) data
                     min         max         mean         sd        +/- sd
time for request:       91us      3.69ms       223us        84us    92.10%
";

    #[test]
    fn an_h2load_report_and_log_are_read() {
        let log: String = (1..=100)
            .map(|i| format!("1795720641334913\t200\t{}\n", i * 10))
            .collect();
        let r = parse_h2load(H2LOAD_OUTPUT, &log).unwrap();
        assert_eq!(r.requests, 167_680);
        assert_eq!(r.requests_per_sec, 41_920.0);
        assert_eq!((r.socket_errors, r.non_2xx, r.errors()), (5, 10, 15));
        // From the log: 10 µs to 1 ms, nearest rank.
        assert_eq!((r.p50_ms, r.p99_ms, r.latency_max_ms), (0.5, 0.99, 1.0));
        assert!((r.latency_mean_ms - 0.505).abs() < 1e-9);

        assert!(parse_h2load(H2LOAD_OUTPUT, "").is_err(), "an empty log");
        assert!(
            parse_h2load(H2LOAD_OUTPUT, "1\t200\n").is_err(),
            "a short line"
        );
        assert!(parse_h2load("status codes: 1 2xx, 0 3xx, 0 4xx, 0 5xx\n", &log).is_err());
    }

    #[test]
    fn a_wrk_report_without_a_distribution_is_refused() {
        assert!(parse_wrk("Requests/sec: 10.0\n").is_err());
        assert!(duration_ms("12").is_err());
        assert_eq!(duration_ms("2.00s").unwrap(), 2000.0);
        assert_eq!(duration_ms("1.50m").unwrap(), 90_000.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 50.0), 500);
        assert_eq!(percentile(&values, 99.0), 990);
        assert_eq!(percentile(&values, 99.9), 999);
        assert_eq!(percentile(&values, 100.0), 1000);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
