//! Request and response heads on the HTTP/1.1 path: parsed in place with httparse,
//! checked, and written out again for the other side, rewritten as `headers` does for
//! the hyper path (hop-by-hop headers stripped both ways, `X-Forwarded-*` and `Via`
//! added to requests).
//!
//! A request this path does not take on (see [`request`]) is handed to hyper
//! unparsed, which answers it or refuses it with the right status.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::framing::Framing;
// A longer head is refused: a request's with 431 (whatever else it is, so hyper never
// sees it), a response's as a backend error.
use crate::proxy::MAX_HEAD;

/// Header lines read at most; a head with more goes to hyper (which refuses it).
const MAX_HEADERS: usize = 100;
/// `Connection` tokens a message may name; one naming more goes to hyper.
const MAX_TOKENS: usize = 8;

/// What a parse came to.
pub(super) enum Parse<T> {
    /// The head is not complete yet.
    Partial,
    Done(T),
    /// Not for this path: HTTP/1.0, an upgrade, `CONNECT`, a target not in origin
    /// form, an unusual or invalid head. hyper takes the connection from here.
    HandOver,
    /// A head over [`MAX_HEAD`], whole or not: refused here (431), whatever it is.
    TooLong,
}

/// A client's request, checked; its head for the backend is in the `out` of
/// [`request`].
#[derive(Debug)]
pub(super) struct RequestHead {
    /// Length of the head in the buffer (the body, or the next request, follows).
    pub(super) len: usize,
    /// Where the `Host` value sits in the buffer.
    pub(super) host: Range<usize>,
    pub(super) framing: Framing,
    /// The client keeps the connection open after the response.
    pub(super) keep_alive: bool,
    /// `HEAD`: the response has no body, whatever its head says.
    pub(super) is_head: bool,
    /// Safe to send again after a failed connect (RFC 9110 §9.2.2), when bodiless.
    pub(super) idempotent: bool,
    /// `Expect: 100-continue`: the proxy answers it itself when it starts sending the
    /// body on (as hyper's server does on the other path), and does not forward it.
    pub(super) expect_continue: bool,
}

/// The method and the target of the request line at the start of `buf`, for the
/// access log of a request refused before it was parsed: the target is empty if the
/// line has not ended, and both are if it has no space.
pub(super) fn request_line(buf: &[u8]) -> (&[u8], &[u8]) {
    let (line, ended) = match buf.iter().position(|byte| *byte == b'\n') {
        Some(end) => (&buf[..end], true),
        None => (buf, false),
    };
    let mut parts = line.split(|byte| *byte == b' ');
    match (parts.next(), parts.next()) {
        (Some(method), Some(target)) if ended => (method, target),
        (Some(method), Some(_)) => (method, b""),
        _ => (b"", b""),
    }
}

/// Parses the request at the start of `buf`; when it is one to take, writes the head
/// the backend gets to `out` (replacing what it held), with `X-Forwarded-Proto: proto`.
pub(super) fn request(
    buf: &[u8],
    client_ip: &[u8],
    proto: &[u8],
    out: &mut Vec<u8>,
) -> Parse<RequestHead> {
    // Header slots are left uninitialised until httparse fills them: zeroing a hundred
    // cost more than parsing the usual head.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let len = match parser.parse_request_with_uninit_headers(&mut req, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parse::Partial,
        Ok(_) => return Parse::TooLong,
        Err(_) => return Parse::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::HandOver;
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return Parse::HandOver;
    }

    // One pass over the headers: each name looked at once, by length first.
    let mut connection = Connection::default();
    let mut host = None;
    let mut hosts = 0;
    let mut length = None;
    let mut chunked = false;
    let mut has_upgrade = false;
    let mut expect_continue = false;
    let mut kinds = [Name::Other; MAX_HEADERS];
    let mut first_length = None;
    for (i, (header, kind)) in req.headers.iter().zip(&mut kinds).enumerate() {
        *kind = Name::of(header.name);
        match kind {
            Name::Host => {
                hosts += 1;
                host = Some(offset(buf, header.value));
            }
            Name::ContentLength => match (content_length(header.value), length) {
                (Some(n), None) => {
                    length = Some(n);
                    first_length = Some(i);
                }
                (Some(n), Some(before)) if n == before => {}
                _ => return Parse::HandOver,
            },
            Name::TransferEncoding => {
                if chunked || !trimmed(header.value).eq_ignore_ascii_case(b"chunked") {
                    return Parse::HandOver;
                }
                chunked = true;
            }
            Name::Upgrade => has_upgrade = true,
            Name::Expect => {
                // Any other expectation is hyper's to refuse (417).
                if expect_continue || !trimmed(header.value).eq_ignore_ascii_case(b"100-continue") {
                    return Parse::HandOver;
                }
                expect_continue = true;
            }
            Name::Connection if !connection.add(header.value) => return Parse::HandOver,
            _ => {}
        }
    }
    let (Some(host), 1) = (host, hosts) else {
        return Parse::HandOver;
    };
    if (chunked && length.is_some()) || (has_upgrade && connection.has(b"upgrade")) {
        return Parse::HandOver;
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Empty,
    };

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Hop-by-hop headers, what `Connection` names, the forwarding headers (set below)
    // and `Expect` (answered here) stay behind; of lengths repeated with one value,
    // the first goes on alone, so that no backend has two to choose from.
    kept_lines(buf, len, req.headers, out, |i, header| {
        let kept = match kinds[i] {
            Name::Other | Name::Host => true,
            Name::ContentLength => Some(i) == first_length,
            _ => false,
        };
        kept && !connection.names(header.name)
    });
    let listed = |kind: Name| {
        req.headers
            .iter()
            .zip(&kinds)
            .filter(move |(_, k)| **k == kind)
            .map(|(header, _)| header.value)
    };
    list_line(
        out,
        "x-forwarded-for",
        listed(Name::XForwardedFor),
        client_ip,
    );
    line(out, b"x-forwarded-proto", proto);
    line(out, b"x-forwarded-host", &buf[host.clone()]);
    list_line(out, "via", listed(Name::Via), b"1.1 switchyard");
    if chunked {
        line(out, b"transfer-encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");

    Parse::Done(RequestHead {
        len,
        host,
        framing,
        keep_alive: !connection.has(b"close"),
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        expect_continue,
    })
}

/// A backend's response head, checked; its head for the client is in the `out` of
/// [`response`].
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) len: usize,
    pub(super) status: u16,
    /// Of the body that follows; [`Framing::Empty`] for an interim (1xx) response.
    pub(super) framing: Framing,
    /// The backend keeps the connection open after it (HTTP/1.1, no `close`).
    pub(super) keep_alive: bool,
}

/// A response head the proxy cannot pass on.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadResponse {
    #[error("an answer head that does not parse ({0})")]
    Parse(httparse::Error),
    #[error("an answer head over {MAX_HEAD} bytes")]
    TooLong,
    #[error("a 101 to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("an answer with status {0}, outside 100 to 599")]
    Status(u16),
    #[error("an answer with unsupported or conflicting framing headers")]
    Framing,
}

/// Parses the response at the start of `buf` (the answer to a `HEAD` when
/// `to_head`); when complete, writes the head the client gets to `out` (appending),
/// with `Connection: close` when `close` or when only the backend closing ends the
/// body.
pub(super) fn response(
    buf: &[u8],
    to_head: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, BadResponse> {
    checked_response(buf, to_head, false, |res, len, checked| {
        let status = checked.head.status;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&[
            b'0' + (status / 100 % 10) as u8,
            b'0' + (status / 10 % 10) as u8,
            b'0' + (status % 10) as u8,
            b' ',
        ]);
        out.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
        out.extend_from_slice(b"\r\n");
        kept_lines(buf, len, res.headers, out, |i, header| {
            checked.keeps(i, header)
        });
        if checked.head.framing == Framing::Chunked {
            line(out, b"transfer-encoding", b"chunked");
        }
        if close || checked.head.framing == Framing::UntilClose {
            line(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        Ok(checked.head)
    })
}

/// [`response`] for a client that hyper serves (HTTP/2, HTTP/1.0, upgrades): the
/// head's status and the headers the client may see, as hyper takes them, beside what
/// the proxy reads of it. hyper frames the body for its client itself. With `upgrade`
/// (the request asked for one), a `101` is the final answer, with its `Upgrade` and
/// `Connection: upgrade`; the bytes after it are the new protocol's.
pub(super) fn response_parts(
    buf: &[u8],
    to_head: bool,
    upgrade: bool,
) -> Result<Option<(ResponseHead, http::response::Parts)>, BadResponse> {
    checked_response(buf, to_head, upgrade, |res, len, checked| {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status =
            http::StatusCode::from_u16(checked.head.status).map_err(|_| BadResponse::Framing)?;
        parts.headers.reserve(res.headers.len());
        // One copy of the head, whose values the kept headers share, rather than an
        // allocation for each value.
        let head = bytes::Bytes::copy_from_slice(&buf[..len]);
        for (i, header) in res.headers.iter().enumerate() {
            if !checked.keeps(i, header) {
                continue;
            }
            let name = http::HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| BadResponse::Framing)?;
            // `httparse` gives slices of `buf`.
            let start = header.value.as_ptr() as usize - buf.as_ptr() as usize;
            let value = head.slice(start..start + header.value.len());
            let value =
                http::HeaderValue::from_maybe_shared(value).map_err(|_| BadResponse::Framing)?;
            parts.headers.append(name, value);
        }
        if checked.switching {
            parts.headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
        }
        Ok((checked.head, parts))
    })
}

/// What the checks of a response head found: its framing, and which of its headers
/// go on.
struct Checked<'b> {
    head: ResponseHead,
    /// The first `Content-Length`: one repeated with the same value goes on once.
    first_length: Option<usize>,
    kinds: [Name; MAX_HEADERS],
    connection: Connection<'b>,
    chunked: bool,
    /// A `101` to a request that asked for an upgrade: its `Upgrade` goes on.
    switching: bool,
}

impl Checked<'_> {
    /// Whether header `i` goes on to the client: not hop-by-hop (but a switch's
    /// `Upgrade`), not named by `Connection`, not a length beside chunked framing nor a
    /// repeated one.
    fn keeps(&self, i: usize, header: &httparse::Header<'_>) -> bool {
        if self.switching && self.kinds[i] == Name::Upgrade {
            return true;
        }
        !(self.kinds[i].is_hop_by_hop()
            || self.connection.names(header.name)
            || (self.kinds[i] == Name::ContentLength
                && (self.chunked || Some(i) != self.first_length)))
    }
}

/// Parses and checks the response at the start of `buf`; when it is complete and may
/// be passed on, `write` makes of it what the caller needs. A `101` passes only when
/// the request asked for an `upgrade`.
fn checked_response<T>(
    buf: &[u8],
    to_head: bool,
    upgrade: bool,
    write: impl FnOnce(&httparse::Response<'_, '_>, usize, Checked<'_>) -> Result<T, BadResponse>,
) -> Result<Option<T>, BadResponse> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut headers)
        .map_err(BadResponse::Parse)?
    {
        httparse::Status::Complete(len) if len <= MAX_HEAD => len,
        httparse::Status::Partial if buf.len() <= MAX_HEAD => return Ok(None),
        _ => return Err(BadResponse::TooLong),
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(BadResponse::Framing);
    };
    let switching = status == 101;
    if switching && !upgrade {
        return Err(BadResponse::UnaskedUpgrade);
    }
    // httparse takes any three digits: below 100 a status would pass for an interim
    // answer, with the real one still to come (RFC 9110 §15: 100 to 599 only).
    if !(100..=599).contains(&status) {
        return Err(BadResponse::Status(status));
    }
    let mut connection = Connection::default();
    let mut length = None;
    let mut coding: Option<&[u8]> = None;
    let mut kinds = [Name::Other; MAX_HEADERS];
    let mut first_length = None;
    for (i, (header, kind)) in res.headers.iter().zip(&mut kinds).enumerate() {
        *kind = Name::of(header.name);
        match kind {
            Name::ContentLength => match (content_length(header.value), length) {
                (Some(n), None) => {
                    length = Some(n);
                    first_length = Some(i);
                }
                (Some(n), Some(before)) if n == before => {}
                _ => return Err(BadResponse::Framing),
            },
            Name::TransferEncoding => {
                if coding.is_some() {
                    return Err(BadResponse::Framing);
                }
                coding = Some(header.value);
            }
            Name::Connection if !connection.add(header.value) => {
                return Err(BadResponse::Framing);
            }
            _ => {}
        }
    }
    let bodiless = to_head || status < 200 || status == 204 || status == 304;
    let framing = match (bodiless, coding, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(coding), _) => {
            // Chunked alone: a coding before it could not reach an HTTP/2 client (the
            // hyper path), and nothing but chunked is in use; nginx refuses it too.
            // HTTP/1.0 has no chunked coding: such a message's framing is faulty
            // (RFC 9112 §6.1), whatever else its head says.
            if version == 0 || !trimmed(coding).eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse::Framing);
            }
            Framing::Chunked
        }
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::UntilClose,
    };
    // After a switch the connection speaks another protocol: never pooled again.
    let keep_alive = version == 1 && !connection.has(b"close") && !switching;
    let checked = Checked {
        head: ResponseHead {
            len,
            status,
            framing,
            keep_alive,
        },
        first_length,
        kinds,
        connection,
        chunked: coding.is_some(),
        switching,
    };
    write(&res, len, checked).map(Some)
}

/// The tokens of a message's `Connection` headers.
#[derive(Default)]
struct Connection<'a> {
    tokens: [&'a [u8]; MAX_TOKENS],
    count: usize,
}

impl<'a> Connection<'a> {
    /// Adds the tokens of one `Connection` header; `false` when there are more than
    /// [`MAX_TOKENS`] in all.
    fn add(&mut self, value: &'a [u8]) -> bool {
        for token in value.split(|&b| b == b',') {
            let token = trimmed(token);
            if token.is_empty() {
                continue;
            }
            let Some(slot) = self.tokens.get_mut(self.count) else {
                return false;
            };
            *slot = token;
            self.count += 1;
        }
        true
    }

    fn has(&self, token: &[u8]) -> bool {
        self.tokens[..self.count]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// Whether header `name` is one `Connection` names as hop-by-hop (never `Host`).
    fn names(&self, name: &str) -> bool {
        self.count > 0 && !name.eq_ignore_ascii_case("host") && self.has(name.as_bytes())
    }
}

/// What a header is to the proxy, told from its name: by its length first, so that
/// most names are compared with nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Via,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`: the other hop-by-hop headers.
    OtherHopByHop,
    Other,
}

impl Name {
    fn of(name: &str) -> Name {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is("te") => Name::OtherHopByHop,
            3 if is("via") => Name::Via,
            4 if is("host") => Name::Host,
            6 if is("expect") => Name::Expect,
            7 if is("upgrade") => Name::Upgrade,
            7 if is("trailer") => Name::OtherHopByHop,
            10 if is("connection") => Name::Connection,
            10 if is("keep-alive") => Name::OtherHopByHop,
            14 if is("content-length") => Name::ContentLength,
            15 if is("x-forwarded-for") => Name::XForwardedFor,
            16 if is("proxy-connection") => Name::OtherHopByHop,
            16 if is("x-forwarded-host") => Name::XForwardedHost,
            17 if is("transfer-encoding") => Name::TransferEncoding,
            17 if is("x-forwarded-proto") => Name::XForwardedProto,
            _ => Name::Other,
        }
    }

    /// One of the hop-by-hop headers every message loses (RFC 9110 §7.6.1), the same
    /// list the hyper path strips (a test holds them equal).
    fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::TransferEncoding | Name::Upgrade | Name::OtherHopByHop
        )
    }
}

/// Writes the header lines of the head `buf[..len]` that `keep` keeps to `out`, as they
/// came: each run of kept lines in one copy. A line that ends in a bare LF (which
/// httparse accepts) is written anew, with CRLF.
fn kept_lines(
    buf: &[u8],
    len: usize,
    headers: &[httparse::Header<'_>],
    out: &mut Vec<u8>,
    keep: impl Fn(usize, &httparse::Header<'_>) -> bool,
) {
    let Some(first) = headers.first() else {
        return;
    };
    // Where the empty line that ends the head begins.
    let block_end = if buf[len - 2] == b'\r' {
        len - 2
    } else {
        len - 1
    };
    let mut start = offset(buf, first.name.as_bytes()).start;
    let mut run = None;
    for (i, header) in headers.iter().enumerate() {
        let end = headers
            .get(i + 1)
            .map_or(block_end, |next| offset(buf, next.name.as_bytes()).start);
        let kept = keep(i, header);
        if kept && buf[..end].ends_with(b"\r\n") {
            run.get_or_insert(start);
        } else {
            if let Some(from) = run.take() {
                out.extend_from_slice(&buf[from..start]);
            }
            if kept {
                line(out, header.name.as_bytes(), header.value);
            }
        }
        start = end;
    }
    if let Some(from) = run {
        out.extend_from_slice(&buf[from..block_end]);
    }
}

/// Writes list header `name` as one line: the `values` it had (if any), joined with
/// ", ", then `added`.
fn list_line<'a>(
    out: &mut Vec<u8>,
    name: &str,
    values: impl Iterator<Item = &'a [u8]>,
    added: &[u8],
) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for value in values {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(added);
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only, at most 18 of them.
fn content_length(value: &[u8]) -> Option<u64> {
    let value = trimmed(value);
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0, |n, digit| n * 10 + u64::from(digit - b'0')),
    )
}

fn trimmed(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

/// Where `part`, a slice of `buf`, sits in it.
fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::Rng;

    fn rewrite(req: &str) -> Parse<(RequestHead, String)> {
        let mut out = Vec::new();
        match request(req.as_bytes(), b"10.1.2.3", b"http", &mut out) {
            Parse::Done(head) => Parse::Done((head, String::from_utf8(out).unwrap())),
            Parse::Partial => Parse::Partial,
            Parse::HandOver => Parse::HandOver,
            Parse::TooLong => Parse::TooLong,
        }
    }

    #[test]
    fn a_request_is_rewritten_for_its_backend() {
        let req = "GET /a?b HTTP/1.1\r\nHost: App.Test\r\nConnection: keep-alive, X-Hop\r\n\
                   X-Hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\
                   X-Forwarded-Proto: https\r\nVia: 1.0 edge\r\nExpect: 100-continue\r\nX-Kept: yes\r\n\r\nnext";
        let Parse::Done((head, out)) = rewrite(req) else {
            panic!("not taken")
        };
        assert_eq!(head.len, req.len() - 4);
        assert_eq!(&req[head.host.clone()], "App.Test");
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive && head.idempotent && head.expect_continue && !head.is_head);
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: App.Test\r\nX-Kept: yes\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.1.2.3\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: App.Test\r\nvia: 1.0 edge, 1.1 switchyard\r\n\r\n"
        );
    }

    #[test]
    fn bodies_and_close_are_read_from_the_head() {
        let Parse::Done((head, out)) = rewrite(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n",
        ) else {
            panic!("not taken")
        };
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.keep_alive && !head.idempotent);
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
        let Parse::Done((head, out)) =
            rewrite("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\ncontent-length:12\r\n\r\n")
        else {
            panic!("not taken")
        };
        assert_eq!(head.framing, Framing::Length(12));
        // One length reaches the backend, which has no two to choose from.
        assert_eq!(out.matches("ength:").count(), 1, "{out}");
        assert!(matches!(
            rewrite("GET / HTTP/1.1\r\nHost: a\r\n"),
            Parse::Partial
        ));
    }

    #[test]
    fn any_head_taken_reaches_the_backend_with_exactly_what_the_rules_keep() {
        const HEADERS: &[(&str, &str)] = &[
            ("Host", "app.test"),
            ("Host", "other.test"),
            ("Content-Length", "5"),
            ("Content-Length", "7"),
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "gzip"),
            ("Connection", "keep-alive"),
            ("Connection", "close"),
            ("Connection", "X-Secret, keep-alive"),
            ("Connection", "upgrade"),
            ("Upgrade", "websocket"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Sum"),
            ("Expect", "100-continue"),
            ("X-Forwarded-For", "192.0.2.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "forged.test"),
            ("Via", "1.0 edge"),
            ("X-Secret", "s"),
            ("X-Kept", "a b"),
            ("Accept", "*/*"),
            ("Cookie", "c=1; d=2"),
        ];
        let ours = [
            "expect",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "via",
        ];
        let hop_or_ours = [HOP.as_slice(), &ours].concat();
        let mut rng = Rng(0x0DD_BA11_5EED);
        let mut taken = 0;
        for case in 0..3000 {
            let sent: Vec<(String, &str)> = (0..rng.below(9))
                .map(|_| {
                    let (name, value) = HEADERS[rng.below(HEADERS.len())];
                    // Names in any case.
                    let name: String = name
                        .chars()
                        .map(|c| match rng.below(3) {
                            0 => c.to_ascii_uppercase(),
                            1 => c.to_ascii_lowercase(),
                            _ => c,
                        })
                        .collect();
                    (name, value)
                })
                .collect();
            let method = ["GET", "POST", "HEAD"][rng.below(3)];
            let mut req = format!("{method} /p?q=1 HTTP/1.1\r\n");
            for (name, value) in &sent {
                req.push_str(&format!(
                    "{name}:{}{value}\r\n",
                    [" ", "", "\t "][rng.below(3)]
                ));
            }
            req.push_str("\r\nbody");
            let named = |wanted: &'static str| {
                sent.iter()
                    .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
                    .map(|(_, value)| *value)
            };
            let lengths: Vec<&str> = named("content-length").collect();
            let hosts: Vec<&str> = named("host").collect();
            let outcome = rewrite(&req);
            let Parse::Done((head, out)) = outcome else {
                assert!(matches!(outcome, Parse::HandOver), "case {case}: {req:?}");
                continue;
            };
            taken += 1;
            // Ambiguous framing or routing is never taken.
            assert_eq!(hosts.len(), 1, "case {case}: {req:?}");
            let chunked = named("transfer-encoding").next().is_some();
            assert!(!chunked || lengths.is_empty(), "case {case}: {req:?}");
            assert!(
                lengths.windows(2).all(|w| w[0] == w[1]),
                "case {case}: {req:?}"
            );
            let framing = match (chunked, lengths.first()) {
                (true, _) => Framing::Chunked,
                (false, Some(n)) => Framing::Length(n.parse().unwrap()),
                (false, None) => Framing::Empty,
            };
            assert_eq!(head.framing, framing, "case {case}: {req:?}");
            assert_eq!(&req[head.host.clone()], hosts[0]);

            // What the backend gets is one whole head, in the rules' words.
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut slots);
            let status = parsed.parse(out.as_bytes()).unwrap();
            assert_eq!(status, httparse::Status::Complete(out.len()), "{out:?}");
            assert_eq!(parsed.method, Some(method));
            assert_eq!(parsed.path, Some("/p?q=1"));
            let got: Vec<(String, &str)> = parsed
                .headers
                .iter()
                .map(|h| {
                    let value = std::str::from_utf8(h.value).unwrap();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect();
            // The end-to-end headers, in their order; nothing the client's `Connection`
            // names, nothing hop-by-hop, none of the forwarding headers it sent.
            let dropped_by_connection: Vec<&str> = named("connection")
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .collect();
            // Of lengths repeated, the first alone.
            let first_length = sent
                .iter()
                .position(|(name, _)| name.eq_ignore_ascii_case("content-length"));
            let kept: Vec<(String, &str)> = sent
                .iter()
                .enumerate()
                .map(|(i, (name, value))| (i, name.to_ascii_lowercase(), *value))
                .filter(|(i, name, _)| {
                    !hop_or_ours.contains(&name.as_str())
                        && name != "transfer-encoding"
                        && (name != "content-length" || Some(*i) == first_length)
                        && !dropped_by_connection
                            .iter()
                            .any(|n| n.eq_ignore_ascii_case(name))
                })
                .map(|(_, name, value)| (name, value))
                .collect();
            let end_to_end: Vec<(String, &str)> = got
                .iter()
                .filter(|(name, _)| {
                    !hop_or_ours.contains(&name.as_str()) && name != "transfer-encoding"
                })
                .cloned()
                .collect();
            assert_eq!(end_to_end, kept, "case {case}: {req:?} became {out:?}");
            // The forwarding headers, once each, the client's own entries first.
            let ours = |name: &str| -> Vec<&str> {
                got.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| *v)
                    .collect()
            };
            let mut chain: Vec<&str> = named("x-forwarded-for").collect();
            chain.push("10.1.2.3");
            assert_eq!(ours("x-forwarded-for"), [chain.join(", ")]);
            assert_eq!(ours("x-forwarded-proto"), ["http"]);
            assert_eq!(ours("x-forwarded-host"), [hosts[0]]);
            let mut via: Vec<&str> = named("via").collect();
            via.push("1.1 switchyard");
            assert_eq!(ours("via"), [via.join(", ")]);
            let framing_lines = ours("transfer-encoding");
            assert_eq!(
                framing_lines,
                if chunked { vec!["chunked"] } else { vec![] }
            );
            for hop in [
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "trailer",
            ] {
                assert!(ours(hop).is_empty(), "case {case}: {hop} in {out:?}");
            }
            assert!(ours("upgrade").is_empty() && ours("expect").is_empty());
        }
        // Enough heads were taken for the rules to have been checked.
        assert!(taken > 300, "{taken} of 3000 taken");
    }

    #[test]
    fn a_refused_requests_line_gives_what_it_holds() {
        type Case<'a> = (&'a [u8], (&'a [u8], &'a [u8]));
        let cases: [Case; 5] = [
            (b"GET /a?b HTTP/1.1\r\nX: y", (b"GET", b"/a?b")),
            (b"GET /a HTTP/1.1\nX: y", (b"GET", b"/a")),
            // The line has not ended: its target may be cut anywhere.
            (b"GET /aaaaaaaa", (b"GET", b"")),
            (b"GETTING", (b"", b"")),
            (b"", (b"", b"")),
        ];
        for (buf, want) in cases {
            assert_eq!(request_line(buf), want, "{}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn what_this_path_does_not_take_goes_to_hyper() {
        for req in [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: a, b, c, d, e, f, g, h, i\r\n\r\n",
        ] {
            assert!(matches!(rewrite(req), Parse::HandOver), "{req:?}");
        }
        // Too long, whole or not, whatever else it is.
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(rewrite(&endless), Parse::TooLong));
        let long = format!(
            "GET / HTTP/1.0\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(matches!(rewrite(&long), Parse::TooLong));
        let fits = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - 40)
        );
        assert!(matches!(rewrite(&fits), Parse::Done(_)));
    }

    #[test]
    fn any_answer_passed_on_frames_its_body_for_the_client_as_the_proxy_reads_it() {
        const HEADERS: &[(&str, &str)] = &[
            ("Content-Length", "5"),
            ("Content-Length", "7"),
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "gzip, chunked"),
            ("Connection", "close"),
            ("Connection", "keep-alive"),
            ("Connection", "X-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "h2c"),
            ("Trailer", "X-Sum"),
            ("Proxy-Connection", "close"),
            ("X-Secret", "s"),
            ("Set-Cookie", "a=1"),
            ("Content-Type", "text/plain"),
        ];
        let hop = HOP;
        let mut rng = Rng(0x00B0_D1E5);
        let (mut passed, mut refused) = (0, 0);
        for case in 0..3000 {
            let sent: Vec<(&str, &str)> = (0..rng.below(6))
                .map(|_| HEADERS[rng.below(HEADERS.len())])
                .collect();
            let status = [200, 204, 304, 103, 404, 500][rng.below(6)];
            let version = ["1.1", "1.0"][rng.below(2)];
            let (to_head, close) = (rng.below(4) == 0, rng.below(4) == 0);
            let mut res = format!("HTTP/{version} {status} Some Reason\r\n");
            for (name, value) in &sent {
                res.push_str(&format!("{name}: {value}\r\n"));
            }
            res.push_str("\r\n");
            let mut out = Vec::new();
            let head = match response(res.as_bytes(), to_head, close, &mut out) {
                Ok(head) => head.expect("a whole head"),
                Err(_) => {
                    refused += 1;
                    continue;
                }
            };
            passed += 1;
            let out = String::from_utf8(out).unwrap();
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            let parse = parsed.parse(out.as_bytes()).unwrap();
            assert_eq!(parse, httparse::Status::Complete(out.len()), "{out:?}");
            assert_eq!((parsed.version, parsed.code), (Some(1), Some(status)));
            let got: Vec<(String, &str)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        std::str::from_utf8(h.value).unwrap(),
                    )
                })
                .collect();
            let values = |name: &str| -> Vec<&str> {
                got.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| *v)
                    .collect()
            };
            // The client finds the body's end where the proxy does (RFC 9112 §6.3).
            let lengths = values("content-length");
            let codings = values("transfer-encoding");
            let closes = values("connection") == ["close"];
            let context = format!("case {case}: {res:?} became {out:?}");
            match head.framing {
                Framing::Empty => {
                    assert!(to_head || status < 200 || status == 204 || status == 304);
                }
                Framing::Chunked => {
                    assert_eq!(codings, ["chunked"], "{context}");
                    assert!(lengths.is_empty(), "{context}");
                }
                Framing::Length(n) => {
                    assert!(codings.is_empty(), "{context}");
                    assert!(!lengths.is_empty(), "{context}");
                    assert!(lengths.iter().all(|l| l.parse() == Ok(n)), "{context}");
                }
                Framing::UntilClose => {
                    assert!(codings.is_empty() && lengths.is_empty(), "{context}");
                    assert!(closes, "{context}");
                }
            }
            if close {
                assert!(closes, "{context}");
            }
            // End to end: what the backend's `Connection` does not name, in its order.
            let named: Vec<&str> = sent
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, value)| value.split(','))
                .map(str::trim)
                .collect();
            // A length beside a coding is dropped: the coding frames the body.
            let coded = sent
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
            // Of lengths repeated, the first alone.
            let first_length = sent
                .iter()
                .position(|(name, _)| name.eq_ignore_ascii_case("content-length"));
            let kept: Vec<(String, &str)> = sent
                .iter()
                .enumerate()
                .map(|(i, (name, value))| (i, name.to_ascii_lowercase(), *value))
                .filter(|(i, name, _)| {
                    !hop.contains(&name.as_str())
                        && !named.iter().any(|n| n.eq_ignore_ascii_case(name))
                        && (name != "content-length" || (!coded && Some(*i) == first_length))
                })
                .map(|(_, name, value)| (name, value))
                .collect();
            let end_to_end: Vec<(String, &str)> = got
                .iter()
                .filter(|(name, _)| !hop.contains(&name.as_str()))
                .cloned()
                .collect();
            assert_eq!(end_to_end, kept, "{context}");
            let backend_closes =
                version == "1.0" || named.iter().any(|n| n.eq_ignore_ascii_case("close"));
            assert_eq!(head.keep_alive, !backend_closes, "{context}");
        }
        assert!(
            passed > 1000 && refused > 300,
            "{passed} passed on, {refused} refused"
        );
    }

    #[test]
    fn a_response_is_rewritten_for_the_client() {
        let mut out = Vec::new();
        let answer =
            b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
                       Content-Length: 9\r\nTransfer-Encoding: Chunked\r\nX-Kept: yes\r\n\r\n";
        let head = response(answer, false, true, &mut out).unwrap().unwrap();
        assert_eq!(
            (head.len, head.status, head.framing),
            (answer.len(), 200, Framing::Chunked)
        );
        assert!(head.keep_alive);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX-Kept: yes\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX: 1\r\ncontent-length:9\r\n\r\n";
        let head = response(answer, false, false, &mut out).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(9));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX: 1\r\n\r\n",
            "a length repeated goes on once"
        );
        // Statuses outside 100 to 599 (one under 100 would pass for an interim answer)
        // and HTTP/1.0 with a coding are refused.
        for (status, number) in [("000", 0), ("099", 99), ("600", 600), ("999", 999)] {
            let answer = format!("HTTP/1.1 {status} OK\r\nContent-Length: 0\r\n\r\n");
            assert!(
                matches!(
                    response(answer.as_bytes(), false, false, &mut Vec::new()),
                    Err(BadResponse::Status(n)) if n == number
                ),
                "{status}"
            );
        }
        assert!(matches!(
            response(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                false,
                &mut Vec::new()
            ),
            Err(BadResponse::Framing)
        ));
        for coding in ["gzip, chunked", "gzip", "chunked, chunked", "identity"] {
            let answer = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert!(
                matches!(
                    response(answer.as_bytes(), false, false, &mut Vec::new()),
                    Err(BadResponse::Framing)
                ),
                "{coding}"
            );
        }

        let mut out = Vec::new();
        let head = response(
            b"HTTP/1.0 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
            &mut out,
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.framing, Framing::Empty);
        assert!(!head.keep_alive, "an HTTP/1.0 backend closes");
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Content-Length: 9\r\n"));

        let head = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            true,
            false,
            &mut Vec::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            head.framing,
            Framing::Empty,
            "the answer to a HEAD has no body"
        );
        let head = response(b"HTTP/1.1 200 OK\r\n\r\n", false, false, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(
            response(b"HTTP/1.1 200 OK\r\n", false, false, &mut Vec::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_hop_by_hop_names_are_those_the_hyper_path_strips() {
        use super::super::super::headers::HOP_BY_HOP;
        for hop in HOP_BY_HOP {
            assert!(Name::of(hop.as_str()).is_hop_by_hop(), "{hop}");
            let upper = hop.as_str().to_ascii_uppercase();
            assert!(Name::of(&upper).is_hop_by_hop(), "{hop}");
        }
        let others = [
            "",
            "t",
            "tf",
            "host",
            "trailers",
            "upgrade-",
            "connectiox",
            "keep_alive",
            "proxy-connectio",
            "transfer-encodinG-",
            "content-length",
            "via",
        ];
        for name in others {
            assert!(!Name::of(name).is_hop_by_hop(), "{name}");
        }
        // Every name of a hop-by-hop length that is not in the list.
        for name in ["tx", "trailex", "upgradx", "connectioN_", "keep-alivx"] {
            assert!(!Name::of(name).is_hop_by_hop(), "{name}");
        }
    }

    #[test]
    fn a_response_head_over_the_limit_is_refused_whole_or_not() {
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        for bytes in [long.as_bytes(), &long.as_bytes()[..MAX_HEAD + 1]] {
            assert!(matches!(
                response(bytes, false, false, &mut Vec::new()),
                Err(BadResponse::TooLong)
            ));
        }
    }

    #[test]
    fn a_101_is_final_only_to_a_request_that_asked_for_an_upgrade() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade, X-Secret\r\nX-Secret: 1\r\nSec-WebSocket-Accept: k\r\n\r\nframe";
        let (answer, parts) = response_parts(head, false, true).unwrap().unwrap();
        assert_eq!(answer.status, 101);
        assert_eq!(answer.framing, Framing::Empty);
        assert!(!answer.keep_alive, "a switched socket is never pooled");
        assert_eq!(&head[answer.len..], b"frame");
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["sec-websocket-accept"], "k");
        assert!(!parts.headers.contains_key("x-secret"));
        // Unasked, on either path, it cannot be passed on.
        assert!(matches!(
            response_parts(head, false, false),
            Err(BadResponse::UnaskedUpgrade)
        ));
        assert!(matches!(
            response(head, false, false, &mut Vec::new()),
            Err(BadResponse::UnaskedUpgrade)
        ));
        // A request that asked may still get an ordinary answer, without `Upgrade`.
        let declined = b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nno";
        let (answer, parts) = response_parts(declined, false, true).unwrap().unwrap();
        assert_eq!((answer.status, answer.framing), (200, Framing::Length(2)));
        assert!(!parts.headers.contains_key("upgrade"));
        assert!(!parts.headers.contains_key("connection"));
    }

    #[test]
    fn an_empty_response_buffer_is_not_a_head_yet() {
        let mut out = Vec::new();
        assert!(matches!(response(b"", false, false, &mut out), Ok(None)));
        assert!(out.is_empty());
    }

    /// A small deterministic generator, for the test below.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize % n
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    /// Random header lines: names in mixed case, values with and without spaces around
    /// them, lines ending in CRLF or a bare LF.
    fn lines(rng: &mut Lcg, pool: &[(&str, &[&str])], count: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|_| {
                let (name, values) = pool[rng.below(pool.len())];
                let name: String = name
                    .chars()
                    .map(|c| {
                        if rng.below(2) == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect();
                (name, rng.pick(values).to_string())
            })
            .collect()
    }

    fn head(rng: &mut Lcg, first: &str, lines: &[(String, String)]) -> String {
        let mut head = format!("{first}\r\n");
        for (name, value) in lines {
            let space = rng.pick(&["", " ", "  "]);
            let end = rng.pick(&["\r\n", "\r\n", "\n"]);
            head.push_str(&format!("{name}:{space}{value}{space}{end}"));
        }
        head.push_str(rng.pick(&["\r\n", "\n"]));
        head
    }

    /// The header lines of `text` (a head as written out), lowercased names, trimmed
    /// values; every line must end in CRLF.
    fn written(text: &str) -> Vec<(String, String)> {
        assert!(text.ends_with("\r\n\r\n"), "{text:?}");
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "a bare LF in {text:?}"
        );
        text.split("\r\n")
            .skip(1)
            .take_while(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_string())
            })
            .collect()
    }

    fn tokens(lines: &[(String, String)]) -> Vec<String> {
        lines
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| value.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .filter(|t| !t.is_empty())
            .collect()
    }

    const HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];

    #[test]
    fn heads_are_written_out_as_the_rules_say_whatever_their_spacing_and_line_ends() {
        let pool: &[(&str, &[&str])] = &[
            ("x-kept", &["yes", "a, b", ""]),
            ("cookie", &["a=1; b=2"]),
            (
                "connection",
                &["keep-alive", "close", "x-secret", "X-Secret, keep-alive"],
            ),
            ("x-secret", &["1"]),
            ("keep-alive", &["timeout=5"]),
            ("te", &["trailers"]),
            ("trailer", &["x-sum"]),
            ("proxy-connection", &["keep-alive"]),
            ("x-forwarded-for", &["10.0.0.1", "10.0.0.2, 10.0.0.3"]),
            ("x-forwarded-proto", &["https"]),
            ("x-forwarded-host", &["elsewhere"]),
            ("via", &["1.0 edge"]),
        ];
        let mut rng = Lcg(7);
        for _ in 0..3000 {
            let count = rng.below(7);
            let mut extra = lines(&mut rng, pool, count);
            let at = rng.below(extra.len() + 1);
            extra.insert(at, ("Host".into(), "a.test".into()));

            // A request.
            let req = head(&mut rng, "GET /x HTTP/1.1", &extra);
            let mut out = Vec::new();
            let Parse::Done(parsed) = request(req.as_bytes(), b"10.9.9.9", b"http", &mut out)
            else {
                panic!("not taken: {req:?}")
            };
            assert_eq!(parsed.len, req.len());
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with("GET /x HTTP/1.1\r\n"), "{out:?}");
            let named = tokens(&extra);
            let listed = |name: &str, added: &str| {
                let mut values: Vec<String> = extra
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .collect();
                values.push(added.into());
                (name.to_string(), values.join(", "))
            };
            let mut expected: Vec<(String, String)> = extra
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .filter(|(n, _)| {
                    !HOP.contains(&n.as_str())
                        && !n.starts_with("x-forwarded-")
                        && n != "via"
                        && (n == "host" || !named.contains(n))
                })
                .collect();
            expected.push(listed("x-forwarded-for", "10.9.9.9"));
            expected.push(("x-forwarded-proto".into(), "http".into()));
            expected.push(("x-forwarded-host".into(), "a.test".into()));
            expected.push(listed("via", "1.1 switchyard"));
            assert_eq!(written(&out), expected, "{req:?}");
            assert_eq!(parsed.keep_alive, !named.iter().any(|t| t == "close"));

            // A response to it, without the Host line.
            extra.retain(|(n, _)| n != "Host");
            let res = head(&mut rng, "HTTP/1.1 200 OK", &extra);
            let mut out = Vec::new();
            let parsed = response(res.as_bytes(), false, false, &mut out)
                .unwrap()
                .unwrap();
            assert_eq!(parsed.len, res.len());
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out:?}");
            let mut expected: Vec<(String, String)> = extra
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .filter(|(n, _)| !HOP.contains(&n.as_str()) && !named.contains(n))
                .collect();
            // No length: the body runs until the backend closes.
            expected.push(("connection".into(), "close".into()));
            assert_eq!(written(&out), expected, "{res:?}");
        }
    }
}
