//! The `switchyard` binary as an operator runs it: real processes, real ports.

mod gateway;
mod orchestrator;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};

fn switchyard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// `n` consecutive free loopback ports (best effort: checked free right now).
fn free_port_run(n: u16) -> u16 {
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

fn process_exists(pid: u32) -> bool {
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn up_runs_a_zookeeper_quorum_and_ctrl_c_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let client = free_port_run(3);
    let peer = free_port_run(3);
    let mut child = switchyard()
        .args(["up", "--dir"])
        .arg(dir.path())
        .args([
            "--zk-port",
            &client.to_string(),
            "--zk-peer-port",
            &peer.to_string(),
        ])
        .args(["--zk-heap-mib", "256"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut pids = Vec::new();
    let mut roles = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.starts_with("zookeeper-") {
            let cols: Vec<&str> = line.split_whitespace().collect();
            roles.push(cols[1].to_string());
            pids.push(cols[3].parse::<u32>().expect("a pid column"));
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    assert_eq!(pids.len(), 3, "the table lists three servers");
    assert_eq!(
        roles.iter().filter(|r| *r == "leader").count(),
        1,
        "{roles:?}"
    );
    for i in 0..3 {
        let addr = (Ipv4Addr::LOCALHOST, client + i).into();
        assert_eq!(zkserver::four_letter(addr, "ruok").unwrap(), "imok");
    }
    // Ctrl-C reaches the foreground process; it stops its servers and exits 0.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(!process_exists(pid), "ZooKeeper {pid} survived `up`");
    }
    // The state folder is kept for the next `up`.
    assert!(dir.path().join("zookeeper/zk1/data/version-2").is_dir());
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
