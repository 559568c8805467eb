//! Switchyard's orchestrator: keeps the applications in ZooKeeper, owns a share of
//! them through `&owner` nodes, checks their backends and serves the route table.
//!
//! **Invariant:** it hands out no route table before it is ready (invariant 2).
