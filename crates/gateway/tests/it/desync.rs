//! Request smuggling and response desync, looked for with generated messages.
//!
//! A proxy and the servers on either side of it must agree on where each message ends.
//! If they do not, a client can hide a request in the body of another, and the backend
//! serves it as if the proxy had routed and checked it (request smuggling); or the rest
//! of a backend's answer is read as the answer to the next request on its connection,
//! someone else's (response desync).
//!
//! The tests here build messages from the framing tricks known to split readers: a
//! `Content-Length` beside `Transfer-Encoding`, lengths repeated, signed, padded or
//! listed, codings spelled oddly or folded onto the next line, chunk sizes outside the
//! grammar, bare CRs and LFs, stray control bytes; then mutate some of them at random.
//! Each goes through a real gateway to a real backend, and is checked against the
//! reading of RFC 9112 written below ([`read_request`], [`read_response`]):
//!
//! - everything the gateway sends a backend or a client reads one way only (the reader
//!   in its strict mode accepts it);
//! - a backend receives no request that the RFC's reading of the client's bytes does
//!   not have: none from inside a body, none after a message whose framing is in doubt
//!   or after which the connection was to close;
//! - a client receives nothing but the answers to its own requests: a backend's answer
//!   is passed on as the RFC reads it, or refused with a 502, and a request after it
//!   gets its own answer, whatever bytes the backend added to the one before.
//!
//! The generators are seeded: a failure names its seed and case, and
//! `SWITCHYARD_DESYNC_SEED` and `SWITCHYARD_DESYNC_CASES` (the cases per test, 300 by
//! default) run them again, or more of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use gateway::proxy::{BackendConfig, ProxyConfig};

use crate::proxy::{route, Gateway};

// ---------------------------------------------------------------------------------
// A reading of RFC 9112.

/// How closely a message is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// As a recipient may read what others send (RFC 9112 lets it accept a bare LF as
    /// a line's end, empty lines before a request, and a length repeated with one
    /// value): what a client sends is read so.
    Lenient,
    /// Only what a sender may send, with one reading under any recipient's rules: what
    /// the gateway sends is read so.
    Strict,
}

/// A request or response head: its start line and its fields, names lower-cased and
/// values with the whitespace around them taken off.
struct Head {
    start: Vec<u8>,
    fields: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn values(&self, name: &str) -> impl Iterator<Item = &[u8]> + '_ {
        let name = name.to_string();
        self.fields
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| &v[..])
    }

    /// The comma-separated elements of every field `name`, lower-cased, empty ones
    /// left out (RFC 9110 §5.6.1).
    fn list(&self, name: &str) -> Vec<String> {
        self.values(name)
            .flat_map(|value| value.split(|byte| *byte == b','))
            .map(|element| String::from_utf8_lossy(element.trim_ascii()).to_ascii_lowercase())
            .filter(|element| !element.is_empty())
            .collect()
    }
}

/// How far a reading got.
enum Step<T> {
    Done(T),
    /// More bytes are needed. `head` is whether the head is complete (its start line
    /// then given): a gateway may pass a head on before its body has all arrived.
    Partial {
        start: Option<Vec<u8>>,
    },
    /// Not a message with one reading; `start` is its start line if its head was read.
    Invalid {
        why: String,
        start: Option<Vec<u8>>,
    },
}

/// Reading a head or a chunked body, before the message is known complete.
enum Cut {
    Partial,
    Invalid(String),
}

type Read<T> = Result<T, Cut>;

fn invalid<T>(why: impl Into<String>) -> Read<T> {
    Err(Cut::Invalid(why.into()))
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    mode: Mode,
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || byte == b' ' || (0x21..=0x7e).contains(&byte) || byte >= 0x80
}

impl<'a> Cursor<'a> {
    /// The next line, without its end.
    fn line(&mut self) -> Read<&'a [u8]> {
        let buf = self.buf;
        let rest = &buf[self.pos..];
        let Some(end) = rest.iter().position(|byte| *byte == b'\n') else {
            return Err(Cut::Partial);
        };
        let line = match rest[..end].strip_suffix(b"\r") {
            Some(line) => line,
            None if self.mode == Mode::Lenient => &rest[..end],
            None => return invalid("a line ended by a bare LF"),
        };
        if line.contains(&b'\r') {
            return invalid("a bare CR");
        }
        self.pos += end + 1;
        Ok(line)
    }

    /// A field line (`name: value`).
    fn field(line: &[u8]) -> Read<(String, Vec<u8>)> {
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return invalid("a folded line, or one that starts with whitespace");
        }
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            return invalid("a field line without a colon");
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return invalid("a field name that is not a token");
        }
        if !value.iter().copied().all(is_field_byte) {
            return invalid("a control byte in a field value");
        }
        Ok((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ))
    }

    fn head(&mut self) -> Read<Head> {
        let mut start = self.line()?;
        while start.is_empty() && self.mode == Mode::Lenient {
            start = self.line()?;
        }
        if start.is_empty() {
            return invalid("an empty line before the start line");
        }
        let start = start.to_vec();
        let mut fields = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                return Ok(Head { start, fields });
            }
            fields.push(Cursor::field(line)?);
        }
    }

    /// A chunked body: its data.
    fn chunked(&mut self) -> Read<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let line = self.line()?;
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits == 0 {
                return invalid("a chunk size that is not hex");
            }
            let mut size: u64 = 0;
            for digit in &line[..digits] {
                let value = (*digit as char).to_digit(16).unwrap() as u64;
                size = match size.checked_mul(16).and_then(|s| s.checked_add(value)) {
                    Some(size) => size,
                    None => return invalid("a chunk size over 64 bits"),
                };
            }
            // Whitespace after the size, before an extension or the line's end: outside
            // the grammar, but read as nothing by every reader that takes it (nginx
            // and the gateway among them), and refused by the others.
            let rest = line[digits..].trim_ascii_start();
            if !(rest.is_empty() || rest.starts_with(b";")) {
                return invalid("bytes after a chunk size");
            }
            if !rest.iter().copied().all(is_field_byte) {
                return invalid("a control byte in a chunk extension");
            }
            if size == 0 {
                loop {
                    let line = self.line()?;
                    if line.is_empty() {
                        return Ok(data);
                    }
                    Cursor::field(line)?;
                }
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if self.buf.len() - self.pos < size.saturating_add(1) {
                return Err(Cut::Partial);
            }
            data.extend_from_slice(&self.buf[self.pos..self.pos + size]);
            self.pos += size;
            if !self.line()?.is_empty() {
                return invalid("chunk data longer than its size");
            }
        }
    }

    fn exactly(&mut self, len: u64) -> Read<Vec<u8>> {
        let rest = &self.buf[self.pos..];
        match usize::try_from(len) {
            Ok(len) if len <= rest.len() => {
                self.pos += len;
                Ok(rest[..len].to_vec())
            }
            _ => Err(Cut::Partial),
        }
    }
}

/// How a message's body is framed.
enum Body {
    None,
    Length(u64),
    Chunked,
    /// To the end of the connection (responses only).
    Close,
}

/// The value of the `Content-Length` fields, if any: one number, or a list of one
/// number repeated when reading leniently.
fn content_length(head: &Head, mode: Mode) -> Result<Option<u64>, String> {
    let values: Vec<&[u8]> = head.values("content-length").collect();
    if values.is_empty() {
        return Ok(None);
    }
    let elements: Vec<&[u8]> = match mode {
        Mode::Strict if values.len() > 1 => return Err("two Content-Length fields".into()),
        Mode::Strict => values,
        Mode::Lenient => values
            .iter()
            .flat_map(|value| value.split(|byte| *byte == b','))
            .map(|element| element.trim_ascii())
            .collect(),
    };
    let mut length = None;
    for element in elements {
        if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
            return Err("a Content-Length that is not a number".into());
        }
        let value: u64 = std::str::from_utf8(element)
            .unwrap()
            .parse()
            .map_err(|_| "a Content-Length over 64 bits".to_string())?;
        if length.is_some_and(|length| length != value) {
            return Err("Content-Lengths that differ".into());
        }
        length = Some(value);
    }
    Ok(length)
}

/// Whether the transfer codings end in `chunked`, applied once; an error for a
/// coding that is not a bare token.
fn chunked_last(head: &Head, mode: Mode) -> Result<bool, String> {
    let codings = head.list("transfer-encoding");
    if codings.iter().any(|coding| !coding.bytes().all(is_tchar)) {
        return Err("a transfer coding that is not a token".into());
    }
    let chunked = codings.iter().filter(|c| *c == "chunked").count();
    if mode == Mode::Strict && (head.values("transfer-encoding").count() > 1 || codings.len() > 1) {
        return Err("a transfer coding besides chunked".into());
    }
    match (chunked, codings.last()) {
        (0, _) => Ok(false),
        (1, Some(last)) if last == "chunked" => Ok(true),
        _ => Err("chunked applied twice, or not last".into()),
    }
}

/// HTTP/1.0 or HTTP/1.1: whether 1.1.
fn version(text: &[u8]) -> Result<bool, String> {
    match text {
        b"HTTP/1.1" => Ok(true),
        b"HTTP/1.0" => Ok(false),
        _ => Err(format!("version {:?}", String::from_utf8_lossy(text))),
    }
}

/// Whether the connection stays open after this message.
fn persists(head: &Head, http11: bool) -> bool {
    let tokens = head.list("connection");
    if tokens.iter().any(|t| t == "close") {
        return false;
    }
    http11 || tokens.iter().any(|t| t == "keep-alive")
}

/// A request, read whole.
struct Requested {
    target: String,
    /// `HEAD`: its answer has no body.
    head: bool,
    /// Bytes it took.
    len: usize,
    /// The connection may carry another request after it.
    persists: bool,
}

/// Reads the request at the start of `buf` (RFC 9112 §§2–3, 6–7).
fn read_request(buf: &[u8], mode: Mode) -> Step<Requested> {
    let mut cursor = Cursor { buf, pos: 0, mode };
    let head = match cursor.head() {
        Ok(head) => head,
        Err(Cut::Partial) => return Step::Partial { start: None },
        Err(Cut::Invalid(why)) => return Step::Invalid { why, start: None },
    };
    let start = Some(head.start.clone());
    let bad = |why: String| Step::Invalid {
        why,
        start: start.clone(),
    };
    let parts: Vec<&[u8]> = head.start.split(|byte| *byte == b' ').collect();
    let [method, target, version_text] = parts[..] else {
        return bad("a request line not of three parts".into());
    };
    if method.is_empty() || !method.iter().copied().all(is_tchar) {
        return bad("a method that is not a token".into());
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return bad("a target with bytes a target cannot have".into());
    }
    let http11 = match version(version_text) {
        Ok(http11) => http11,
        Err(why) => return bad(why),
    };
    let has_length = head.values("content-length").next().is_some();
    let coded = head.values("transfer-encoding").next().is_some();
    let body = if coded {
        // Both: RFC 9112 §6.1 lets a server go by the coding, but it must close the
        // connection afterwards; HTTP/1.0 with a coding: the framing is faulty.
        if has_length || !http11 {
            return bad("Transfer-Encoding beside Content-Length, or in HTTP/1.0".into());
        }
        match chunked_last(&head, mode) {
            Ok(true) => Body::Chunked,
            Ok(false) => return bad("a request coding that does not end in chunked".into()),
            Err(why) => return bad(why),
        }
    } else {
        match content_length(&head, mode) {
            Ok(Some(length)) => Body::Length(length),
            Ok(None) => Body::None,
            Err(why) => return bad(why),
        }
    };
    let read = match body {
        Body::None | Body::Close => Ok(Vec::new()),
        Body::Length(length) => cursor.exactly(length),
        Body::Chunked => cursor.chunked(),
    };
    match read {
        Ok(_) => Step::Done(Requested {
            target: String::from_utf8_lossy(target).into_owned(),
            head: method == b"HEAD",
            len: cursor.pos,
            persists: persists(&head, http11),
        }),
        Err(Cut::Partial) => Step::Partial { start },
        Err(Cut::Invalid(why)) => bad(why),
    }
}

/// A response, read whole.
#[derive(Debug, PartialEq)]
struct Answered {
    status: u16,
    body: Vec<u8>,
    /// Bytes it took, interim answers included.
    len: usize,
    /// Its body ran to the end of the bytes (the connection's end).
    to_close: bool,
    /// Framed by a coding and a length both: RFC 9112 §6.3 reads the coding, and a
    /// proxy may as well refuse it.
    doubtful: bool,
}

/// Reads the final response at the start of `buf`, after any interim ones, to a
/// request that was `HEAD` or not (RFC 9112 §§4, 6). `buf` is everything the
/// connection carried: a body that runs to the connection's end takes all of it.
fn read_response(buf: &[u8], head_request: bool, mode: Mode) -> Step<Answered> {
    let mut cursor = Cursor { buf, pos: 0, mode };
    loop {
        let head = match cursor.head() {
            Ok(head) => head,
            Err(Cut::Partial) => return Step::Partial { start: None },
            Err(Cut::Invalid(why)) => return Step::Invalid { why, start: None },
        };
        let start = Some(head.start.clone());
        let bad = |why: &str| Step::Invalid {
            why: why.to_string(),
            start: start.clone(),
        };
        let mut parts = head.start.splitn(3, |byte| *byte == b' ');
        let http11 = match version(parts.next().unwrap_or_default()) {
            Ok(http11) => http11,
            Err(why) => return bad(&why),
        };
        let code = parts.next().unwrap_or_default();
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return bad("a status that is not three digits");
        }
        let status: u16 = std::str::from_utf8(code).unwrap().parse().unwrap();
        if parts.next().is_none() && mode == Mode::Strict {
            return bad("a status line without a space after the code");
        }
        if !(100..=599).contains(&status) || status == 101 {
            return bad("a status out of range, or a switch nobody asked for");
        }
        if status < 200 {
            continue;
        }
        let has_length = head.values("content-length").next().is_some();
        let coded = head.values("transfer-encoding").next().is_some();
        let mut doubtful = false;
        let body = if head_request || status == 204 || status == 304 {
            Body::None
        } else if coded {
            if !http11 {
                return bad("Transfer-Encoding in HTTP/1.0");
            }
            if has_length {
                if mode == Mode::Strict {
                    return bad("Transfer-Encoding beside Content-Length");
                }
                doubtful = true;
            }
            match chunked_last(&head, mode) {
                Ok(true) => Body::Chunked,
                Ok(false) => Body::Close,
                Err(why) => return bad(&why),
            }
        } else {
            match content_length(&head, mode) {
                Ok(Some(length)) => Body::Length(length),
                Ok(None) => Body::Close,
                Err(why) => return bad(&why),
            }
        };
        let read = match body {
            Body::None => Ok(Vec::new()),
            Body::Length(length) => cursor.exactly(length),
            Body::Chunked => cursor.chunked(),
            Body::Close => {
                let rest = buf[cursor.pos..].to_vec();
                cursor.pos = buf.len();
                Ok(rest)
            }
        };
        return match read {
            Ok(body_bytes) => Step::Done(Answered {
                status,
                body: body_bytes,
                len: cursor.pos,
                to_close: matches!(body, Body::Close),
                doubtful,
            }),
            Err(Cut::Partial) => Step::Partial { start },
            Err(Cut::Invalid(why)) => bad(&why),
        };
    }
}

/// Bytes as a Rust string literal would show them, for failure messages.
fn shown(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

// ---------------------------------------------------------------------------------
// Generated messages.

/// xorshift64*: small, seeded, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    std::env::var("SWITCHYARD_DESYNC_SEED")
        .ok()
        .map(|seed| seed.parse().expect("SWITCHYARD_DESYNC_SEED is a number"))
        .unwrap_or(0x5eed_2016)
}

fn cases() -> usize {
    std::env::var("SWITCHYARD_DESYNC_CASES")
        .ok()
        .map(|cases| cases.parse().expect("SWITCHYARD_DESYNC_CASES is a number"))
        .unwrap_or(300)
}

/// `Content-Length` fields as smuggling tries them, for a length `v` and another `w`.
fn length_fields(v: usize, w: usize) -> [String; 20] {
    [
        format!("Content-Length: {v}"),
        format!("content-length: {v}"),
        format!("Content-Length:{v}"),
        format!("Content-Length: {v} "),
        format!("Content-Length:\t{v}"),
        format!("Content-Length: +{v}"),
        format!("Content-Length: 0{v}"),
        format!("Content-Length: {v}, {v}"),
        format!("Content-Length: {v}, {w}"),
        format!("Content-Length: {v} {w}"),
        format!("Content-Length : {v}"),
        format!("Content-Length: {v}\r\nContent-Length: {w}"),
        format!("Content-Length: {v}\r\nContent-Length: {v}"),
        format!("Content-Length: -{v}"),
        format!("Content-Length: {v:#x}"),
        format!("Content-Length: 18446744073709551616{v}"),
        format!("Content-Length:\r\n {v}"),
        format!(" Content-Length: {v}"),
        format!("Content-Length\t: {v}"),
        format!("Content-Length: {v}\x00"),
    ]
}

/// `Transfer-Encoding` fields as smuggling tries them.
const CODING_FIELDS: [&str; 24] = [
    "Transfer-Encoding: chunked",
    "transfer-encoding: CHUNKED",
    "Transfer-Encoding:chunked",
    "Transfer-Encoding: chunked ",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, chunked",
    "Transfer-Encoding: \"chunked\"",
    "Transfer-Encoding: chunked;q=1",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
    "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding:\r\n chunked",
    " Transfer-Encoding: chunked",
    "Transfer_Encoding: chunked",
    "Transfer-Encoding: ,chunked",
    "Transfer-Encoding: chunked,",
    "Transfer-Encoding: \x0bchunked",
    "Transfer-Encoding: chunk",
    "Transfer-Encoding: chunked\x00",
    "Transfer-Encoding: chunked\r\nX-Padding: \"a",
];

/// A chunk size written as smuggling tries it, for `size`.
fn chunk_size(rng: &mut Rng, size: usize) -> String {
    let spellings = [
        format!("{size:x}"),
        format!("{size:X}"),
        format!("0{size:x}"),
        format!("{size:x};ext=1"),
        format!("{size:x} ;ext"),
        format!("{size:x} "),
        format!("{size:#x}"),
        format!("+{size:x}"),
        format!("{size:x}\t"),
        format!("0000000000000000{size:x}"),
        format!("1{size:x}"),
        format!("{size:x};\x00"),
        format!("1{:016x}", size),
    ];
    // The plain spelling half of the time, so that the rest of the message is tried.
    if rng.chance(50) {
        spellings[0].clone()
    } else {
        rng.pick(&spellings).clone()
    }
}

/// One chunk holding `data`, its size spelled by [`chunk_size`].
fn chunk(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut out = chunk_size(rng, data.len()).into_bytes();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Framing fields for a body of `len` bytes whose honest part is `part` bytes: none,
/// one or two lengths and codings, spelled as smuggling tries them, in any order.
fn framing(rng: &mut Rng, len: usize, part: usize) -> Vec<String> {
    let mut fields = Vec::new();
    for _ in 0..rng.below(3) {
        let v = *rng.pick(&[len, part, 0, len + 7, len.saturating_sub(3)]);
        let w = *rng.pick(&[len, part, 0, 1]);
        fields.push(rng.pick(&length_fields(v, w)).clone());
    }
    for _ in 0..rng.below(3) {
        fields.push(rng.pick(&CODING_FIELDS).to_string());
    }
    // Shuffle.
    for i in (1..fields.len()).rev() {
        fields.swap(i, rng.below(i + 1));
    }
    fields
}

/// Changes one byte in `bytes[start..end]`, some of the time: a byte put in, taken
/// out, or changed, or a line end cut down to its CR or LF.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, start: usize, end: usize) {
    if end <= start || !rng.chance(35) {
        return;
    }
    let at = start + rng.below(end - start);
    match rng.below(5) {
        0 => bytes.insert(at, *rng.pick(b" \t\r\n\x00,;\"\x0b\x0c\xff:")),
        1 => {
            bytes.remove(at);
        }
        2 if bytes[at].is_ascii_alphabetic() => bytes[at] ^= 0x20,
        2 => bytes[at] = *rng.pick(b"\x00\x7f ,;"),
        _ => {
            let ends: Vec<usize> = bytes[start..end]
                .windows(2)
                .enumerate()
                .filter(|(_, pair)| pair == b"\r\n")
                .map(|(i, _)| start + i)
                .collect();
            if !ends.is_empty() {
                let crlf = *rng.pick(&ends);
                bytes.remove(crlf + usize::from(rng.chance(50)));
            }
        }
    }
}

/// Case `n` of the request test: a request whose body hides another (`/cN/s`), framed
/// every which way, perhaps followed by a plain one (`/cN/b`). `N` has five digits, so
/// that no single byte changed, added or taken out turns one case's target into
/// another's.
fn request_case(rng: &mut Rng, n: usize) -> Vec<u8> {
    let hidden = format!("GET /c{n:05}/s HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let mut body = Vec::new();
    // The body's bytes up to the hidden request, and whether it follows them.
    let (honest, follows) = match rng.below(4) {
        // A chunked body that ends at once, the hidden request after it.
        0 => {
            body.extend_from_slice(b"0\r\n\r\n");
            (5, true)
        }
        // The hidden request is the whole body.
        1 => (0, true),
        // One chunk holding the hidden request, then the last chunk.
        2 => {
            let chunk = chunk(rng, hidden.as_bytes());
            body.extend_from_slice(&chunk);
            body.extend_from_slice(b"0\r\n\r\n");
            (body.len(), false)
        }
        // A chunk of a few bytes, then the hidden request.
        _ => {
            body.extend_from_slice(&chunk(rng, b"abc"));
            body.extend_from_slice(b"0\r\n\r\n");
            (body.len(), true)
        }
    };
    if follows {
        body.extend_from_slice(hidden.as_bytes());
    }
    let method = rng.pick(&["POST", "POST", "GET", "PUT", "DELETE"]);
    let version = rng.pick(&[
        "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2",
    ]);
    let mut message = format!("{method} /c{n:05}/a {version}\r\nHost: app.test\r\n");
    if *version == "HTTP/1.0" && rng.chance(50) {
        message.push_str("Connection: keep-alive\r\n");
    }
    for field in framing(rng, body.len(), honest) {
        message.push_str(&field);
        message.push_str("\r\n");
    }
    message.push_str("\r\n");
    let mut bytes = message.into_bytes();
    let head_end = bytes.len();
    bytes.extend_from_slice(&body);
    if rng.chance(50) {
        bytes.extend_from_slice(
            format!("GET /c{n:05}/b HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
        );
    }
    // Not the request line: the target names the case.
    let line_end = bytes.iter().position(|b| *b == b'\n').unwrap_or(0);
    mutate(rng, &mut bytes, line_end, head_end + body.len().min(12));
    bytes
}

/// Case `n` of the response test: the answer to `/cN/a`, framed every which way, its
/// body perhaps followed by a whole other answer (for `/cN/s`).
fn response_case(rng: &mut Rng, n: usize) -> Vec<u8> {
    let honest = format!("/c{n:05}/a");
    let smuggled = format!("/c{n:05}/s");
    let extra = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut body = Vec::new();
    let part = match rng.below(4) {
        0 => {
            body.extend_from_slice(honest.as_bytes());
            honest.len()
        }
        1 => {
            body.extend_from_slice(&chunk(rng, honest.as_bytes()));
            body.extend_from_slice(b"0\r\n\r\n");
            body.len()
        }
        2 => {
            body.extend_from_slice(b"0\r\n\r\n");
            5
        }
        _ => {
            let mut both = honest.clone().into_bytes();
            both.extend_from_slice(extra.as_bytes());
            body.extend_from_slice(&chunk(rng, &both));
            body.extend_from_slice(b"0\r\n\r\n");
            body.len()
        }
    };
    if rng.chance(60) {
        body.extend_from_slice(extra.as_bytes());
    }
    let status = rng.pick(&[
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 200",
        "HTTP/1.1 200 ",
        "HTTP/1.2 200 OK",
        "HTTP/1.1 2000 OK",
    ]);
    let mut message = String::new();
    match rng.below(8) {
        0 => message.push_str("HTTP/1.1 100 Continue\r\n\r\n"),
        1 => message.push_str("HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"),
        _ => {}
    }
    message.push_str(status);
    message.push_str("\r\n");
    if rng.chance(15) {
        let fields = ["Connection: close\r\n", "Connection: keep-alive\r\n"];
        let field = *rng.pick(&fields);
        message.push_str(field);
    }
    for field in framing(rng, body.len(), part) {
        message.push_str(&field);
        message.push_str("\r\n");
    }
    message.push_str("\r\n");
    let mut bytes = message.into_bytes();
    let head_end = bytes.len();
    bytes.extend_from_slice(&body);
    mutate(rng, &mut bytes, 0, head_end + body.len().min(12));
    bytes
}

// ---------------------------------------------------------------------------------
// The backend.

/// A backend that reads what the gateway sends it strictly: each request it reads is
/// recorded and answered with its own target as the body (or, for the targets in
/// `answers`, with the bytes given there); anything it cannot read strictly is
/// recorded as a fault and its connection closed.
struct Recorder {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    accepted: Arc<AtomicUsize>,
}

/// What a [`Recorder`]'s connections share.
#[derive(Default)]
struct Log {
    /// The targets of the requests read, in order.
    seen: Vec<String>,
    faults: Vec<String>,
    /// Target → the answer's bytes, and whether the connection closes after them.
    answers: HashMap<String, (Vec<u8>, bool)>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recorder = Recorder {
            addr: listener.local_addr().unwrap(),
            log: Arc::default(),
            accepted: Arc::default(),
        };
        let (log, accepted) = (Arc::clone(&recorder.log), Arc::clone(&recorder.accepted));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, SeqCst);
                tokio::spawn(Recorder::serve(stream, Arc::clone(&log)));
            }
        });
        recorder
    }

    async fn serve(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
        let mut buf = Vec::new();
        loop {
            match read_request(&buf, Mode::Strict) {
                Step::Done(request) => {
                    let given = {
                        let mut log = log.lock().unwrap();
                        log.seen.push(request.target.clone());
                        log.answers.get(&request.target).cloned()
                    };
                    let (answer, close) = given.unwrap_or_else(|| {
                        let target = &request.target;
                        let body = if request.head { "" } else { target };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            target.len()
                        );
                        (answer.into_bytes(), false)
                    });
                    buf.drain(..request.len);
                    if stream.write_all(&answer).await.is_err() || close || !request.persists {
                        return;
                    }
                }
                Step::Partial { .. } => {
                    let mut chunk = [0; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                Step::Invalid { why, .. } => {
                    let fault = format!("{why}: \"{}\"", shown(&buf));
                    log.lock().unwrap().faults.push(fault);
                    return;
                }
            }
        }
    }

    /// Answers `target` with `answer`, closing the connection after it if `close`.
    fn answer(&self, target: String, answer: Vec<u8>, close: bool) {
        self.log
            .lock()
            .unwrap()
            .answers
            .insert(target, (answer, close));
    }

    /// The targets of case `n` it has read, in order.
    fn seen_in(&self, n: usize) -> Vec<String> {
        let prefix = format!("/c{n:05}/");
        let log = self.log.lock().unwrap();
        log.seen
            .iter()
            .filter(|target| target.starts_with(&prefix))
            .cloned()
            .collect()
    }

    fn faults(&self) -> Vec<String> {
        self.log.lock().unwrap().faults.clone()
    }
}

/// A gateway for `app.test` in front of `backend`, with short timeouts so that a
/// message it waits on forever costs a case seconds, not minutes.
async fn gateway_for(backend: &Recorder) -> Gateway {
    let config = ProxyConfig {
        first_byte_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        ..ProxyConfig::default()
    };
    let routes = vec![route("app", &["app.test"], &[(backend.addr, 1)])];
    Gateway::start_with(routes, config, BackendConfig::default()).await
}

/// Everything the peer sends on `stream` until it closes, or until 10 s of nothing.
async fn read_to_close(stream: &mut TcpStream) -> Result<Vec<u8>, Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        let mut chunk = [0; 4096];
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(bytes),
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(bytes),
        }
    }
}

/// The answers in `bytes` (strictly read), to requests none of which was `HEAD`;
/// an error if they do not read strictly, or if one is cut off.
fn answers(mut bytes: &[u8]) -> Result<Vec<Answered>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match read_response(bytes, false, Mode::Strict) {
            Step::Done(answer) => {
                bytes = &bytes[answer.len..];
                out.push(answer);
            }
            Step::Partial { .. } => return Err("an answer cut off".into()),
            Step::Invalid { why, .. } => return Err(why),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The tests.

#[test]
fn the_reading_here_is_the_rfcs() {
    // A request read every way the RFC allows, and the ones it does not.
    let read = |bytes: &[u8], mode| match read_request(bytes, mode) {
        Step::Done(request) => Ok((request.target, request.len, request.persists)),
        Step::Partial { start } => Err(format!("partial {}", start.is_some())),
        Step::Invalid { why, .. } => Err(why),
    };
    let plain = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        read(plain, Mode::Strict),
        Ok(("/a".into(), plain.len(), true))
    );
    let lf = b"\r\nGET /a HTTP/1.0\nHost: x\nContent-Length: 2, 2\n\nabGET";
    assert_eq!(
        read(lf, Mode::Lenient),
        Ok(("/a".into(), lf.len() - 3, false))
    );
    assert_eq!(
        read(lf, Mode::Strict),
        Err("an empty line before the start line".into())
    );
    let chunked =
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    assert_eq!(
        read(chunked, Mode::Strict),
        Ok(("/a".into(), chunked.len(), true))
    );
    assert_eq!(
        read(&chunked[..chunked.len() - 1], Mode::Strict),
        Err("partial true".into())
    );
    for (bytes, why) in [
        (
            &b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "Transfer-Encoding beside Content-Length, or in HTTP/1.0",
        ),
        (
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "Content-Lengths that differ",
        ),
        (
            b"POST /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "a Content-Length that is not a number",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "chunked applied twice, or not last",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "a request coding that does not end in chunked",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            "a transfer coding that is not a token",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "a field name that is not a token",
        ),
        (
            b"POST /a HTTP/1.1\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
            "a folded line, or one that starts with whitespace",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
            "bytes after a chunk size",
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            "a chunk size over 64 bits",
        ),
        (b"GET /a HTTP/1.1\r\nX: a\rb\r\n\r\n", "a bare CR"),
        (b"GET /a HTTP/1.2\r\n\r\n", "version \"HTTP/1.2\""),
    ] {
        assert_eq!(
            read(bytes, Mode::Lenient),
            Err(why.to_string()),
            "{}",
            shown(bytes)
        );
    }
    // Strictly, a length once and a coding alone.
    let twice = b"POST /a HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\na";
    assert!(read(twice, Mode::Lenient).is_ok());
    assert_eq!(
        read(twice, Mode::Strict),
        Err("a Content-Length that is not a number".into())
    );

    // Responses: interim answers skipped, the body by HEAD, status, coding, length,
    // or the connection's end.
    let answer = |bytes: &[u8], head: bool| match read_response(bytes, head, Mode::Lenient) {
        Step::Done(a) => Ok((
            a.status,
            String::from_utf8(a.body).unwrap(),
            a.len,
            a.to_close,
            a.doubtful,
        )),
        Step::Partial { .. } => Err("partial".to_string()),
        Step::Invalid { why, .. } => Err(why),
    };
    let hinted = b"HTTP/1.1 103 Early Hints\r\nLink: <x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP";
    assert_eq!(
        answer(hinted, false),
        Ok((200, "ok".into(), hinted.len() - 4, false, false))
    );
    assert_eq!(
        answer(hinted, true),
        Ok((200, "".into(), hinted.len() - 6, false, false))
    );
    let both = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    assert_eq!(
        answer(both, false),
        Ok((200, "ok".into(), both.len(), false, true))
    );
    let to_close = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nokok";
    assert_eq!(
        answer(to_close, false),
        Ok((200, "okok".into(), to_close.len(), true, false))
    );
    let empty = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n";
    assert_eq!(
        answer(empty, false),
        Ok((304, "".into(), empty.len(), false, false))
    );
    assert_eq!(
        answer(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        ),
        Err("Transfer-Encoding in HTTP/1.0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_hidden_in_another_reaches_a_backend() {
    let backend = Recorder::start().await;
    let gateway = gateway_for(&backend).await;
    let seed = seed();
    let mut rng = Rng(seed);
    let mut runs = Vec::new();
    for n in 0..cases() {
        let bytes = request_case(&mut rng, n);
        let trickled = rng.chance(20);
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        // The gateway may close as soon as it has refused what came first.
        if trickled {
            for piece in bytes.chunks(bytes.len() / 3 + 1) {
                if stream.write_all(piece).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } else {
            let _ = stream.write_all(&bytes).await;
        }
        let _ = stream.shutdown().await;
        let answered = read_to_close(&mut stream).await;
        runs.push((n, bytes, answered));
    }
    // What the gateway sent on may still be on its way to the backend.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for (n, bytes, answered) in runs {
        let answered = answered.unwrap_or_else(|got| {
            panic!(
                "the gateway kept the connection 10 s after the client's end, having \
                 sent \"{}\": seed {seed}, case {n}: \"{}\"",
                shown(&got),
                shown(&bytes)
            )
        });
        let case = || {
            format!(
                "seed {seed}, case {n}: \"{}\", answered \"{}\"",
                shown(&bytes),
                shown(&answered)
            )
        };
        // The RFC's reading of the client's bytes.
        let mut read = Vec::new();
        let mut last = None;
        let mut rest = &bytes[..];
        loop {
            match read_request(rest, Mode::Lenient) {
                Step::Done(request) => {
                    read.push(request.target);
                    rest = &rest[request.len..];
                    if !request.persists || rest.is_empty() {
                        break;
                    }
                }
                Step::Partial { start } | Step::Invalid { start, .. } => {
                    last = start;
                    break;
                }
            }
        }
        // The backend read no request but those, in order; besides them, only the
        // request at which that reading stopped may have gone on (refused or not, its
        // head was whole), and nothing after it.
        let seen = backend.seen_in(n);
        let mut unread = read.iter();
        for (i, target) in seen.iter().enumerate() {
            if unread.any(|t| t == target) {
                continue;
            }
            let stopped_at = last.as_deref().is_some_and(|start| {
                String::from_utf8_lossy(start).contains(&format!(" {target} "))
            });
            assert!(
                stopped_at && i == seen.len() - 1,
                "the backend read {target} (of {seen:?}), which the client's bytes do not \
                 hold as a request ({read:?}): {}",
                case()
            );
        }
        // The client got strictly framed answers, nothing cut off, and those from the
        // backend are for the requests it read, in order.
        let answers =
            answers(&answered).unwrap_or_else(|why| panic!("the client got {why}: {}", case()));
        // (A mutation may have taken a request out of the case's targets.)
        let prefix = format!("/c{n:05}/");
        let served: Vec<String> = answers
            .iter()
            .filter(|a| a.status == 200)
            .map(|a| String::from_utf8_lossy(&a.body).into_owned())
            .filter(|target| target.starts_with(&prefix))
            .collect();
        assert!(
            seen.starts_with(&served),
            "the client got answers for {served:?}, the backend read {seen:?}: {}",
            case()
        );
        for answer in &answers {
            *statuses.entry(answer.status).or_default() += 1;
        }
    }
    let faults = backend.faults();
    assert!(
        faults.is_empty(),
        "the backend could not read strictly: {faults:#?}"
    );
    // The cases reach both sides of the proxy's decisions; and a request the client
    // broke is its own error (400), not the backend's (502).
    eprintln!("answers by status: {statuses:?}");
    assert!(statuses.get(&200).is_some_and(|n| *n > cases() / 10));
    assert!(statuses.get(&400).is_some_and(|n| *n > cases() / 10));
    assert!(!statuses.contains_key(&502), "{statuses:?}");
}

/// How a client asks in the response test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Http11,
    Head11,
    Http10,
    Http2,
}

/// What a client got for one request: the status and body, the status of an answer
/// whose body broke off, or nothing.
#[derive(Debug, PartialEq)]
enum Got {
    Whole(u16, Vec<u8>),
    CutOff(u16),
    Nothing,
}

/// Asks for `path` on a fresh connection, `way`; for HTTP/1.x, the client bytes must
/// read strictly, with nothing after the one answer.
async fn ask(addr: SocketAddr, way: Way, path: &str) -> Result<Got, String> {
    if way == Way::Http2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("http://app.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let asked = tokio::time::timeout(Duration::from_secs(10), async {
            let Ok(response) = sender.send_request(req).await else {
                return Got::Nothing;
            };
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(body) => Got::Whole(status, body.to_bytes().to_vec()),
                Err(_) => Got::CutOff(status),
            }
        });
        return asked.await.map_err(|_| "no answer in 10 s".to_string());
    }
    let (method, version) = match way {
        Way::Head11 => ("HEAD", "1.1"),
        Way::Http10 => ("GET", "1.0"),
        _ => ("GET", "1.1"),
    };
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/{version}\r\nHost: app.test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let bytes = read_to_close(&mut stream)
        .await
        .map_err(|got| format!("no end in 10 s after \"{}\"", shown(&got)))?;
    if bytes.is_empty() {
        return Ok(Got::Nothing);
    }
    match read_response(&bytes, way == Way::Head11, Mode::Strict) {
        Step::Done(answer) if answer.len == bytes.len() => {
            Ok(Got::Whole(answer.status, answer.body))
        }
        Step::Done(_) => Err(format!("bytes after the answer: \"{}\"", shown(&bytes))),
        Step::Partial { start: Some(start) } => {
            let status = start
                .get(9..12)
                .and_then(|code| std::str::from_utf8(code).ok());
            Ok(Got::CutOff(
                status.and_then(|s| s.parse().ok()).unwrap_or(0),
            ))
        }
        Step::Partial { start: None } => Err(format!("a head cut off: \"{}\"", shown(&bytes))),
        Step::Invalid { why, .. } => Err(format!("{why}: \"{}\"", shown(&bytes))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_gets_an_answer_meant_for_another_request() {
    let backend = Recorder::start().await;
    let gateway = gateway_for(&backend).await;
    let seed = seed();
    let mut rng = Rng(seed ^ 0xa5a5);
    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    for n in 0..cases() {
        let way = *rng.pick(&[
            Way::Http11,
            Way::Http11,
            Way::Head11,
            Way::Http10,
            Way::Http2,
        ]);
        let bytes = response_case(&mut rng, n);
        let reading = read_response(&bytes, way == Way::Head11, Mode::Lenient);
        // The backend closes after an answer that runs to the close or cannot be read;
        // it keeps the connection after any other, and the bytes after it on it.
        let close = !matches!(&reading, Step::Done(a) if !a.to_close);
        backend.answer(format!("/c{n:05}/a"), bytes.clone(), close);
        let case = || format!("seed {seed}, case {n}, {way:?}: \"{}\"", shown(&bytes));

        let got = ask(gateway.addr, way, &format!("/c{n:05}/a"))
            .await
            .unwrap_or_else(|why| panic!("the client got {why}: {}", case()));
        let outcome = match (&reading, &got) {
            (_, Got::Whole(502, _)) => "refused",
            (Step::Done(a), Got::Whole(status, body)) if (*status, body) == (a.status, &a.body) => {
                "passed on"
            }
            (Step::Done(a), Got::CutOff(status)) if a.to_close && *status == a.status => {
                "cut off at the close"
            }
            (Step::Invalid { .. } | Step::Partial { .. }, Got::CutOff(_) | Got::Nothing) => {
                "cut off"
            }
            _ => panic!(
                "the client got {got:?} for an answer read as {}: {}",
                match &reading {
                    Step::Done(a) => format!("{a:?}"),
                    Step::Partial { .. } => "cut off".into(),
                    Step::Invalid { why, .. } => why.clone(),
                },
                case()
            ),
        };
        *outcomes.entry(outcome).or_default() += 1;

        // The next request gets its own answer, on whatever backend connection.
        let next = format!("/c{n:05}/b");
        let got = ask(gateway.addr, way, &next)
            .await
            .unwrap_or_else(|why| panic!("the next request got {why}: {}", case()));
        let own = if way == Way::Head11 {
            Vec::new()
        } else {
            next.clone().into_bytes()
        };
        assert_eq!(got, Got::Whole(200, own), "the next request: {}", case());
        let seen = backend.seen_in(n);
        assert_eq!(seen, [format!("/c{n:05}/a"), next], "{}", case());
    }
    let faults = backend.faults();
    assert!(
        faults.is_empty(),
        "the backend could not read strictly: {faults:#?}"
    );
    // Connections were kept for the next request: that is where a desync would show.
    let accepted = backend.accepted.load(SeqCst);
    eprintln!("outcomes: {outcomes:?}; {accepted} backend connections");
    assert!(
        accepted < cases() * 2 * 9 / 10,
        "{accepted} backend connections"
    );
    assert!(outcomes.get("passed on").is_some_and(|n| *n > cases() / 10));
    assert!(outcomes.get("refused").is_some_and(|n| *n > cases() / 10));
}
