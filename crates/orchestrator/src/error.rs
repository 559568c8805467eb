//! The orchestrator's errors, and their one mapping to HTTP answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::FieldError;
use serde::Serialize;

/// An error of the orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A ZooKeeper failure.
    #[error(transparent)]
    Zk(#[from] coord::Error),
    /// A node holds something this build cannot read.
    #[error("{path} holds unreadable data: {detail}")]
    Corrupt {
        /// The node.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The HTTP listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The JSON body of every error answer: `{"error": .., "detail": .., "fields": [..]}`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// A short stable code.
    pub error: &'static str,
    /// What happened, for a person.
    pub detail: String,
    /// The fields at fault, for a validation error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

impl ApiError {
    /// An error answer.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            detail: detail.into(),
            fields: Vec::new(),
        }
    }

    /// A 400 listing every invalid field.
    pub fn invalid(fields: Vec<FieldError>) -> ApiError {
        let detail = fields
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid",
            detail,
            fields,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<coord::Error> for ApiError {
    fn from(err: coord::Error) -> ApiError {
        let status = match &err {
            coord::Error::NodeTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            coord::Error::Unavailable { .. }
            | coord::Error::SessionExpired { .. }
            | coord::Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::warn!(%err, "ZooKeeper request failed");
        ApiError::new(status, "zookeeper", err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(&self)).into_response()
    }
}
