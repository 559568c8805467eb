//! One module per subcommand, each a thin call into a library.

pub mod app;
pub mod bench;
pub mod demo_backend;
pub mod gateway;
pub mod operator;
pub mod orchestrator;
pub mod status;
pub mod up;
pub mod upgrade;
pub mod wait_ready;
pub mod zk;

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Raises the soft limit on open files to the hard one (see [`crate::open_files`]) for a
/// daemon whose every connection takes one (`holds`: what takes them, for the warning),
/// and says what it came to.
pub fn raise_open_files_limit(holds: &str) {
    match crate::open_files::raise() {
        Ok(limit) if limit < crate::open_files::LOW => tracing::warn!(
            limit,
            "the open-files limit is low: {holds}, and accepts wait past the limit; raise the \
             hard limit (systemd: LimitNOFILE=, shell: ulimit -Hn)"
        ),
        Ok(limit) => tracing::info!(limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-files limit"),
    }
}
