//! Health checks: how the orchestrator probes an application's backends.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::json::{self, Errors};

/// Why a string is not a valid [`HttpPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpPathError {
    /// Does not start with `/`.
    #[error("must start with '/'")]
    NoLeadingSlash,
    /// Longer than [`HttpPath::MAX_LEN`].
    #[error("must be at most 1024 characters long (got {0})")]
    TooLong(usize),
    /// A space or a control character.
    #[error("must not contain spaces or control characters (found {0:?})")]
    InvalidChar(char),
    /// A non-ASCII character, which cannot go in a request line as it is.
    #[error("must be ASCII: percent-encode {0:?}")]
    NonAscii(char),
}

/// The request target of an HTTP health check: starts with `/`, ASCII without spaces
/// or control characters, at most 1024 characters. A query (`/healthz?deep=1`) is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpPath(String);

crate::id::string_id!(HttpPath, HttpPathError);

impl HttpPath {
    /// The longest path.
    pub const MAX_LEN: usize = 1024;

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(s: &str) -> Result<(), HttpPathError> {
        if !s.starts_with('/') {
            return Err(HttpPathError::NoLeadingSlash);
        }
        if let Some(ch) = s.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(if ch.is_ascii() {
                HttpPathError::InvalidChar(ch)
            } else {
                HttpPathError::NonAscii(ch)
            });
        }
        if s.len() > Self::MAX_LEN {
            return Err(HttpPathError::TooLong(s.len()));
        }
        Ok(())
    }
}

/// How an application's backends are probed. JSON: `{"type": "http", "path":
/// "/healthz"}` (a GET that must answer 2xx) or `{"type": "tcp"}` (a connection that
/// must open). Other fields are errors. Deserialisation validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthCheck {
    /// An HTTP GET of `path`.
    Http {
        /// The request target.
        path: HttpPath,
    },
    /// A TCP connect.
    Tcp,
}

impl HealthCheck {
    /// Reads a health check from JSON, with fields named after `at` (`health_check`).
    pub(crate) fn from_value(v: &Value, at: &str, errors: &mut Errors) -> Option<HealthCheck> {
        let map = errors.object(v, at)?;
        let type_at = json::field(at, "type");
        let Some(ty) = map.get("type") else {
            errors.push(&type_at, "is required (`http` or `tcp`)");
            return None;
        };
        match errors.string(ty, &type_at)? {
            "http" => {
                errors.unknown_fields(map, at, &["type", "path"]);
                let path_at = json::field(at, "path");
                let Some(path) = map.get("path") else {
                    errors.push(&path_at, "is required for an `http` check");
                    return None;
                };
                match HttpPath::try_from(errors.string(path, &path_at)?.to_owned()) {
                    Ok(path) => Some(HealthCheck::Http { path }),
                    Err(e) => {
                        errors.push(&path_at, e);
                        None
                    }
                }
            }
            "tcp" => {
                errors.unknown_fields(map, at, &["type"]);
                Some(HealthCheck::Tcp)
            }
            other => {
                errors.push(
                    &type_at,
                    format!("unknown type `{other}` (expected `http` or `tcp`)"),
                );
                None
            }
        }
    }
}

impl<'de> Deserialize<'de> for HealthCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        json::deserialize_with(d, HealthCheck::from_value)
    }
}
