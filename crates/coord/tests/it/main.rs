//! The ZooKeeper layer against real ZooKeeper servers from `testkit`.

mod batch;
mod cache;
mod load;
mod recipes;
mod session;
mod size;

use coord::{Config, Zk};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn connect(zk: &testkit::Zk, tune: impl FnOnce(&mut Config)) -> Zk {
    let mut config = Config::new(zk.connect_string());
    tune(&mut config);
    Zk::connect(config)
        .await
        .expect("connect to the test's ZooKeeper")
}

/// 64 bytes that differ per node, like the post-mortem's small payloads.
pub fn payload(i: usize) -> Vec<u8> {
    format!("{i:0>64}").into_bytes()
}

/// Bytes zstd cannot shrink (xorshift64).
pub fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
