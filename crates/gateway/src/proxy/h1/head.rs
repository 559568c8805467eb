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

/// Header lines read at most; a head with more goes to hyper (which refuses it).
const MAX_HEADERS: usize = 100;
/// A head longer than this is not taken here (a request goes to hyper, a response is
/// a backend error).
pub(super) const MAX_HEAD: usize = 64 * 1024;
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
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parse::Partial,
        _ => return Parse::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::HandOver;
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return Parse::HandOver;
    }

    let Some(connection) = Connection::of(req.headers) else {
        return Parse::HandOver;
    };
    let mut host = None;
    let mut hosts = 0;
    let mut length = None;
    let mut chunked = false;
    let mut has_upgrade = false;
    let mut expect_continue = false;
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(offset(buf, header.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            match (content_length(header.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(before)) if n == before => {}
                _ => return Parse::HandOver,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !trimmed(header.value).eq_ignore_ascii_case(b"chunked") {
                return Parse::HandOver;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            has_upgrade = true;
        } else if name.eq_ignore_ascii_case("expect") {
            // Any other expectation is hyper's to refuse (417).
            if expect_continue || !trimmed(header.value).eq_ignore_ascii_case(b"100-continue") {
                return Parse::HandOver;
            }
            expect_continue = true;
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
    for header in req.headers.iter() {
        let name = header.name;
        if !(is_hop_by_hop(name)
            || connection.names(name)
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-host")
            || name.eq_ignore_ascii_case("via")
            || name.eq_ignore_ascii_case("expect"))
        {
            line(out, name.as_bytes(), header.value);
        }
    }
    list_line(out, req.headers, "x-forwarded-for", client_ip);
    line(out, b"x-forwarded-proto", proto);
    line(out, b"x-forwarded-host", &buf[host.clone()]);
    list_line(out, req.headers, "via", b"1.1 switchyard");
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
    #[error("unparsable response head: {0}")]
    Parse(httparse::Error),
    #[error("response head over {MAX_HEAD} bytes")]
    TooLong,
    #[error("101 to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("unsupported or conflicting framing headers")]
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
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut headers)
        .map_err(BadResponse::Parse)?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() <= MAX_HEAD => return Ok(None),
        httparse::Status::Partial => return Err(BadResponse::TooLong),
    };
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(BadResponse::Framing);
    };
    if status == 101 {
        return Err(BadResponse::UnaskedUpgrade);
    }
    let connection = Connection::of(res.headers).ok_or(BadResponse::Framing)?;
    let mut length = None;
    let mut coding: Option<&[u8]> = None;
    for header in res.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            match (content_length(header.value), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(before)) if n == before => {}
                _ => return Err(BadResponse::Framing),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if coding.is_some() {
                return Err(BadResponse::Framing);
            }
            coding = Some(header.value);
        }
    }
    let bodiless = to_head || status < 200 || status == 204 || status == 304;
    let framing = match (bodiless, coding, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(coding), _) => {
            // Chunked must be the last coding (RFC 9112 §6.3); other codings before
            // it pass on untouched, in the same header.
            let last = coding.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !trimmed(last).eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse::Framing);
            }
            Framing::Chunked
        }
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::UntilClose,
    };

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in res.headers.iter() {
        let name = header.name;
        let is_length = name.eq_ignore_ascii_case("content-length");
        if !(is_hop_by_hop(name) || connection.names(name) || (is_length && coding.is_some())) {
            line(out, name.as_bytes(), header.value);
        }
    }
    if let (Framing::Chunked, Some(coding)) = (framing, coding) {
        line(out, b"transfer-encoding", coding);
    }
    if close || framing == Framing::UntilClose {
        line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");

    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        keep_alive: version == 1 && !connection.has(b"close"),
    }))
}

/// The tokens of a message's `Connection` headers.
struct Connection<'a> {
    tokens: [&'a [u8]; MAX_TOKENS],
    count: usize,
}

impl<'a> Connection<'a> {
    /// `None` when the headers name more than [`MAX_TOKENS`].
    fn of(headers: &[httparse::Header<'a>]) -> Option<Connection<'a>> {
        let mut connection = Connection {
            tokens: [&[]; MAX_TOKENS],
            count: 0,
        };
        for header in headers {
            if !header.name.eq_ignore_ascii_case("connection") {
                continue;
            }
            for token in header.value.split(|&b| b == b',') {
                let token = trimmed(token);
                if token.is_empty() {
                    continue;
                }
                *connection.tokens.get_mut(connection.count)? = token;
                connection.count += 1;
            }
        }
        Some(connection)
    }

    fn has(&self, token: &[u8]) -> bool {
        self.tokens[..self.count]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// Whether header `name` is one `Connection` names as hop-by-hop (never `Host`).
    fn names(&self, name: &str) -> bool {
        !name.eq_ignore_ascii_case("host") && self.has(name.as_bytes())
    }
}

/// Whether `name` is one of the hop-by-hop headers every message loses (RFC 9110
/// §7.6.1), the same list the hyper path strips (a test holds them equal). The length
/// decides first: most names are compared with nothing.
fn is_hop_by_hop(name: &str) -> bool {
    let candidates: &[&str] = match name.len() {
        2 => &["te"],
        7 => &["trailer", "upgrade"],
        10 => &["connection", "keep-alive"],
        16 => &["proxy-connection"],
        17 => &["transfer-encoding"],
        _ => return false,
    };
    candidates.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// Writes list header `name` as one line: its values in `headers` (if any), joined
/// with ", ", then `added`.
fn list_line(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], name: &str, added: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for header in headers {
        if header.name.eq_ignore_ascii_case(name) {
            out.extend_from_slice(header.value);
            out.extend_from_slice(b", ");
        }
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

    fn rewrite(req: &str) -> Parse<(RequestHead, String)> {
        let mut out = Vec::new();
        match request(req.as_bytes(), b"10.1.2.3", b"http", &mut out) {
            Parse::Done(head) => Parse::Done((head, String::from_utf8(out).unwrap())),
            Parse::Partial => Parse::Partial,
            Parse::HandOver => Parse::HandOver,
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
        let Parse::Done((head, _)) = rewrite(
            "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n",
        ) else {
            panic!("not taken")
        };
        assert_eq!(head.framing, Framing::Length(12));
        assert!(matches!(
            rewrite("GET / HTTP/1.1\r\nHost: a\r\n"),
            Parse::Partial
        ));
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
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(rewrite(&endless), Parse::HandOver));
    }

    #[test]
    fn a_response_is_rewritten_for_the_client() {
        let mut out = Vec::new();
        let answer = b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
                       Content-Length: 9\r\nTransfer-Encoding: gzip, chunked\r\nX-Kept: yes\r\n\r\n";
        let head = response(answer, false, true, &mut out).unwrap().unwrap();
        assert_eq!(
            (head.len, head.status, head.framing),
            (answer.len(), 200, Framing::Chunked)
        );
        assert!(head.keep_alive);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX-Kept: yes\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n"
        );

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
            assert!(is_hop_by_hop(hop.as_str()), "{hop}");
            assert!(is_hop_by_hop(&hop.as_str().to_ascii_uppercase()), "{hop}");
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
            assert!(!is_hop_by_hop(name), "{name}");
        }
        // Every name of a hop-by-hop length that is not in the list.
        for name in ["tx", "trailex", "upgradx", "connectioN_", "keep-alivx"] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn an_empty_response_buffer_is_not_a_head_yet() {
        let mut out = Vec::new();
        assert!(matches!(response(b"", false, false, &mut out), Ok(None)));
        assert!(out.is_empty());
    }
}
