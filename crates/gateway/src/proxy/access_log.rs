//! The access log: one JSON line per request, written to a file off the request path.
//!
//! A request's line is formatted into a shared buffer when the request ends (the end of
//! its answer's body, or of its tunnel); a thread of its own writes the buffer to the
//! file every [`FLUSH_EVERY`]. The request path never waits for the disk: if the writer
//! falls [`MAX_PENDING`] behind (a disk that stalls), lines are dropped and counted
//! (`switchyard_gateway_access_log_dropped_total`) rather than requests slowed; so are
//! the lines of a write that failed (a full disk).
//!
//! ```json
//! {"time":"2026-11-26T18:00:00.123Z","client":"192.0.2.7","method":"GET","host":"app.example.com","path":"/a?b=1","protocol":"HTTP/1.1","status":200,"bytes":5120,"upstream":"10.0.0.5:8080","duration_ms":1.204}
//! ```
//!
//! `bytes` counts the data of the answer's body, not its head nor a chunked answer's
//! framing, on every protocol; `upstream` is `null`
//! when no backend was tried (404, 503, a request refused); the duration runs from the
//! request's head to the end of its answer. `SIGHUP` (and
//! [`AccessLog::reopen`]) opens the file again by name, for log rotation.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::metrics::ACCESS_LOG_DROPPED_TOTAL;

/// How often the writer thread writes what requests logged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes of lines waiting for the writer past which new lines are dropped.
pub const MAX_PENDING: usize = 8 << 20;

/// An open access log; see the module docs.
pub struct AccessLog {
    path: PathBuf,
    /// Lines formatted and not yet written.
    pending: Mutex<Vec<u8>>,
    /// The file; only the writer (and a final flush) takes it.
    file: Mutex<File>,
    reopen: AtomicBool,
    dropped: AtomicU64,
    /// [`ACCESS_LOG_DROPPED_TOTAL`], in the recorder installed when the log was opened.
    dropped_metric: metrics::Counter,
}

impl AccessLog {
    /// Opens (creating, appending to) the log at `path`, and starts the thread that
    /// writes to it while the returned log lives.
    pub fn open(path: &Path) -> io::Result<Arc<AccessLog>> {
        let log = Arc::new(AccessLog {
            path: path.to_path_buf(),
            pending: Mutex::new(Vec::new()),
            file: Mutex::new(open(path)?),
            reopen: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            dropped_metric: metrics::counter!(ACCESS_LOG_DROPPED_TOTAL),
        });
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_while_alive(&weak))?;
        Ok(log)
    }

    /// Where the log is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines dropped: the writer was too far behind, or their write failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn count_dropped(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        self.dropped_metric.increment(lines);
    }

    /// Opens the file again by its name before the next write (after it was rotated).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Writes what is pending now. A file that cannot be opened again keeps the lines
    /// waiting (and the reopen asked for); the lines of a write that fails are dropped.
    pub fn flush(&self) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if self.reopen.load(Ordering::Relaxed) {
            *file = open(&self.path)?;
            self.reopen.store(false, Ordering::Relaxed);
        }
        let lines =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        file.write_all(&lines).inspect_err(|_| {
            self.count_dropped(lines.iter().filter(|&&byte| byte == b'\n').count() as u64);
        })
    }

    /// Adds one request's line (unless too many wait: then it is dropped and counted).
    pub(super) fn record(&self, entry: &Entry<'_>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING {
            drop(pending);
            self.count_dropped(1);
            return;
        }
        entry.write_json(&mut pending);
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::warn!(%error, path = %self.path.display(), "access log not written");
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer thread: flushes every [`FLUSH_EVERY`] until the log is dropped.
fn write_while_alive(log: &Weak<AccessLog>) {
    let mut failing = false;
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(log) = log.upgrade() else { return };
        match log.flush() {
            Ok(()) => failing = false,
            // Said once per spell of failures, not every 100 ms.
            Err(error) if !failing => {
                failing = true;
                tracing::error!(%error, path = %log.path.display(), "cannot write the access log");
            }
            Err(_) => {}
        }
    }
}

/// One request, as its line says it.
pub(super) struct Entry<'a> {
    pub(super) client: &'a [u8],
    pub(super) method: &'a [u8],
    pub(super) host: &'a [u8],
    pub(super) path: &'a [u8],
    pub(super) protocol: &'static str,
    pub(super) status: u16,
    /// Of the answer's body.
    pub(super) bytes: u64,
    pub(super) upstream: Option<&'a str>,
    pub(super) duration: Duration,
}

impl Entry<'_> {
    /// Appends the line to `out`. Numbers and the time are written by hand, not with
    /// `write!`: formatting a float and a timestamp that way cost more than the rest of
    /// a proxied request.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        time(out, SystemTime::now());
        out.extend_from_slice(b"\",\"client\":");
        string(out, self.client);
        out.extend_from_slice(b",\"method\":");
        string(out, self.method);
        out.extend_from_slice(b",\"host\":");
        string(out, self.host);
        out.extend_from_slice(b",\"path\":");
        string(out, self.path);
        out.extend_from_slice(b",\"protocol\":\"");
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        out.extend_from_slice(number.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        out.extend_from_slice(number.format(self.bytes).as_bytes());
        out.extend_from_slice(b",\"upstream\":");
        match self.upstream {
            Some(upstream) => string(out, upstream.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"duration_ms\":");
        let micros = self.duration.as_micros();
        out.extend_from_slice(number.format(micros / 1000).as_bytes());
        out.push(b'.');
        let fraction = (micros % 1000) as u16;
        out.extend_from_slice(&[
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ]);
        out.extend_from_slice(b"}\n");
    }
}

/// `now` in RFC 3339, UTC, to the millisecond: the date and the second formatted once
/// per second and thread, the milliseconds added each time.
fn time(out: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (seconds, millis) = (since.as_secs(), since.subsec_millis());
    let prefix = SECOND.with(|cached| {
        let (at, mut prefix) = cached.get();
        if at != seconds {
            let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds));
            prefix.copy_from_slice(&text.to_string().as_bytes()[..19]);
            cached.set((seconds, prefix));
        }
        prefix
    });
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// The bytes a JSON string holds as they are: printable ASCII but `"` and `\`.
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = 0x20;
    while byte < 0x7f {
        plain[byte] = byte != b'"' as usize && byte != b'\\' as usize;
        byte += 1;
    }
    plain
};

/// `bytes` as a JSON string: quotes, backslashes and control bytes escaped, and bytes
/// that are not UTF-8 (a request target may hold any) as U+FFFD.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    // Nearly always: printable ASCII with nothing to escape.
    if bytes.iter().all(|&byte| PLAIN[usize::from(byte)]) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for chunk in bytes.utf8_chunks() {
        for &byte in chunk.valid().as_bytes() {
            match byte {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0..0x20 | 0x7f => {
                    let _ = write!(out, "\\u{byte:04x}");
                }
                _ => out.push(byte),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_whatever_the_request_holds() {
        let entry = Entry {
            client: b"192.0.2.7",
            method: b"GET",
            host: b"app.test",
            path: b"/a\"b\\c\x01\x7f\xff\xfe?\xc3\xa9",
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 1234,
            upstream: Some("127.0.0.1:8080"),
            duration: Duration::from_micros(1_204),
        };
        let mut out = Vec::new();
        entry.write_json(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["path"], "/a\"b\\c\u{1}\u{7f}\u{fffd}\u{fffd}?é");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 1234);
        assert_eq!(line["upstream"], "127.0.0.1:8080");
        assert_eq!(line["duration_ms"], 1.204);
        let time = line["time"].as_str().unwrap();
        let at = humantime::parse_rfc3339(time).unwrap();
        let off = SystemTime::now()
            .duration_since(at)
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(60), "{time}");
        assert_eq!(time.len(), "2026-11-26T18:00:00.123Z".len(), "{time}");
        for (micros, text) in [(5, "0.005"), (1_000, "1.000"), (12_345_678, "12345.678")] {
            let mut out = Vec::new();
            Entry {
                duration: Duration::from_micros(micros),
                ..entry
            }
            .write_json(&mut out);
            let out = String::from_utf8(out).unwrap();
            assert!(
                out.ends_with(&format!(",\"duration_ms\":{text}}}\n")),
                "{out}"
            );
        }

        let refused = Entry {
            upstream: None,
            status: 404,
            ..entry
        };
        let mut out = Vec::new();
        refused.write_json(&mut out);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(line["upstream"].is_null());
    }
}
