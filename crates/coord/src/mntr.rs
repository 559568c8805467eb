//! The servers' own view of sizes: the `mntr` four-letter word of every server in a
//! connect string (`zk_max_proposal_size`, `zk_max_client_response_size`,
//! `zk_approximate_data_size`, ...), for monitoring next to the layer's own figures.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `mntr` figures that speak of sizes, exported by the orchestrator.
pub const SIZE_FIGURES: [&str; 3] = [
    "zk_max_proposal_size",
    "zk_max_client_response_size",
    "zk_approximate_data_size",
];

/// Asks every server of `connect` for `mntr`; each answer, or why there is none.
pub async fn mntr_all(
    connect: &str,
    timeout: Duration,
) -> Vec<(String, Result<BTreeMap<String, String>, String>)> {
    let servers: Vec<String> = connect
        .split(',')
        .map(|s| s.trim().split('/').next().unwrap_or_default().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let asks = servers.iter().map(|server| async move {
        let answer = tokio::time::timeout(timeout, mntr(server))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        (server.clone(), answer)
    });
    futures::future::join_all(asks).await
}

async fn mntr(server: &str) -> Result<BTreeMap<String, String>, String> {
    let mut stream = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(b"mntr").await.map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    if !text.contains('\t') {
        return Err(format!("unexpected answer: {}", text.trim()));
    }
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}
