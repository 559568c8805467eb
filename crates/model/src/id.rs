//! Identifiers: [`AppId`] names an application, [`MemberId`] an orchestrator.

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier ([`AppId`], [`MemberId`]) or
/// [`ShardId`](crate::ShardId).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than the identifier allows.
    #[error("must be at most {max} characters long (got {len})")]
    TooLong {
        /// Its length, in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// An [`AppId`] with uppercase letters; `lowercase` is the string lowercased.
    #[error("must be lowercase (did you mean `{lowercase}`?)")]
    Uppercase {
        /// The input, lowercased.
        lowercase: String,
    },
    /// A character outside the identifier's alphabet.
    #[error("invalid character {ch:?}: only {allowed} are allowed")]
    InvalidChar {
        /// The first offending character.
        ch: char,
        /// The alphabet, in words.
        allowed: &'static str,
    },
    /// `.` or `..`, which ZooKeeper does not accept as a node name.
    #[error("`{0}` is not allowed (ZooKeeper reserves it in paths)")]
    Reserved(&'static str),
    /// Not a shard number in its canonical form.
    #[error("`{0}` is not a shard id: expected a number from 0 to 65535 written with at least 4 digits, like `0042`")]
    Shard(String),
}

/// An application's identifier: 1 to 63 characters of `[a-z0-9-]`.
///
/// Uppercase is rejected, not folded: the error names the lowercase form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppId(String);

impl AppId {
    /// The longest id, in characters.
    pub const MAX_LEN: usize = 63;

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(s: &str) -> Result<(), IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                len: s.len(),
                max: Self::MAX_LEN,
            });
        }
        let mut upper = false;
        for ch in s.chars() {
            match ch {
                'a'..='z' | '0'..='9' | '-' => {}
                'A'..='Z' => upper = true,
                _ => {
                    return Err(IdError::InvalidChar {
                        ch,
                        allowed: "a-z, 0-9 and '-'",
                    })
                }
            }
        }
        if upper {
            return Err(IdError::Uppercase {
                lowercase: s.to_ascii_lowercase(),
            });
        }
        Ok(())
    }
}

/// An orchestrator's identifier in the membership group: 1 to 128 characters of
/// `[A-Za-z0-9._-]`, and neither `.` nor `..` (it is a ZooKeeper node name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberId(String);

impl MemberId {
    /// The longest id, in characters.
    pub const MAX_LEN: usize = 128;

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(s: &str) -> Result<(), IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                len: s.len(),
                max: Self::MAX_LEN,
            });
        }
        if let Some(ch) = s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::InvalidChar {
                ch,
                allowed: "A-Z, a-z, 0-9, '.', '_' and '-'",
            });
        }
        match s {
            "." => Err(IdError::Reserved(".")),
            ".." => Err(IdError::Reserved("..")),
            _ => Ok(()),
        }
    }
}

/// `FromStr`, `TryFrom<String>` (what serde deserialises through), `Display`,
/// `AsRef<str>` and `Borrow<str>` for a validated string newtype with a
/// `fn check(&str) -> Result<(), $err>`.
macro_rules! string_id {
    ($ty:ident, $err:ty) => {
        impl std::str::FromStr for $ty {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                Self::check(s)?;
                Ok(Self(s.to_owned()))
            }
        }
        impl TryFrom<String> for $ty {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, $err> {
                Self::check(&s)?;
                Ok(Self(s))
            }
        }
        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
pub(crate) use string_id;

string_id!(AppId, IdError);
string_id!(MemberId, IdError);
