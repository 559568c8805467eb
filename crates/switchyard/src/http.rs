//! A small HTTP/1.1 client for the CLI's talks with orchestrators and gateways.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An answer: status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the answer is not JSON")
    }
}

/// Why a request got no answer: the peer is unreachable (exit status 3 in the CLI).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {url}: {reason}")]
pub struct Unreachable {
    /// The URL.
    pub url: String,
    /// Why.
    pub reason: String,
}

/// Sends one request with an optional bearer token and body, waiting at most `timeout`.
pub async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, Unreachable> {
    let unreachable = |reason: String| Unreachable {
        url: url.to_string(),
        reason,
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| unreachable(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("no answer within {timeout:?}"))))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A request body fed piece by piece (a file being uploaded); an `Err` aborts the request.
pub type BodyChunks = tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An answer whose body is read as it arrives (a bulk import's progress lines).
pub struct Streamed {
    /// The status code.
    pub status: u16,
    /// The URL, for errors.
    url: String,
    body: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
}

impl Streamed {
    /// The next piece of the body, `None` at its end; waits at most `idle` for it.
    pub async fn chunk(&mut self, idle: Duration) -> Result<Option<Bytes>, Unreachable> {
        let unreachable = |reason: String| Unreachable {
            url: self.url.clone(),
            reason,
        };
        loop {
            let frame = match tokio::time::timeout(idle, self.body.frame()).await {
                Err(_) => return Err(unreachable(format!("silent for {idle:?}"))),
                Ok(None) => return Ok(None),
                Ok(Some(Err(err))) => return Err(unreachable(error_chain(err.as_ref()))),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                return Ok(Some(data));
            }
        }
    }

    /// The rest of the body, read whole (for an error answer), as an [`Answer`].
    pub async fn rest(mut self, timeout: Duration) -> Result<Answer, Unreachable> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk(timeout).await? {
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status: self.status,
            headers: http::HeaderMap::new(),
            body: Bytes::from(body),
        })
    }
}

/// Sends a request whose body comes from `chunks` as it is read, and returns once the
/// answer's head arrives (within `timeout`); its body is then read with
/// [`Streamed::chunk`], while the upload may still go on.
pub async fn request_streamed(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    mut chunks: BodyChunks,
    timeout: Duration,
) -> Result<Streamed, Unreachable> {
    use futures::StreamExt;
    let unreachable = |reason: String| Unreachable {
        url: url.to_string(),
        reason,
    };
    let frames = futures::stream::poll_fn(move |cx| chunks.poll_recv(cx))
        .map(|chunk| chunk.map(hyper::body::Frame::data));
    let body = http_body_util::StreamBody::new(frames);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body).map_err(|e| unreachable(e.to_string()))?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
        .map_err(|e| unreachable(error_chain(&e)))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .map_err(|e| Box::new(e) as BoxError)
        .boxed_unsync();
    Ok(Streamed {
        status,
        url: url.to_string(),
        body,
    })
}
