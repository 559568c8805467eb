//! The gateway over real sockets, real backends and real files.

mod control;
mod desync;
mod proxy;
mod tls;
mod wire;
