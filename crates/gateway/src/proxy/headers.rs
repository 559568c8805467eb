//! Header rewriting at the proxy: which host a request is for, and what the backend
//! is told about it (`X-Forwarded-*`, `Via`).
//!
//! **Invariant:** hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and the headers it
//! names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`) never cross the proxy in either direction, except `Upgrade` (with
//! `Connection: upgrade`) on an upgrade and its `101` answer.

use http::header::{
    Entry, HeaderName, CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    VIA,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Uri, Version};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The host a request is for, as sent: the URI's authority (HTTP/2, or an HTTP/1
/// request in absolute form, where it overrides `Host`), else the `Host` header.
/// `None` for a request with more than one `Host` header (RFC 9112 §3.2: a 400), which
/// the proxy could route by one and its backend read as the other.
pub(super) fn raw_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    if let Some(authority) = req.uri().authority() {
        let host = authority.as_str();
        let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
        return HeaderValue::from_str(host).ok();
    }
    first.cloned()
}

/// Whether an HTTP/1 request's head, written out plainly (`name: value` lines), is
/// over [`MAX_HEAD`](super::MAX_HEAD) bytes. hyper's limit on that path is its read
/// buffer's, which one read can overshoot: a head that arrives whole is taken up to
/// about twice the size. HTTP/2's header list has a limit of its own.
pub(super) fn head_too_long<B>(req: &Request<B>) -> bool {
    if req.version() > Version::HTTP_11 {
        return false;
    }
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let authority = req.uri().authority().map_or(0, |a| a.as_str().len() + 7);
    // "METHOD target HTTP/1.1\r\n", each "name: value\r\n", the empty line.
    let mut len = req.method().as_str().len() + 1 + authority + target + 11 + 2;
    for (name, value) in req.headers() {
        len += name.as_str().len() + 2 + value.len() + 2;
        if len > super::MAX_HEAD {
            return true;
        }
    }
    len > super::MAX_HEAD
}

/// Whether a message's `Transfer-Encoding`, if it has one, is `chunked` alone: the one
/// transfer coding the proxy passes on. Any other would reach the far side undone (or
/// could not reach an HTTP/2 peer at all), so a request with one is refused (501) and
/// a response with one is a backend error (502), as nginx does.
pub(super) fn only_chunked(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(value), None) => value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// Leaves one `Content-Length` of several with one value; `false` when their values
/// differ. hyper's servers take repeats of one value (HTTP/1.1 and HTTP/2 alike) and
/// keep every field: passed on so, they leave a backend two lengths to choose from,
/// and some refuse the request for it. Lengths that differ are refused before here;
/// the check keeps it so whatever the server.
pub(super) fn one_length(headers: &mut HeaderMap) -> bool {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return true;
    };
    let first = first.clone();
    if headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .any(|value| value.as_bytes().trim_ascii() != first.as_bytes().trim_ascii())
    {
        return false;
    }
    headers.insert(CONTENT_LENGTH, first);
    true
}

/// Whether a request asks to switch protocols (an HTTP/1.1 `Upgrade`, as WebSocket
/// does).
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// The hop-by-hop headers every message loses (`Connection` names more).
pub(super) static HOP_BY_HOP: [&HeaderName; 7] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
];

/// Removes hop-by-hop headers; with `upgrade`, keeps `Upgrade` and sets
/// `Connection: upgrade` instead. `Host` is never removed, whatever `Connection` says.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names, no hashing: which of the usual ones are here (most
    // messages have none, or only `Connection: keep-alive`).
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present[i] = true;
        }
    }
    if present[0] {
        let mut values = headers.get_all(CONNECTION).iter();
        // Nearly always one value: no allocation then.
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&rest) {
            for token in value.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                if token.is_empty() || token.eq_ignore_ascii_case("host") {
                    continue;
                }
                // A usual one is removed below if it is here at all.
                if !HOP_BY_HOP
                    .iter()
                    .any(|hop| hop.as_str().eq_ignore_ascii_case(token))
                {
                    headers.remove(token);
                }
            }
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present && !(upgrade && **name == UPGRADE) {
            headers.remove(*name);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Turns a client's request into the one its backend gets: hop-by-hop headers
/// stripped, `Host` set to the host it was routed by (`host`, from [`raw_host`]), `X-Forwarded-For` appended with
/// the client's address, `X-Forwarded-Proto` and `X-Forwarded-Host` set, `Via`
/// appended; HTTP/1.1 in origin form, whatever the client spoke.
pub(super) fn prepare_request<B>(
    req: &mut Request<B>,
    client_ip: &HeaderValue,
    tls: bool,
    host: HeaderValue,
    upgrade: bool,
) {
    // The host came from the URI unless it is the `Host` header, kept as it is.
    let host_from_uri = req.uri().authority().is_some();
    let via = HeaderValue::from_static(match req.version() {
        Version::HTTP_09 | Version::HTTP_10 => "1.0 switchyard",
        Version::HTTP_2 => "2 switchyard",
        _ => "1.1 switchyard",
    });
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    // Room for what is added below: one allocation at most.
    headers.reserve(5);
    if host_from_uri {
        headers.insert(HOST, host.clone());
    }
    append(headers, &X_FORWARDED_FOR, client_ip.clone());
    let proto = if tls { "https" } else { "http" };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(&X_FORWARDED_HOST, host);
    append(headers, &VIA, via);

    if host_from_uri || req.uri().scheme().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Appends `value` to a comma-separated list header, as one line.
fn append(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(entry) => {
            entry.insert(value);
        }
        Entry::Occupied(mut entry) => {
            let mut joined = Vec::new();
            for old in entry.iter() {
                joined.extend_from_slice(old.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(value.as_bytes());
            match HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
                Ok(joined) => {
                    entry.insert(joined);
                }
                Err(_) => entry.append(value),
            }
        }
    }
}
