//! `switchyard upgrade`: a rolling restart of the local region in the one safe order,
//! the post-mortem's first lesson made a command.
//!
//! ZooKeeper followers, then the leader, one at a time, each back in the quorum before
//! the next; then orchestrators one at a time, each ready before the next; then
//! gateways one at a time, only while an orchestrator is ready, each ready before the
//! next (a new gateway starts beside the old one, which then drains). A gate that does
//! not open within the step's timeout stops the upgrade with the reason: it refuses,
//! it never guesses. Restarted processes run the binary now on disk: that is the
//! upgrade.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::region::{Component, Region};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The state folder of the running `switchyard up`.
    #[arg(long, default_value = ".switchyard", env = "SWITCHYARD_DIR")]
    dir: PathBuf,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long each step may take to become ready again.
    #[arg(long, default_value = "120s", value_parser = orchestrator::config::parse_duration)]
    step_timeout: Duration,
}

#[derive(Debug, Clone)]
enum Step {
    Zookeeper(Component),
    Orchestrator(Component),
    Gateway(Component),
}

impl Step {
    fn name(&self) -> &str {
        match self {
            Step::Zookeeper(c) | Step::Orchestrator(c) | Step::Gateway(c) => &c.name,
        }
    }
}

/// Exit status when a gate refuses.
const REFUSED: u8 = 1;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let region = Region::load(&args.dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(upgrade(args, region))
}

/// A ZooKeeper server's mode, or `None` when it does not serve.
fn zk_mode(addr: &str) -> Option<String> {
    let addr = addr.parse().ok()?;
    let srvr = zkserver::four_letter(addr, "srvr").ok()?;
    srvr.lines()
        .find_map(|l| l.strip_prefix("Mode:"))
        .map(|m| m.trim().to_string())
}

async fn ready(url: &str) -> Result<(), String> {
    match crate::http::request(
        "GET",
        &format!("{url}/readyz"),
        None,
        &[],
        Bytes::new(),
        Duration::from_secs(5),
    )
    .await
    {
        Ok(answer) if answer.status == 200 => Ok(()),
        Ok(answer) => Err(answer
            .json()
            .ok()
            .and_then(|j| j["detail"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("status {}", answer.status))),
        Err(err) => Err(err.to_string()),
    }
}

/// Checks every gate that must be open before anything is touched.
async fn preflight(region: &Region) -> Result<(), String> {
    let serving: Vec<_> = region
        .zookeeper
        .iter()
        .filter(|z| zk_mode(&z.url).is_some())
        .collect();
    if serving.len() != region.zookeeper.len() {
        let down: Vec<_> = region
            .zookeeper
            .iter()
            .filter(|z| zk_mode(&z.url).is_none())
            .map(|z| z.name.as_str())
            .collect();
        return Err(format!(
            "ZooKeeper server(s) not serving: {}",
            down.join(", ")
        ));
    }
    for o in &region.orchestrators {
        ready(&o.url)
            .await
            .map_err(|why| format!("{} is not ready: {why}", o.name))?;
    }
    for g in &region.gateways {
        let admin = g.admin.as_deref().unwrap_or(&g.url);
        ready(admin)
            .await
            .map_err(|why| format!("{} is not ready: {why}", g.name))?;
    }
    Ok(())
}

fn plan(region: &Region) -> Vec<Step> {
    let mut steps = Vec::new();
    // Followers first, the leader last: one election, at the end.
    let mut zk: Vec<&Component> = region.zookeeper.iter().collect();
    zk.sort_by_key(|z| zk_mode(&z.url).as_deref() == Some("leader"));
    steps.extend(zk.into_iter().cloned().map(Step::Zookeeper));
    steps.extend(region.orchestrators.iter().cloned().map(Step::Orchestrator));
    steps.extend(region.gateways.iter().cloned().map(Step::Gateway));
    steps
}

async fn upgrade(args: Args, region: Region) -> anyhow::Result<ExitCode> {
    let steps = plan(&region);
    println!("upgrade plan for the region in {}:", args.dir.display());
    for (i, step) in steps.iter().enumerate() {
        let gate = match step {
            Step::Zookeeper(_) => "back in the quorum, with a leader",
            Step::Orchestrator(_) => "ready (/readyz)",
            Step::Gateway(_) => {
                "an orchestrator ready before; the new process ready beside the old"
            }
        };
        println!(
            "  {:>2}. restart {:<16} then wait until {gate}",
            i + 1,
            step.name()
        );
    }
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(why) = preflight(&region).await {
        eprintln!("refused: the region is not healthy: {why}; fix that first");
        return Ok(ExitCode::from(REFUSED));
    }
    for (i, step) in steps.iter().enumerate() {
        if let Step::Gateway(_) = step {
            let mut any = false;
            for o in &region.orchestrators {
                any |= ready(&o.url).await.is_ok();
            }
            if !any && !region.orchestrators.is_empty() {
                eprintln!("refused: no orchestrator is ready, so {} is not restarted (a gateway must be able to fetch its table)", step.name());
                return Ok(ExitCode::from(REFUSED));
            }
        }
        let started = Instant::now();
        eprint!(
            "[{}/{}] restarting {} ... ",
            i + 1,
            steps.len(),
            step.name()
        );
        let answer =
            crate::cmd::up::control(&args.dir, &format!("restart {}", step.name())).await?;
        let Some(pid) = answer.strip_prefix("ok ") else {
            eprintln!("failed");
            eprintln!(
                "refused: {}: {}",
                step.name(),
                answer.trim_start_matches("error ")
            );
            return Ok(ExitCode::from(REFUSED));
        };
        if let Err(why) = wait_gate(step, &region, args.step_timeout).await {
            eprintln!("not ready");
            eprintln!(
                "refused: {} did not pass its gate within {:?}: {why}; the upgrade stops here",
                step.name(),
                args.step_timeout
            );
            return Ok(ExitCode::from(REFUSED));
        }
        eprintln!(
            "ready (pid {pid}, {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    println!("upgrade done: {} components restarted", steps.len());
    Ok(ExitCode::SUCCESS)
}

async fn wait_gate(step: &Step, region: &Region, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not checked yet");
    while Instant::now() < deadline {
        let outcome = match step {
            Step::Zookeeper(_) => {
                let modes: Vec<_> = region.zookeeper.iter().map(|z| zk_mode(&z.url)).collect();
                let leaders = modes
                    .iter()
                    .filter(|m| {
                        m.as_deref() == Some("leader") || m.as_deref() == Some("standalone")
                    })
                    .count();
                if modes.iter().all(Option::is_some) && leaders == 1 {
                    Ok(())
                } else {
                    Err(format!("modes {modes:?}"))
                }
            }
            Step::Orchestrator(c) => ready(&c.url).await,
            Step::Gateway(c) => ready(c.admin.as_deref().unwrap_or(&c.url)).await,
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}
