//! The `layer` and `layer-multi` clients of `bench zk`: Switchyard's ZooKeeper layer
//! (`coord::Zk`) creating N ephemeral nodes and reading them back, in a child process
//! that prints one JSON line and exits without closing its session.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;

use super::report::{peak_rss_bytes, ClientResult};

/// How the layer creates its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One `create` per node, `window` of them in flight.
    Layer,
    /// `write_many`: bulk `multi` transactions.
    LayerMulti,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Layer => "layer",
            Mode::LayerMulti => "layer-multi",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// ZooKeeper connect string.
    #[arg(long)]
    connect: String,
    /// Which way to create.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Ephemeral nodes to create and read.
    #[arg(long)]
    nodes: usize,
    /// Payload of each node, in bytes (before the layer's 4-byte header).
    #[arg(long)]
    payload_bytes: usize,
    /// The layer's in-flight window.
    #[arg(long)]
    window: usize,
}

/// Errors printed in full before the rest are only counted.
const ERRORS_SHOWN: usize = 5;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.window > 0, "--window must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(measure(&args))?;
    println!(
        "{}",
        serde_json::to_string(&result).context("encoding the result")?
    );
    use std::io::Write;
    std::io::stdout().flush().context("writing the result")?;
    // Exit here, with the session still open: dropping `Zk` would close it, and a
    // session closing with N ephemerals makes ZooKeeper write all their paths into one
    // transaction (ZOOKEEPER-4306). The benchmark kills the server instead.
    std::process::exit(0)
}

async fn measure(args: &Args) -> anyhow::Result<ClientResult> {
    let mut config = coord::Config::new(&args.connect);
    config.window = args.window;
    // The default budget (10,000 per session) exists because of ZOOKEEPER-4306; the
    // benchmark holds N on purpose and never closes the session.
    config.ephemeral_budget = args.nodes + 10;
    let zk = coord::Zk::connect(config)
        .await
        .with_context(|| format!("connecting to ZooKeeper at {}", args.connect))?;
    zk.ensure_path("/bench").await.context("creating /bench")?;
    let payload = vec![b'x'; args.payload_bytes];
    let mut errors = Errors::default();

    let started = Instant::now();
    match args.mode {
        Mode::Layer => {
            // buffer_unordered bounds the futures alive (and so memory) to the window; the
            // layer's own window bounds the requests in flight.
            let mut creates = futures::stream::iter(0..args.nodes)
                .map(|i| {
                    let (zk, payload) = (&zk, &payload);
                    async move {
                        let path = format!("/bench/n{i}");
                        zk.create(&path, payload, coord::CreateMode::Ephemeral)
                            .await
                            .map(|_| ())
                            .map_err(|err| err.to_string())
                    }
                })
                .buffer_unordered(args.window);
            while let Some(done) = creates.next().await {
                errors.note(done);
            }
        }
        Mode::LayerMulti => {
            let ops = (0..args.nodes).map(|i| coord::Op::Create {
                path: format!("/bench/n{i}"),
                payload: payload.clone(),
                mode: coord::CreateMode::Ephemeral,
            });
            let outcome = zk.write_many(ops).await;
            let missing = args.nodes - outcome.succeeded - outcome.failed.len();
            for refused in outcome.failed {
                errors.note(Err(format!("create {}: {}", refused.path, refused.error)));
            }
            for _ in 0..missing {
                errors.note(Err("create neither applied nor reported".into()));
            }
        }
    }
    let create_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut reads = futures::stream::iter(0..args.nodes)
        .map(|i| {
            let (zk, want) = (&zk, args.payload_bytes);
            async move {
                let path = format!("/bench/n{i}");
                match zk.get(&path).await {
                    Ok(Some((data, _))) if data.len() == want => Ok(()),
                    Ok(Some((data, _))) => {
                        Err(format!("get {path}: {} bytes, expected {want}", data.len()))
                    }
                    Ok(None) => Err(format!("get {path}: no such node")),
                    Err(err) => Err(err.to_string()),
                }
            }
        })
        .buffer_unordered(args.window);
    while let Some(done) = reads.next().await {
        errors.note(done);
    }
    drop(reads);
    let read_secs = started.elapsed().as_secs_f64();

    if errors.count > 0 {
        eprintln!("{}: {} errors in all", args.mode.name(), errors.count);
    }
    let coalesced_creates = Some(zk.coalesced_creates());
    let coalesced_reads = Some(zk.coalesced_reads());
    // Keep the session open until the process exits (see `run`).
    std::mem::forget(zk);
    Ok(ClientResult {
        client: args.mode.name().to_string(),
        nodes: args.nodes as u64,
        create_secs,
        read_secs,
        errors: errors.count,
        peak_rss_bytes: peak_rss_bytes(),
        coalesced_creates,
        coalesced_reads,
    })
}

#[derive(Default)]
struct Errors {
    count: u64,
}

impl Errors {
    fn note(&mut self, outcome: Result<(), String>) {
        if let Err(err) = outcome {
            self.count += 1;
            if self.count as usize <= ERRORS_SHOWN {
                eprintln!("error: {err}");
            }
        }
    }
}
