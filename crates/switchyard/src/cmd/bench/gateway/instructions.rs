//! `bench gateway --instructions`: the user-space instructions each proxy spends per
//! request, counted by callgrind. The machine's noise moves requests/s by ±10 % between
//! runs; an instruction count moves by less than 1 %. It leaves out the kernel, which
//! is most of a proxy's cost here (see docs/BENCHMARKS.md), so it says how lean a
//! proxy's own code is, not how fast it is.
//!
//! Each proxy (one worker; nginx without its master process, so that one process does
//! all the work) runs under `valgrind --tool=callgrind`. wrk warms it up, its counters
//! are zeroed (`callgrind_control -z`), wrk runs the measured load, and the counters are
//! dumped (`callgrind_control -d`): the dump's total over wrk's request count. With
//! `--http2`, h2load takes wrk's place, with `--streams` in flight per connection.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::super::gateway_load::{self, WrkSettings};
use super::super::gateway_peers::{self as peers, Process};
use super::super::gateway_report::Skipped;
use super::{Bench, Mode, Peer, ACCESS_LOG_NOTE};

/// One proxy's count.
#[derive(Debug, serde::Serialize)]
struct Counted {
    peer: &'static str,
    requests: u64,
    instructions: u64,
    errors: u64,
}

impl Counted {
    fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests.max(1) as f64
    }
}

pub(super) fn run(
    bench: &mut Bench<'_>,
    peers: &[Peer],
    skipped: Vec<Skipped>,
) -> anyhow::Result<ExitCode> {
    let valgrind = which("valgrind").context(
        "--instructions needs valgrind (Debian package `valgrind`): apt-get install valgrind",
    )?;
    let control = which("callgrind_control").context(
        "--instructions needs callgrind_control, which comes with valgrind: apt-get install valgrind",
    )?;
    let Some(wrk) = bench.wrk.clone() else {
        bail!("--instructions needs wrk (h2load with --http2), which is missing (see above)");
    };
    let mut counted = Vec::new();
    for &peer in peers {
        peers::check_interrupted()?;
        eprint!("bench: {:<8} under callgrind ... ", peer.name());
        let count = count(bench, peer, &valgrind, &control, &wrk.path)?;
        eprintln!(
            "{} requests, {:.0} instructions per request, {} errors",
            count.requests,
            count.per_request(),
            count.errors
        );
        counted.push(count);
    }
    let client = match bench.streams() {
        Some(streams) => format!("h2load -t1 -c{} -m{streams}", bench.args.connections),
        None => format!("wrk -t1 -c{}", bench.args.connections),
    };
    let mut table = table(&counted, &client, bench.args.duration_secs);
    if bench.args.access_log {
        table.push_str(ACCESS_LOG_NOTE);
    }
    if bench.args.json {
        eprint!("{table}");
        let json = serde_json::json!({ "instructions": counted, "skipped": skipped });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{table}");
    }
    let failed = !skipped.is_empty() || counted.iter().any(|c| c.errors > 0 || c.requests == 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `peer` under callgrind and counts one measured load.
fn count(
    bench: &mut Bench<'_>,
    peer: Peer,
    valgrind: &Path,
    control: &Path,
    wrk: &Path,
) -> anyhow::Result<Counted> {
    bench.starts += 1;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, peers::free_port()?));
    let dir = bench
        .dir
        .join(format!("{}-callgrind-{}", peer.name(), bench.starts));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let proxy = bench.command(Mode::OneCore, peer, &dir, addr, true)?;
    let out = dir.join("callgrind.out");
    let mut command = Command::new(valgrind);
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(proxy.get_program())
        .args(proxy.get_args());
    for (key, value) in proxy.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let spawned = Instant::now();
    let mut process = Process::start(peer.name(), command, None, dir.join("output.log"))?;
    // Everything runs some fifty times slower under callgrind.
    let start_timeout = Duration::from_secs(bench.args.start_timeout_secs.max(120));
    peers::first_proxied(
        &mut process,
        addr,
        None,
        bench.h2load(),
        spawned,
        start_timeout,
    )?;
    let streams = bench.streams();
    let load = |secs: u64| {
        gateway_load::wrk(&WrkSettings {
            wrk,
            addr,
            threads: 1,
            connections: bench.args.connections as usize,
            duration: Duration::from_secs(secs),
            tls: false,
            close: false,
            streams,
            upload: bench.upload.as_deref(),
            cpus: None,
        })
    };
    let pid = process.pid();
    if bench.args.warmup_secs > 0 {
        load(bench.args.warmup_secs)?;
    }
    callgrind_control(control, "-z", pid)?;
    let measured = load(bench.args.duration_secs)?;
    callgrind_control(control, "-d", pid)?;
    process.check_running()?;
    let _ = process.stop();
    // The dump is the first part after the zeroing: `<out>.1`.
    let dump = PathBuf::from(format!("{}.1", out.display()));
    let text = fs::read_to_string(&dump).with_context(|| format!("reading {}", dump.display()))?;
    let instructions = total_instructions(&text)
        .with_context(|| format!("reading the instruction count of {}", dump.display()))?;
    Ok(Counted {
        peer: peer.name(),
        requests: measured.requests,
        instructions,
        errors: measured.errors(),
    })
}

/// `callgrind_control <what> <pid>`, bounded: a process that never wakes up would not
/// answer it.
fn callgrind_control(control: &Path, what: &str, pid: u32) -> anyhow::Result<()> {
    let mut child = Command::new(control)
        .arg(what)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", control.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(
                status.success(),
                "callgrind_control {what} {pid} failed ({status})"
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("callgrind_control {what} {pid} got no answer in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The instructions a callgrind output file counts (its `summary:` line).
fn total_instructions(text: &str) -> anyhow::Result<u64> {
    let events = text
        .lines()
        .find_map(|line| line.strip_prefix("events:"))
        .context("no `events:` line")?;
    anyhow::ensure!(
        events.split_whitespace().next() == Some("Ir"),
        "the first event counted is not Ir (instructions) but {:?}",
        events.trim()
    );
    let summary = text
        .lines()
        .find_map(|line| line.strip_prefix("summary:"))
        .context("no `summary:` line")?;
    let first = summary.split_whitespace().next().unwrap_or_default();
    first
        .parse()
        .with_context(|| format!("`summary: {}` is not a count", summary.trim()))
}

/// The table of counts; `client` is the load's command (`wrk -t1 -c32`).
fn table(counted: &[Counted], client: &str, secs: u64) -> String {
    let base = counted
        .iter()
        .find(|c| c.peer == Peer::Nginx.name())
        .map(Counted::per_request);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nUser-space instructions per request (callgrind; {client}, {secs} s measured; one \
         worker each, nginx without its master process; ratios to nginx)"
    );
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>16} {:>10} {:>8} {:>7}",
        "PEER", "REQUESTS", "INSTRUCTIONS", "PER REQ", "vs nginx", "ERRORS"
    );
    for c in counted {
        let ratio = base.map_or("-".to_string(), |b| format!("{:.2}x", c.per_request() / b));
        let _ = writeln!(
            out,
            "{:<10} {:>10} {:>16} {:>10.0} {:>8} {:>7}",
            c.peer,
            c.requests,
            c.instructions,
            c.per_request(),
            ratio,
            c.errors
        );
    }
    out
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instruction_count_is_read_from_a_callgrind_dump() {
        let dump = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 22755\n\
                    part: 1\n\ndesc: I1 cache:\nevents: Ir\n\nsummary: 466983376\n\n\
                    fl=(1) x.rs\nfn=(1) f\n3 12\ntotals: 466983561\n";
        assert_eq!(total_instructions(dump).unwrap(), 466_983_376);
    }

    #[test]
    fn a_dump_without_an_instruction_count_is_an_error_not_zero() {
        let err = |text: &str| format!("{:#}", total_instructions(text).unwrap_err());
        assert!(err("events: Ir\n").contains("no `summary:` line"));
        assert!(err("summary: 5\n").contains("no `events:` line"));
        assert!(err("events: Ir\nsummary: lots\n").contains("is not a count"));
        assert!(err("events: Dr Ir\nsummary: 5 6\n").contains("not Ir"));
    }

    #[test]
    fn the_table_gives_ratios_to_nginx() {
        let counted = [
            Counted {
                peer: "nginx",
                requests: 1000,
                instructions: 20_000_000,
                errors: 0,
            },
            Counted {
                peer: "gateway",
                requests: 2000,
                instructions: 24_000_000,
                errors: 0,
            },
        ];
        let text = table(&counted, "h2load -t1 -c32 -m10", 10);
        assert!(
            text.contains("(callgrind; h2load -t1 -c32 -m10, 10 s measured;"),
            "{text}"
        );
        let gateway = text.lines().find(|l| l.starts_with("gateway")).unwrap();
        assert!(gateway.contains(" 12000 "), "{gateway}");
        assert!(gateway.contains("0.60x"), "{gateway}");
    }
}
