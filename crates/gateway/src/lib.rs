//! Switchyard's HTTP gateway: a reverse proxy that routes by Host header.
//!
//! **Invariant:** never talks to ZooKeeper (no dependency on `coord`).
//! **Invariant:** the on-disk snapshot is loaded before the listener binds (invariant 1).

pub mod snapshot;
pub mod table;

pub use table::RouteTable;
