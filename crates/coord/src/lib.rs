//! Switchyard's ZooKeeper layer: the only crate that speaks the ZooKeeper protocol.
//!
//! **Invariant:** every request passes one bounded in-flight window; load makes
//! callers wait, it never becomes an error or a dropped connection.

#![warn(missing_docs)]
