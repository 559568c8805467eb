//! `switchyard wait-ready URL...`: polls each URL's `/readyz` until every one answers
//! 200 or the time is up, for systemd's `ExecStartPre` and for scripts (post-mortem
//! lesson 2: nothing restarts on a control plane that is not ready).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use orchestrator::config::parse_duration;
use serde_json::json;

use super::operator::{self, BAD, UNREACHABLE};

const EXIT_STATUS: &str = "\
Exit status:
  0  every URL answered 200
  1  some URL answered, but not 200 (not ready); its reason is printed
  2  usage error
  3  some URL never answered (connection refused or no answer in time), and none
     answered \"not ready\"

Examples:
  switchyard wait-ready http://127.0.0.1:7000 http://127.0.0.1:9080 --timeout 2m
  ExecStartPre=/usr/bin/switchyard wait-ready http://10.0.0.5:7000";

/// Longest wait for one answer, so that a hung peer is polled again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
#[command(after_long_help = EXIT_STATUS)]
pub struct Args {
    /// URLs to poll. A URL without a path (`http://127.0.0.1:7000`, or just
    /// `127.0.0.1:7000`) is polled at `/readyz`; a URL with a path is polled as given.
    #[arg(required = true, value_name = "URL", value_parser = readyz_url)]
    urls: Vec<String>,
    /// Give up after this long (500ms, 30s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Pause between two polls of a URL that is not ready yet.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    interval: Duration,
    /// Print one JSON object (`{"ready": .., "urls": [..]}`) instead of lines.
    #[arg(long)]
    json: bool,
}

/// The last word from one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    /// It answered 200.
    Ready,
    /// It answered something else: the status and why.
    NotReady { status: u16, reason: String },
    /// It did not answer.
    Unreachable(String),
}

struct Probe {
    url: String,
    last: Readiness,
    /// It answered at least once (so it is "not ready" rather than "unreachable").
    answered: bool,
}

/// The URL to poll for `url`: `/readyz` is appended when it has no path.
fn readyz_url(url: &str) -> Result<String, String> {
    let base = operator::base_url(url);
    let after_scheme = base
        .split_once("://")
        .map_or(base.as_str(), |(_, rest)| rest);
    // A path was given when a `/` is left (`base_url` dropped only a trailing one).
    let full = if after_scheme.contains('/') {
        base
    } else {
        format!("{base}/readyz")
    };
    match full.parse::<http::Uri>() {
        Ok(uri) if uri.host().is_some() => Ok(full),
        Ok(_) => Err(format!("`{url}` names no host")),
        Err(err) => Err(format!("`{url}` is not a URL: {err}")),
    }
}

/// One GET of a readiness URL.
async fn check(url: &str, timeout: Duration) -> Readiness {
    match crate::http::request("GET", url, None, &[], Bytes::new(), timeout).await {
        Ok(answer) if answer.status == 200 => Readiness::Ready,
        Ok(answer) => Readiness::NotReady {
            status: answer.status,
            reason: operator::reason(&answer),
        },
        Err(err) => Readiness::Unreachable(err.reason),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut probes: Vec<Probe> = args
        .urls
        .iter()
        .map(|url| Probe {
            url: url.clone(),
            last: Readiness::Unreachable("not polled yet".into()),
            answered: false,
        })
        .collect();
    operator::runtime()?.block_on(poll(&mut probes, args.timeout, args.interval));
    if args.json {
        let urls: Vec<_> = probes.iter().map(to_json).collect();
        let ready = probes.iter().all(|p| p.last == Readiness::Ready);
        println!("{}", json!({ "ready": ready, "urls": urls }));
    } else {
        let width = probes.iter().map(|p| p.url.len()).max().unwrap_or(0);
        for probe in &probes {
            let state = match &probe.last {
                Readiness::Ready => "ready".to_string(),
                Readiness::NotReady { status, reason } => {
                    format!("not ready ({status}): {reason}")
                }
                Readiness::Unreachable(why) if probe.answered => {
                    format!("not ready: it answered before, now unreachable: {why}")
                }
                Readiness::Unreachable(why) => format!("unreachable: {why}"),
            };
            println!("{:width$}  {state}", probe.url);
        }
    }
    Ok(exit_status(&probes))
}

/// Polls every URL not yet ready, all at once, until all are or `timeout` has passed;
/// each URL is polled at least once.
async fn poll(probes: &mut [Probe], timeout: Duration, interval: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let request_timeout = left.clamp(Duration::from_millis(200), REQUEST_TIMEOUT);
        let checks = probes
            .iter()
            .filter(|p| p.last != Readiness::Ready)
            .map(|p| check(&p.url, request_timeout));
        let results = futures::future::join_all(checks).await;
        let waiting = probes.iter_mut().filter(|p| p.last != Readiness::Ready);
        for (probe, result) in waiting.zip(results) {
            probe.answered |= !matches!(result, Readiness::Unreachable(_));
            probe.last = result;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if probes.iter().all(|p| p.last == Readiness::Ready) || left.is_zero() {
            return;
        }
        tokio::time::sleep(interval.min(left)).await;
    }
}

/// 0 all ready; 1 some answered but is not ready; 3 the rest never answered.
fn exit_status(probes: &[Probe]) -> ExitCode {
    let waiting: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.last != Readiness::Ready)
        .collect();
    if waiting.is_empty() {
        ExitCode::SUCCESS
    } else if waiting.iter().any(|p| p.answered) {
        operator::exit(BAD)
    } else {
        operator::exit(UNREACHABLE)
    }
}

fn to_json(probe: &Probe) -> serde_json::Value {
    match &probe.last {
        Readiness::Ready => json!({ "url": probe.url, "state": "ready" }),
        Readiness::NotReady { status, reason } => json!({
            "url": probe.url, "state": "not_ready", "status": status, "reason": reason,
        }),
        Readiness::Unreachable(why) => json!({
            "url": probe.url,
            "state": if probe.answered { "not_ready" } else { "unreachable" },
            "reason": why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::readyz_url;

    #[test]
    fn readyz_is_appended_only_without_a_path() {
        let url = |u| readyz_url(u).unwrap();
        assert_eq!(url("127.0.0.1:7000"), "http://127.0.0.1:7000/readyz");
        assert_eq!(url("http://h:1/"), "http://h:1/readyz");
        assert_eq!(url("http://h:1/healthz"), "http://h:1/healthz");
        assert_eq!(url("https://h/a/b"), "https://h/a/b");
        assert!(readyz_url("http://a b").is_err());
    }
}
