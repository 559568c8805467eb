//! `switchyard gateway`: runs one gateway (`gateway::run`) until SIGTERM or SIGINT, then
//! drains it and writes its table to disk.

use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Threads that serve requests [default: one per core]. Each is a single-threaded
    /// runtime of its own accepting from the shared listener; the control side (admin
    /// API, route stream, snapshots) runs on one more, so that its work does not stall
    /// the proxy's event loop.
    #[arg(long, env = "SWITCHYARD_GATEWAY_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,

    /// Check the configuration and the state folder, then exit: the settings, that the
    /// listen addresses are this host's, the orchestrator URLs, the certificates, the
    /// access log, and the snapshot a start would serve (decoded whole; any file skipped
    /// on the way named). Binds no port, serves and writes nothing, so it can run beside
    /// a gateway on the same folder. Exits 0 when a start would succeed, 1 with the
    /// reason otherwise.
    #[arg(long)]
    check: bool,

    #[command(flatten)]
    config: gateway::Config,
}

/// `matches`: the subcommand's parsed arguments, which say which settings were given as
/// flags or environment variables (they override the `--config` file).
pub fn run(args: Args, matches: Option<&clap::ArgMatches>) -> anyhow::Result<ExitCode> {
    let config = match matches {
        Some(matches) => gateway::Config::from_matches(matches)?,
        None => args.config,
    };
    if args.check {
        let checked = gateway::check(&config).context("the check failed")?;
        print!("{}", report(&checked, std::time::SystemTime::now()));
        return Ok(ExitCode::SUCCESS);
    }
    config.validate()?;
    let workers = match args.workers {
        Some(workers) => usize::from(workers),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    super::raise_open_files_limit(
        "a proxied connection takes two (the client's and its backend's), so about half \
         as many fit",
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("gateway")
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(async {
            gateway::Gateway::start(config)
                .await?
                .with_proxy_threads(workers)
                .keep_table_at_exit()
                .serve(super::shutdown_signal())
                .await
        })
        .context("running the gateway")?;
    Ok(ExitCode::SUCCESS)
}

/// What `--check` prints: what a start would serve, and anything an operator should know
/// before one.
fn report(checked: &gateway::Checked, now: std::time::SystemTime) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let dir = checked.state_dir.display();
    match &checked.table {
        Some(table) => {
            let age = now
                .duration_since(table.written)
                .map_or(0, |age| age.as_secs());
            let _ = writeln!(
                out,
                "table: version {}, {} routes, from {} ({} generation, written {} ago)",
                table.version,
                table.routes,
                table.path.display(),
                table.generation,
                ago(age)
            );
            for rejected in &table.rejected {
                let _ = writeln!(out, "warning: skipped {rejected}");
            }
        }
        None if checked.state_dir_missing => {
            let _ = writeln!(
                out,
                "table: none yet; {dir} does not exist and a start creates it, then serves \
                 what an orchestrator sends"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "table: none in {dir} (a fresh gateway); served once an orchestrator sends one"
            );
        }
    }
    let _ = writeln!(out, "orchestrators: {}", checked.orchestrators);
    if let Some((files, expiry)) = checked.certificates {
        let _ = write!(out, "TLS: {files} certificate file(s)");
        if let Some(expiry) = expiry {
            let now = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let days = (expiry - now) as f64 / 86_400.0;
            if days < 0.0 {
                let _ = write!(out, "; warning: one EXPIRED {:.1} days ago", -days);
            } else {
                let _ = write!(out, "; the first expires in {days:.1} days");
            }
        }
        out.push('\n');
    }
    out.push_str(
        "ok: a start with this configuration would succeed; nothing was bound or written\n",
    );
    out
}

/// `seconds` in the largest unit that keeps it a whole number above zero: `42 s`,
/// `17 min`, `5 h`, `3 days`.
fn ago(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7_199 => format!("{} min", seconds / 60),
        7_200..=172_799 => format!("{} h", seconds / 3_600),
        _ => format!("{} days", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{ago, report};

    #[test]
    fn the_report_names_the_table_its_age_and_what_expires() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let checked = |expiry: i64| gateway::Checked {
            state_dir: "/var/lib/gw".into(),
            table: Some(gateway::CheckedTable {
                path: "/var/lib/gw/routes.snap".into(),
                generation: gateway::snapshot::Generation::Current,
                version: 7,
                routes: 3,
                written: now - Duration::from_secs(300),
                rejected: Vec::new(),
            }),
            state_dir_missing: false,
            orchestrators: 2,
            certificates: Some((4, Some(1_000_000_000 + expiry))),
        };
        let text = report(&checked(3 * 86_400), now);
        assert_eq!(
            text,
            "table: version 7, 3 routes, from /var/lib/gw/routes.snap (current generation, \
             written 5 min ago)\n\
             orchestrators: 2\n\
             TLS: 4 certificate file(s); the first expires in 3.0 days\n\
             ok: a start with this configuration would succeed; nothing was bound or written\n"
        );
        let expired = report(&checked(-86_400), now);
        assert!(
            expired.contains("TLS: 4 certificate file(s); warning: one EXPIRED 1.0 days ago"),
            "{expired}"
        );
    }

    #[test]
    fn ages_are_read_in_the_unit_that_fits() {
        assert_eq!(ago(0), "0 s");
        assert_eq!(ago(119), "119 s");
        assert_eq!(ago(120), "2 min");
        assert_eq!(ago(7_199), "119 min");
        assert_eq!(ago(7_200), "2 h");
        assert_eq!(ago(172_800), "2 days");
    }
}
