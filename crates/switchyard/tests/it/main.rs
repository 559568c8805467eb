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

/// `switchyard`, whose limit on open files is set to `soft` and `hard` before it runs.
pub fn switchyard_with_open_files(soft: u64, hard: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = switchyard();
    // SAFETY: setrlimit(2) is async-signal-safe, and nothing else runs in the child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command
}

/// The first of `n` consecutive free loopback ports, outside the ephemeral range so
/// that no outgoing connection takes one before the server binds it.
pub fn free_port_run(n: u16) -> u16 {
    zkserver::ports::free_run(n).expect("free loopback ports")
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

#[test]
fn up_refuses_zookeeper_ports_past_65535_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let output = switchyard()
        .args(["up", "--zk-servers", "3", "--dir"])
        .arg(dir.path())
        .args(["--orchestrators", "0", "--gateways", "0", "--backends", "0"])
        .args(["--zk-election-port", "65534"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--zk-election-port 65534 leaves no room for 3 ports"),
        "{stderr}"
    );
    assert!(!dir.path().join("zookeeper").exists(), "{stderr}");
}
