//! Switchyard's data: applications, their domains and backends, and the routes a
//! gateway serves. Pure types and validation.
//!
//! **Invariant:** no I/O and no async runtime here; every other crate may depend on
//! `model`, and `model` depends on none of them.

#![warn(missing_docs)]
