//! Domains an application answers on, and the normalisation of an incoming Host header.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Why a string is not a valid [`Domain`] (or backend hostname).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// Longer than DNS allows.
    #[error("must be at most 253 characters long (got {0})")]
    TooLong(usize),
    /// Two dots in a row, or a leading dot.
    #[error("must not have an empty label (a leading dot or `..`)")]
    EmptyLabel,
    /// A label longer than DNS allows.
    #[error("label `{label}` must be at most 63 characters long (got {len})")]
    LabelTooLong {
        /// The label.
        label: String,
        /// Its length.
        len: usize,
    },
    /// A character outside `[a-z0-9-]`.
    #[error("label `{label}` has invalid character {ch:?}: only a-z, 0-9 and '-' are allowed")]
    InvalidChar {
        /// The label.
        label: String,
        /// The first offending character.
        ch: char,
    },
    /// A non-ASCII label: internationalised names must be written in punycode.
    #[error("label `{0}` is not ASCII: write internationalised names in punycode (`xn--...`)")]
    NonAscii(String),
    /// A label that starts or ends with `-`.
    #[error("label `{0}` must not start or end with '-'")]
    HyphenAtEdge(String),
    /// The last label is all digits, as in an IP address.
    #[error("the last label must not be all digits (an IP address is not a domain name)")]
    NumericTld,
    /// A `*` anywhere but as the whole leftmost label.
    #[error("`*` is only allowed as the whole leftmost label, as in `*.example.com`")]
    MisplacedWildcard,
    /// A wildcard with fewer than two labels after `*.`.
    #[error("a wildcard needs at least two labels after `*.`, as in `*.example.com`: `*.com` would capture every name under a top-level domain, other customers' included")]
    WildcardTooBroad,
    /// Ends with `.`; `without` is the name without it (and lowercased).
    #[error("must not end with '.' (did you mean `{without}`?)")]
    TrailingDot {
        /// The fixed name.
        without: String,
    },
    /// Has uppercase letters; `lowercase` is the name lowercased (and without a
    /// trailing dot).
    #[error("must be lowercase (did you mean `{lowercase}`?)")]
    Uppercase {
        /// The fixed name.
        lowercase: String,
    },
}

/// A domain name an application answers on: a lowercase hostname, or a wildcard.
///
/// Rules: labels of 1 to 63 characters of `[a-z0-9-]`, none starting or ending with
/// `-`; at most 253 characters in all; no trailing dot; the last label not all digits
/// (so no IP addresses). Punycode labels (`xn--...`) and single-label names
/// (`localhost`) are fine. Input is not folded: uppercase or a trailing dot is an
/// error that names the fixed form.
///
/// A wildcard is `*` as the whole leftmost label followed by at least two labels:
/// `*.example.com`, not `*.com`. It matches exactly one more label, as a TLS
/// certificate does: `*.example.com` matches `a.example.com`, neither
/// `example.com` nor `a.b.example.com` (see [`Domain::matches`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

crate::id::string_id!(Domain, DomainError);

impl Domain {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a wildcard, `*.example.com`.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// For a wildcard, the name after `*.` (`example.com` for `*.example.com`);
    /// `None` for an exact name.
    pub fn suffix(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }

    /// Whether a request for `host` belongs to this domain. `host` must already be
    /// normalised by [`normalize_host`]: an exact name matches itself only; a wildcard
    /// matches one more, non-empty label in front of its suffix.
    pub fn matches(&self, host: &str) -> bool {
        match self.suffix() {
            None => self.0 == host,
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        }
    }

    fn check(s: &str) -> Result<(), DomainError> {
        if s.is_empty() {
            return Err(DomainError::Empty);
        }
        let (body, dot) = match s.strip_suffix('.') {
            Some("") => return Err(DomainError::EmptyLabel),
            Some(body) => (body, true),
            None => (s, false),
        };
        let upper = check_labels(body, true)?;
        if upper {
            Err(DomainError::Uppercase {
                lowercase: body.to_ascii_lowercase(),
            })
        } else if dot {
            Err(DomainError::TrailingDot {
                without: body.to_owned(),
            })
        } else {
            Ok(())
        }
    }
}

/// Checks the labels of a hostname without a trailing dot, accepting letters of
/// either case; returns whether it has uppercase letters. With `wildcard`, `*` is
/// accepted as the whole leftmost label.
pub(crate) fn check_labels(s: &str, wildcard: bool) -> Result<bool, DomainError> {
    if s.is_empty() {
        return Err(DomainError::Empty);
    }
    if s.len() > 253 {
        return Err(DomainError::TooLong(s.len()));
    }
    let mut upper = false;
    let mut is_wildcard = false;
    let mut labels = 0;
    let mut last = "";
    for (i, label) in s.split('.').enumerate() {
        labels += 1;
        last = label;
        if label.is_empty() {
            return Err(DomainError::EmptyLabel);
        }
        if wildcard && label.contains('*') {
            if i == 0 && label == "*" {
                is_wildcard = true;
                continue;
            }
            return Err(DomainError::MisplacedWildcard);
        }
        if label.len() > 63 {
            return Err(DomainError::LabelTooLong {
                label: label.to_owned(),
                len: label.len(),
            });
        }
        for ch in label.chars() {
            match ch {
                'a'..='z' | '0'..='9' | '-' => {}
                'A'..='Z' => upper = true,
                _ if !ch.is_ascii() => return Err(DomainError::NonAscii(label.to_owned())),
                _ => {
                    return Err(DomainError::InvalidChar {
                        label: label.to_owned(),
                        ch,
                    })
                }
            }
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::HyphenAtEdge(label.to_owned()));
        }
    }
    if is_wildcard && labels < 3 {
        return Err(DomainError::WildcardTooBroad);
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DomainError::NumericTld);
    }
    Ok(upper)
}

/// Normalises an incoming `Host` header to the form a [`Domain`] is written in:
/// lowercases it, removes a `:port` suffix (also from `[v6]:port`) and one trailing
/// dot. Returns `None` for an empty or malformed header: one that is neither a
/// hostname (by [`Domain`]'s rules, without wildcards), an IPv4 address, nor a
/// bracketed IPv6 address, or whose port is not a number up to 65535 (an empty port,
/// `example.com:`, is allowed as RFC 3986 allows it).
///
/// An IPv6 host keeps its brackets (`[::1]:80` gives `[::1]`); no [`Domain`] matches
/// it or an IPv4 address, but they are well-formed headers.
///
/// Borrows when no lowercasing is needed, so the common case does not allocate.
pub fn normalize_host(header: &str) -> Option<Cow<'_, str>> {
    match plain_host(header) {
        Some(host) => Some(Cow::Borrowed(host)),
        None => normalize_host_slowly(header),
    }
}

/// The usual `Host`, a lowercase name with or without a port, checked in one pass
/// over its bytes (it is read for every request). `None` sends anything else
/// (capitals, a trailing dot, an address, a fault) to [`normalize_host_slowly`],
/// which gives the same answer as this for what this takes (a test compares them).
fn plain_host(header: &str) -> Option<&str> {
    let bytes = header.as_bytes();
    let mut end = bytes.len();
    let mut label_start = 0;
    let mut label_numeric = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'a'..=b'z' => label_numeric = false,
            b'0'..=b'9' => {}
            b'-' if i > label_start => label_numeric = false,
            b'.' => {
                let len = i - label_start;
                if len == 0 || len > 63 || bytes[i - 1] == b'-' {
                    return None;
                }
                label_start = i + 1;
                label_numeric = true;
            }
            b':' => {
                end = i;
                break;
            }
            _ => return None,
        }
    }
    let len = end - label_start;
    // A numeric last label is an address or a fault: the long way.
    if len == 0 || len > 63 || bytes[end - 1] == b'-' || label_numeric || end > 253 {
        return None;
    }
    if let Some(port) = bytes[end..].strip_prefix(b":") {
        if port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = port
            .iter()
            .fold(0u32, |n, digit| n * 10 + u32::from(digit - b'0'));
        if value > 65535 {
            return None;
        }
    }
    Some(&header[..end])
}

pub(crate) fn normalize_host_slowly(header: &str) -> Option<Cow<'_, str>> {
    fn port_ok(port: &str) -> bool {
        port.is_empty()
            || (port.len() <= 5
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| p <= 65535))
    }

    let host = if let Some(rest) = header.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(port_ok) {
            return None;
        }
        inner.parse::<Ipv6Addr>().ok()?;
        &header[..inner.len() + 2]
    } else {
        let host = match header.rsplit_once(':') {
            Some((host, port)) if port_ok(port) => host,
            Some(_) => return None,
            None => header,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.parse::<Ipv4Addr>().is_err() {
            check_labels(host, false).ok()?;
        }
        host
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}
