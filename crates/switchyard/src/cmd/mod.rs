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
