//! The `switchyard` binary as an operator runs it: real processes, real ports.

mod cli;
mod gateway;
mod orchestrator;
mod up;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

pub fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// `n` consecutive free loopback ports (best effort: checked free right now).
pub fn free_port_run(n: u16) -> u16 {
    'search: for _ in 0..200 {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base.checked_add(n + 1000).is_none() {
            continue;
        }
        for port in base..base + n {
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue 'search;
            }
        }
        return base;
    }
    panic!("no run of {n} free ports");
}

pub fn process_exists(pid: u32) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn up_names_a_port_that_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = switchyard()
        .args(["up", "--zk-servers", "1", "--dir"])
        .arg(dir.path())
        .args(["--zk-port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_usage_error() {
    let output = switchyard()
        .args(["up", "--zk-servers", "9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--zk-servers"), "{stderr}");
}
