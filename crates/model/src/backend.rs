//! Backends: the `host:port` addresses an application's requests are sent to.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::domain::{check_labels, DomainError};
use crate::json::{self, Errors};

/// Why a backend is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No `:port` at the end of the address.
    #[error("must be `host:port`, as in `10.0.0.1:8080` (no port in `{0}`)")]
    MissingPort(String),
    /// The port is not a number from 1 to 65535 written plainly.
    #[error("port `{0}` must be a number from 1 to 65535, without leading zeros")]
    InvalidPort(String),
    /// An IPv6 address without brackets.
    #[error("an IPv6 address must be in brackets, as in `[::1]:8080`")]
    UnbracketedIpv6,
    /// Something in brackets that is not an IPv6 address.
    #[error("`[{0}]` is not an IPv6 address")]
    InvalidIpv6(String),
    /// An IPv6 address not in its canonical (RFC 5952) form, which would let two
    /// spellings of one backend pass the duplicate check.
    #[error("write the IPv6 address as `[{0}]`")]
    NonCanonicalIpv6(String),
    /// Digits and dots that are not an IPv4 address (`10.0.0.256`, `010.0.0.1`).
    #[error("`{0}` is not a valid IPv4 address")]
    InvalidIpv4(String),
    /// An invalid hostname.
    #[error("invalid host: {0}")]
    Host(DomainError),
    /// A weight outside 1..=1000.
    #[error("weight must be from 1 to 1000 (got {0})")]
    Weight(u64),
}

/// One place an application's requests go: `addr` is `host:port`, `weight` its
/// share of requests relative to the app's other backends.
///
/// The host is an IPv4 address, a bracketed IPv6 address in canonical form
/// (`[::1]`, not `[0::1]`) or a lowercase hostname (by [`Domain`](crate::Domain)'s
/// rules, no wildcard). The port is 1 to 65535 without leading zeros. So one backend
/// has one spelling and duplicates are caught by comparing addresses.
///
/// Serialised as `{"addr": "10.0.0.1:8080", "weight": 1}`; `weight` may be left out
/// of the input and defaults to 1. Deserialisation validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Backend {
    addr: String,
    weight: u16,
}

impl Backend {
    /// The default weight.
    pub const DEFAULT_WEIGHT: u16 = 1;
    /// The largest weight.
    pub const MAX_WEIGHT: u16 = 1000;

    /// A backend at `addr` with `weight`, if both are valid.
    pub fn new(addr: impl Into<String>, weight: u16) -> Result<Backend, BackendError> {
        let addr = addr.into();
        check_addr(&addr)?;
        check_weight(weight.into())?;
        Ok(Backend { addr, weight })
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The relative weight, 1..=1000.
    pub fn weight(&self) -> u16 {
        self.weight
    }

    /// The host part of the address (with brackets for IPv6).
    pub fn host(&self) -> &str {
        split(&self.addr).expect("validated").0
    }

    /// The port.
    pub fn port(&self) -> u16 {
        split(&self.addr)
            .expect("validated")
            .1
            .parse()
            .expect("validated")
    }

    /// Reads a backend from JSON, with fields named after `at` (`backends[0]`).
    pub(crate) fn from_value(v: &Value, at: &str, errors: &mut Errors) -> Option<Backend> {
        let map = errors.object(v, at)?;
        let addr_at = json::field(at, "addr");
        let addr = match map.get("addr") {
            None => {
                errors.push(&addr_at, "is required");
                None
            }
            Some(v) => errors
                .string(v, &addr_at)
                .and_then(|addr| match check_addr(addr) {
                    Ok(()) => Some(addr.to_owned()),
                    Err(e) => {
                        errors.push(&addr_at, e);
                        None
                    }
                }),
        };
        let weight_at = json::field(at, "weight");
        let weight = match map.get("weight") {
            None => Some(Self::DEFAULT_WEIGHT),
            Some(v) => errors.integer(v, &weight_at).and_then(|w| {
                match u16::try_from(w)
                    .ok()
                    .filter(|&w| check_weight(w.into()).is_ok())
                {
                    Some(w) => Some(w),
                    None => {
                        errors.push(&weight_at, format!("must be from 1 to 1000 (got {w})"));
                        None
                    }
                }
            }),
        };
        errors.unknown_fields(map, at, &["addr", "weight"]);
        Some(Backend {
            addr: addr?,
            weight: weight?,
        })
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::deserialize_with(d, Backend::from_value)
    }
}

fn check_weight(weight: u64) -> Result<(), BackendError> {
    if (1..=u64::from(Backend::MAX_WEIGHT)).contains(&weight) {
        Ok(())
    } else {
        Err(BackendError::Weight(weight))
    }
}

/// Splits `host:port`, the host keeping its brackets.
fn split(addr: &str) -> Option<(&str, &str)> {
    if addr.starts_with('[') {
        let end = addr.find(']')?;
        let port = addr[end + 1..].strip_prefix(':')?;
        Some((&addr[..=end], port))
    } else {
        addr.rsplit_once(':')
    }
}

fn check_addr(addr: &str) -> Result<(), BackendError> {
    let (host, port) = split(addr).ok_or_else(|| BackendError::MissingPort(addr.to_owned()))?;
    let port_ok = port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0')
        && port.parse::<u16>().is_ok();
    if !port_ok {
        return Err(BackendError::InvalidPort(port.to_owned()));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = &inner[..inner.len() - 1];
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| BackendError::InvalidIpv6(inner.to_owned()))?;
        let canonical = ip.to_string();
        if canonical != inner {
            return Err(BackendError::NonCanonicalIpv6(canonical));
        }
        return Ok(());
    }
    if host.contains(':') {
        return Err(BackendError::UnbracketedIpv6);
    }
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(BackendError::InvalidIpv4(host.to_owned())),
        };
    }
    match check_labels(host, false) {
        Ok(false) => Ok(()),
        Ok(true) => Err(BackendError::Host(DomainError::Uppercase {
            lowercase: host.to_ascii_lowercase(),
        })),
        Err(e) => Err(BackendError::Host(e)),
    }
}
