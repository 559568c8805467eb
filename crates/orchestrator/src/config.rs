//! The orchestrator's settings: one struct, from flags, environment and a TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How an orchestrator runs. Flags override the TOML file given with `--config`.
#[derive(Debug, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// ZooKeeper connect string.
    #[arg(long, env = "SWITCHYARD_ZK", default_value = "127.0.0.1:2181")]
    pub zk: String,
    /// The region: its state lives under /switchyard/<region>.
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "local")]
    pub region: String,
    /// This member's id, unique in the region (default: orchestrator-<listen port>).
    #[arg(long, env = "SWITCHYARD_MEMBER_ID")]
    pub member_id: Option<String>,
    /// Address of the HTTP API, the route stream, /readyz and /metrics.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// File holding the bearer token that writes must present.
    #[arg(long, env = "SWITCHYARD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer --token-file: a flag shows in `ps`).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Shards of a new region (fixed once the region exists).
    #[arg(long, default_value_t = 1024)]
    pub shards: u16,
    /// ZooKeeper session timeout.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    pub session_timeout: Duration,
    /// ZooKeeper requests in flight at most.
    #[arg(long, default_value_t = 1000)]
    pub zk_window: usize,
    /// `jute.maxbuffer` of the ZooKeeper servers, in bytes.
    #[arg(long, default_value_t = coord::DEFAULT_JUTE_MAXBUFFER)]
    pub jute_maxbuffer: usize,
    /// Interval between two health checks of a backend (jittered by ±20 %).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    pub health_interval: Duration,
    /// A health check's timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(with = "serde_duration")]
    pub health_timeout: Duration,
    /// Consecutive failed checks that mark a backend down.
    #[arg(long, default_value_t = 3)]
    pub health_down_after: u32,
    /// Consecutive passed checks that mark a backend up again.
    #[arg(long, default_value_t = 2)]
    pub health_up_after: u32,
    /// Largest request body of a single-app write, in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest bulk import body, in bytes (413 above).
    #[arg(long, default_value_t = 4 << 30)]
    pub max_import_bytes: u64,
    /// A TOML file with any of these settings (flags override it).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            zk: "127.0.0.1:2181".into(),
            region: "local".into(),
            member_id: None,
            listen: "127.0.0.1:7000".parse().expect("a valid address"),
            token_file: None,
            token: None,
            shards: 1024,
            session_timeout: Duration::from_secs(6),
            zk_window: 1000,
            jute_maxbuffer: coord::DEFAULT_JUTE_MAXBUFFER,
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(2),
            health_down_after: 3,
            health_up_after: 2,
            max_body_bytes: 1 << 20,
            max_import_bytes: 4 << 30,
            config: None,
        }
    }
}

/// A setting that cannot work, said before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file cannot be read or parsed.
    #[error("cannot use config file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A setting is out of range.
    #[error("invalid setting `{field}`: {detail}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        detail: String,
    },
}

impl Config {
    /// Reads a TOML file into a config (every setting optional, unknown keys refused).
    pub fn from_toml_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::File {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })
    }

    /// This member's id.
    pub fn member_id(&self) -> String {
        self.member_id
            .clone()
            .unwrap_or_else(|| format!("orchestrator-{}", self.listen.port()))
    }

    /// The write token, from `token` or `token_file`.
    pub fn load_token(&self) -> Result<String, ConfigError> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|err| ConfigError::File {
                    path: path.clone(),
                    detail: err.to_string(),
                })?
                .trim()
                .to_string(),
            (None, None) => {
                return Err(ConfigError::Invalid {
                    field: "token",
                    detail: "writes need a bearer token: give --token-file FILE (or \
                             SWITCHYARD_TOKEN_FILE, or SWITCHYARD_TOKEN)"
                        .into(),
                })
            }
        };
        if token.len() < 16 {
            return Err(ConfigError::Invalid {
                field: "token",
                detail: format!("the token is {} characters; use at least 16", token.len()),
            });
        }
        Ok(token)
    }

    /// Checks every setting; call before anything binds or connects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, detail: String| Err(ConfigError::Invalid { field, detail });
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid("region", format!("`{}` must be [a-z0-9-]+", self.region));
        }
        if let Err(err) = self.member_id().parse::<model::MemberId>() {
            return invalid("member_id", err.to_string());
        }
        if self.shards == 0 {
            return invalid("shards", "must be at least 1".into());
        }
        if self.zk_window == 0 {
            return invalid("zk_window", "must be at least 1".into());
        }
        if self.health_down_after == 0 || self.health_up_after == 0 {
            return invalid("health_down_after", "thresholds must be at least 1".into());
        }
        if self.health_timeout >= self.health_interval {
            return invalid(
                "health_timeout",
                format!(
                    "{:?} must be shorter than health_interval {:?}",
                    self.health_timeout, self.health_interval
                ),
            );
        }
        self.load_token()?;
        Ok(())
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (like 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("`{text}`: {err}"))
}

mod serde_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
