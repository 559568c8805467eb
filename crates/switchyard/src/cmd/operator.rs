//! What the operator commands (`wait-ready`, `zk audit`, `app`, `status`) share: their
//! exit statuses, the local region's defaults, and reading an error answer.
//!
//! Scripts branch on the exit status, so every operator command keeps to one scheme:
//! 0 all is well, 1 what was asked about is bad (not ready, refused, over a limit),
//! 2 a usage error (clap's own), 3 a peer could not be reached at all.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::http::Answer;
use crate::region::{self, Region};

/// What is asked about is bad: not ready, refused by the API, over a size limit.
pub const BAD: u8 = 1;
/// A peer never answered: connection refused, or no answer in time.
pub const UNREACHABLE: u8 = 3;

/// The exit status `code`.
pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// `dir/region.json` when there is one (written by `switchyard up`), else `None`.
pub fn region_if_present(dir: &Path) -> anyhow::Result<Option<Region>> {
    if dir.join(region::FILE).exists() {
        Region::load(dir).map(Some)
    } else {
        Ok(None)
    }
}

/// A base URL from what an operator typed: `http://` is added when no scheme is given
/// and a trailing `/` is dropped.
pub fn base_url(text: &str) -> String {
    let text = text.trim();
    let url = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    url.trim_end_matches('/').to_string()
}

/// A single-threaded runtime: the operator commands only wait on the network.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `n` and `word`, plural unless `n` is 1: `1 line`, `3 lines`.
pub fn count(n: impl Into<u64>, word: &str) -> String {
    let n = n.into();
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// A share of a limit, in (0, 1]: `0.9` is 90 %.
pub fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("`{text}` is not a share in (0, 1], like 0.9")),
    }
}

/// Why an answer is not a success, in one line: the JSON `detail` (our daemons' error
/// bodies are `{"error", "detail", "fields"}`), else the body's first line, else the
/// status.
pub fn reason(answer: &Answer) -> String {
    if let Ok(body) = answer.json() {
        if let Some(detail) = body["detail"].as_str().filter(|d| !d.is_empty()) {
            return detail.to_string();
        }
    }
    let text = String::from_utf8_lossy(&answer.body);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) if line.chars().count() > 200 => {
            format!("{}…", line.chars().take(200).collect::<String>())
        }
        Some(line) => line.to_string(),
        None => format!("HTTP {}", answer.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(base_url("127.0.0.1:7000"), "http://127.0.0.1:7000");
        assert_eq!(base_url("http://h:1/"), "http://h:1");
        assert_eq!(base_url(" https://h "), "https://h");
    }

    #[test]
    fn a_reason_is_the_detail_or_the_first_line() {
        let answer = |status, body: &str| Answer {
            status,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from(body.to_string()),
        };
        let json = r#"{"error":"not_ready","detail":"claiming shards: 15 of 16 owned"}"#;
        assert_eq!(
            reason(&answer(503, json)),
            "claiming shards: 15 of 16 owned"
        );
        assert_eq!(reason(&answer(503, "\nnot ready\nmore")), "not ready");
        assert_eq!(reason(&answer(502, "")), "HTTP 502");
        let long = "é".repeat(300);
        assert_eq!(reason(&answer(500, &long)).chars().count(), 201);
    }
}
