//! Switchyard's data: applications, their domains and backends, and the routes a
//! gateway serves. Pure types and validation.
//!
//! **Invariant:** no I/O and no async runtime here; every other crate may depend on
//! `model`, and `model` depends on none of them.
//!
//! Every type that can be invalid is valid by construction: strings become
//! [`AppId`], [`MemberId`], [`Domain`], [`HttpPath`] through [`FromStr`](std::str::FromStr)
//! or [`TryFrom<String>`], and serde deserialisation goes through the same checks.
//! Untrusted application JSON goes through [`App::from_json`], which reports every
//! problem at once as [`FieldError`]s. Sharding is in [`shard`].

#![warn(missing_docs)]

mod app;
mod backend;
mod domain;
mod health;
mod id;
mod json;
pub mod route;
pub mod shard;

pub use app::{App, FieldError, MAX_BACKENDS, MAX_DOMAINS};
pub use backend::{Backend, BackendError};
pub use domain::{normalize_host, Domain, DomainError};
pub use health::{HealthCheck, HttpPath, HttpPathError};
pub use id::{AppId, IdError, MemberId};
pub use route::{Route, StreamLine};
pub use shard::ShardId;

#[cfg(test)]
mod tests;
