//! The gateway's configuration: flags, `SWITCHYARD_GATEWAY_*` environment variables and
//! a TOML file, checked by [`Config::validate`] before anything binds.
//!
//! Precedence, highest first: a flag, its environment variable, the file given with
//! `--config`, the default. Every flag is also a file key, spelled like the flag without
//! its dashes (`--confirm-window 5m` is `confirm-window = "5m"`), except `--orchestrator`,
//! which may be repeated and whose key is the list `orchestrators`. A key the gateway does
//! not know is an error that names it. Durations are written with a unit: `250ms`,
//! `30s`, `10m`, `1h`.
//!
//! ```toml
//! listen = "0.0.0.0:80"
//! tls-listen = "0.0.0.0:443"
//! tls-certs = "/etc/switchyard/certs"
//! orchestrators = ["http://10.0.0.1:7070", "http://10.0.0.2:7070"]
//! state-dir = "/var/lib/switchyard/gateway"
//! mass-delete-share = 0.05
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};
use serde::{Deserialize, Deserializer};

use crate::proxy::{BackendConfig, ProxyConfig};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9080";
const DEFAULT_STATE_DIR: &str = "/var/lib/switchyard/gateway";
const DEFAULT_MASS_DELETE_SHARE: &str = "0.10";
const DEFAULT_MASS_DELETE_MIN_ROUTES: &str = "50";
const DEFAULT_MASS_DELETE_MIN_REMOVED: &str = "10";
const DEFAULT_MASS_DELETE_WINDOW: &str = "60s";
const DEFAULT_CONFIRM_WINDOW: &str = "10m";
const DEFAULT_PING_TIMEOUT: &str = "30s";
const DEFAULT_RECONNECT_MIN: &str = "100ms";
const DEFAULT_RECONNECT_MAX: &str = "10s";
const DEFAULT_SNAPSHOT_INTERVAL: &str = "500ms";
const DEFAULT_CONNECT_TIMEOUT: &str = "3s";
const DEFAULT_FIRST_BYTE_TIMEOUT: &str = "30s";
const DEFAULT_IDLE_TIMEOUT: &str = "60s";
const DEFAULT_DRAIN_TIMEOUT: &str = "30s";
const DEFAULT_EJECT_AFTER: &str = "3";
const DEFAULT_EJECT_COOLDOWN: &str = "10s";

/// How a gateway runs. Build it from the command line with [`Config::from_matches`]
/// (which also reads `--config`), or directly (tests, embedding) from
/// [`Config::default`]; either way, [`Config::validate`] it before use (`run` does).
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// TOML file with any of these settings (the same names, `--workers` aside); flags
    /// and environment variables override it.
    // Read by `Config::from_matches`; a `Config` built in code ignores it.
    #[arg(long, env = "SWITCHYARD_GATEWAY_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address the proxy listens on (bound with SO_REUSEPORT, so a new gateway can start
    /// beside the old one).
    #[arg(long, env = "SWITCHYARD_GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Address of the admin API (/healthz, /readyz, /metrics, /routes, /admin). It can
    /// confirm held deletions and has no authentication: keep it on loopback or a
    /// management network.
    #[arg(long, env = "SWITCHYARD_GATEWAY_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// Address of the TLS (HTTPS) listener, also bound with SO_REUSEPORT; needs
    /// --tls-certs. None: no TLS.
    #[arg(long, env = "SWITCHYARD_GATEWAY_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// Folder of `*.pem` files, each one certificate chain (server certificate first)
    /// and its private key; a certificate serves the DNS names of its subjectAltName
    /// (`*.example.com` included), chosen by the name the client asks for (SNI);
    /// `default.pem` serves clients that ask for no name or an unknown one. Read again
    /// on SIGHUP and on POST /admin/tls/reload.
    #[arg(long, env = "SWITCHYARD_GATEWAY_TLS_CERTS", value_name = "DIR")]
    pub tls_certs: Option<PathBuf>,

    /// File to append a JSON line per request to (time, client, method, host, path,
    /// protocol, status, bytes, upstream, duration_ms); opened again on SIGHUP, for log
    /// rotation. Off unless given.
    #[arg(long, env = "SWITCHYARD_GATEWAY_ACCESS_LOG", value_name = "FILE")]
    pub access_log: Option<PathBuf>,

    /// Orchestrator base URL (`http://host:port`), repeatable or comma-separated; tried in
    /// turn. None: the gateway serves the table on disk only.
    #[arg(
        long = "orchestrator",
        env = "SWITCHYARD_GATEWAY_ORCHESTRATORS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub orchestrators: Vec<String>,

    /// Folder of the route table snapshot (the last-known-good table), owned by this
    /// gateway.
    #[arg(long, env = "SWITCHYARD_GATEWAY_STATE_DIR", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Share of the routes (0 < share <= 1) an update may remove at once before it is held
    /// for confirmation.
    #[arg(long, env = "SWITCHYARD_GATEWAY_MASS_DELETE_SHARE", default_value = DEFAULT_MASS_DELETE_SHARE)]
    pub mass_delete_share: f64,

    /// Floor of the mass-deletion guard: it applies only to tables of at least this many
    /// routes.
    #[arg(long, env = "SWITCHYARD_GATEWAY_MASS_DELETE_MIN_ROUTES", default_value = DEFAULT_MASS_DELETE_MIN_ROUTES)]
    pub mass_delete_min_routes: usize,

    /// Floor of the mass-deletion guard: it holds only updates that remove at least this
    /// many routes.
    #[arg(long, env = "SWITCHYARD_GATEWAY_MASS_DELETE_MIN_REMOVED", default_value = DEFAULT_MASS_DELETE_MIN_REMOVED)]
    pub mass_delete_min_removed: usize,

    /// Removes streamed within this window count as one update for the mass-deletion guard.
    #[arg(long, env = "SWITCHYARD_GATEWAY_MASS_DELETE_WINDOW", value_parser = parse_duration, default_value = DEFAULT_MASS_DELETE_WINDOW)]
    #[serde(deserialize_with = "duration")]
    pub mass_delete_window: Duration,

    /// A held mass deletion that is still held after this long is applied. (An update that
    /// would empty the table is never applied without an operator's confirmation.)
    #[arg(long, env = "SWITCHYARD_GATEWAY_CONFIRM_WINDOW", value_parser = parse_duration, default_value = DEFAULT_CONFIRM_WINDOW)]
    #[serde(deserialize_with = "duration")]
    pub confirm_window: Duration,

    /// A route stream that sends no line for this long is dead (orchestrators ping every
    /// 10 s).
    #[arg(long, env = "SWITCHYARD_GATEWAY_PING_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_PING_TIMEOUT)]
    #[serde(deserialize_with = "duration")]
    pub ping_timeout: Duration,

    /// First delay before reconnecting to the orchestrators once all have failed; doubles
    /// (with jitter) up to --reconnect-max.
    #[arg(long, env = "SWITCHYARD_GATEWAY_RECONNECT_MIN", value_parser = parse_duration, default_value = DEFAULT_RECONNECT_MIN)]
    #[serde(deserialize_with = "duration")]
    pub reconnect_min: Duration,

    /// Longest delay between reconnection attempts.
    #[arg(long, env = "SWITCHYARD_GATEWAY_RECONNECT_MAX", value_parser = parse_duration, default_value = DEFAULT_RECONNECT_MAX)]
    #[serde(deserialize_with = "duration")]
    pub reconnect_max: Duration,

    /// The table is written to disk at most this often (always the latest table).
    #[arg(long, env = "SWITCHYARD_GATEWAY_SNAPSHOT_INTERVAL", value_parser = parse_duration, default_value = DEFAULT_SNAPSHOT_INTERVAL)]
    #[serde(deserialize_with = "duration")]
    pub snapshot_interval: Duration,

    /// Connecting to a backend (and to an orchestrator).
    #[arg(long, env = "SWITCHYARD_GATEWAY_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_CONNECT_TIMEOUT)]
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,

    /// From sending a request to a backend to its response head.
    #[arg(long, env = "SWITCHYARD_GATEWAY_FIRST_BYTE_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_FIRST_BYTE_TIMEOUT)]
    #[serde(deserialize_with = "duration")]
    pub first_byte_timeout: Duration,

    /// A client or backend connection with nothing to do is closed after this long.
    #[arg(long, env = "SWITCHYARD_GATEWAY_IDLE_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_IDLE_TIMEOUT)]
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,

    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, env = "SWITCHYARD_GATEWAY_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = DEFAULT_DRAIN_TIMEOUT)]
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,

    /// Client connections served at once; more wait in the listen queue until one
    /// closes [default: half the open-files limit, less 64: room for each client's
    /// connection and one to its backend].
    #[arg(long, env = "SWITCHYARD_GATEWAY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Consecutive failed connects after which a backend is skipped (unless all of an
    /// app's backends are), for --eject-cooldown.
    #[arg(long, env = "SWITCHYARD_GATEWAY_EJECT_AFTER", value_name = "N", default_value = DEFAULT_EJECT_AFTER)]
    pub eject_after: u32,

    /// How long an ejected backend is skipped; after it, one more failed connect ejects
    /// it again and a good one clears it.
    #[arg(long, env = "SWITCHYARD_GATEWAY_EJECT_COOLDOWN", value_parser = parse_duration, default_value = DEFAULT_EJECT_COOLDOWN)]
    #[serde(deserialize_with = "duration")]
    pub eject_cooldown: Duration,

    /// Idle connections kept per backend and proxy thread; more are closed after their
    /// request [default: as many as the load left, up to --max-connections; the
    /// surplus is closed after --idle-timeout].
    #[arg(long, env = "SWITCHYARD_GATEWAY_BACKEND_MAX_IDLE", value_name = "N")]
    pub backend_max_idle: Option<usize>,
}

impl Default for Config {
    /// The documented defaults (those `--help` shows), without orchestrators.
    fn default() -> Self {
        let duration = |text| parse_duration(text).expect("the defaults parse");
        Config {
            config: None,
            listen: DEFAULT_LISTEN.parse().expect("the defaults parse"),
            admin: DEFAULT_ADMIN.parse().expect("the defaults parse"),
            tls_listen: None,
            tls_certs: None,
            access_log: None,
            orchestrators: Vec::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            mass_delete_share: DEFAULT_MASS_DELETE_SHARE
                .parse()
                .expect("the defaults parse"),
            mass_delete_min_routes: DEFAULT_MASS_DELETE_MIN_ROUTES
                .parse()
                .expect("the defaults parse"),
            mass_delete_min_removed: DEFAULT_MASS_DELETE_MIN_REMOVED
                .parse()
                .expect("the defaults parse"),
            mass_delete_window: duration(DEFAULT_MASS_DELETE_WINDOW),
            confirm_window: duration(DEFAULT_CONFIRM_WINDOW),
            ping_timeout: duration(DEFAULT_PING_TIMEOUT),
            reconnect_min: duration(DEFAULT_RECONNECT_MIN),
            reconnect_max: duration(DEFAULT_RECONNECT_MAX),
            snapshot_interval: duration(DEFAULT_SNAPSHOT_INTERVAL),
            connect_timeout: duration(DEFAULT_CONNECT_TIMEOUT),
            first_byte_timeout: duration(DEFAULT_FIRST_BYTE_TIMEOUT),
            idle_timeout: duration(DEFAULT_IDLE_TIMEOUT),
            drain_timeout: duration(DEFAULT_DRAIN_TIMEOUT),
            max_connections: None,
            eject_after: DEFAULT_EJECT_AFTER.parse().expect("the defaults parse"),
            eject_cooldown: duration(DEFAULT_EJECT_COOLDOWN),
            backend_max_idle: None,
        }
    }
}

/// A configuration that cannot be used; each names the setting (as its flag) and says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML, has an unknown key or a bad value.
    #[error("configuration file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where (the TOML parser names the key and line).
        message: String,
    },
    /// The command line does not match the settings (only from [`Config::from_matches`]
    /// given matches of another command).
    #[error("command line: {0}")]
    Args(String),
    /// A setting has a value the gateway cannot work with.
    #[error("--{setting} {value}: {reason}")]
    Invalid {
        /// The flag, without its dashes (also the file key).
        setting: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused, and what would do.
        reason: String,
    },
}

fn invalid(
    setting: &'static str,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// The configuration from parsed command-line arguments (of a command that flattens
    /// `Config`), merged over the `--config` file if one is given: a value given as a flag
    /// or in the environment wins over the file, the file wins over the defaults.
    pub fn from_matches(matches: &ArgMatches) -> Result<Config, ConfigError> {
        let flags =
            Config::from_arg_matches(matches).map_err(|e| ConfigError::Args(e.to_string()))?;
        let Some(path) = flags.config.clone() else {
            return Ok(flags);
        };
        let mut config = Config::from_file(&path)?;
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        macro_rules! overlay {
            ($($field:ident),* $(,)?) => {
                // Destructuring makes a new field a compile error here until it is listed.
                let Config { $($field: _),* } = &flags;
                $(if given(stringify!($field)) { config.$field = flags.$field.clone(); })*
            };
        }
        overlay!(
            config,
            listen,
            admin,
            tls_listen,
            tls_certs,
            access_log,
            orchestrators,
            state_dir,
            mass_delete_share,
            mass_delete_min_routes,
            mass_delete_min_removed,
            mass_delete_window,
            confirm_window,
            ping_timeout,
            reconnect_min,
            reconnect_max,
            snapshot_interval,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            drain_timeout,
            max_connections,
            eject_after,
            eject_cooldown,
            backend_max_idle,
        );
        config.config = Some(path);
        Ok(config)
    }

    /// The settings of a TOML file, over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::ParseFile {
            path: path.to_owned(),
            message,
        })
    }

    /// The settings of a TOML document, over the defaults; the error names the bad key.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
    }

    /// Checks every setting, so that a bad one fails before anything binds or touches the
    /// disk. Returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen == self.admin && self.listen.port() != 0 {
            return Err(invalid(
                "admin",
                self.admin,
                "the admin API and the proxy cannot share an address: give --admin another port",
            ));
        }
        match (self.tls_listen, &self.tls_certs) {
            (Some(addr), None) => {
                return Err(invalid(
                    "tls-listen",
                    addr,
                    "needs --tls-certs, the folder of certificates to serve",
                ))
            }
            (None, Some(dir)) => {
                return Err(invalid(
                    "tls-certs",
                    dir.display(),
                    "needs --tls-listen, the address to serve TLS on",
                ))
            }
            (Some(addr), Some(_))
                if addr.port() != 0 && (addr == self.listen || addr == self.admin) =>
            {
                return Err(invalid(
                    "tls-listen",
                    addr,
                    "the TLS listener needs an address of its own: give it another port",
                ))
            }
            _ => {}
        }
        for url in &self.orchestrators {
            parse_orchestrator_url(url)?;
        }
        for (i, url) in self.orchestrators.iter().enumerate() {
            if self.orchestrators[..i].contains(url) {
                return Err(invalid("orchestrator", url, "listed twice"));
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid(
                "state-dir",
                "\"\"",
                "the gateway needs a folder for its route table snapshot",
            ));
        }
        let share = self.mass_delete_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(invalid(
                "mass-delete-share",
                share,
                "must be more than 0 and at most 1 (0.10 holds an update that removes more than 10 % of the routes)",
            ));
        }
        let positive: [(&'static str, Duration); 10] = [
            ("mass-delete-window", self.mass_delete_window),
            ("confirm-window", self.confirm_window),
            ("ping-timeout", self.ping_timeout),
            ("reconnect-min", self.reconnect_min),
            ("reconnect-max", self.reconnect_max),
            ("connect-timeout", self.connect_timeout),
            ("first-byte-timeout", self.first_byte_timeout),
            ("idle-timeout", self.idle_timeout),
            ("drain-timeout", self.drain_timeout),
            ("eject-cooldown", self.eject_cooldown),
        ];
        for (setting, value) in positive {
            if value.is_zero() {
                return Err(invalid(setting, "0s", "must be more than zero"));
            }
        }
        if self.max_connections == Some(0) {
            return Err(invalid("max-connections", "0", "must be at least 1"));
        }
        if self.eject_after == 0 {
            return Err(invalid(
                "eject-after",
                "0",
                "must be at least 1 (the failed connects that eject a backend)",
            ));
        }
        if self.backend_max_idle == Some(0) {
            return Err(invalid(
                "backend-max-idle",
                "0",
                "must be at least 1: every request would connect anew",
            ));
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(invalid(
                "reconnect-max",
                format_duration(self.reconnect_max),
                format!(
                    "must be at least --reconnect-min ({})",
                    format_duration(self.reconnect_min)
                ),
            ));
        }
        Ok(())
    }

    /// The request path's settings.
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            connect_timeout: self.connect_timeout,
            first_byte_timeout: self.first_byte_timeout,
            idle_timeout: self.idle_timeout,
            drain_timeout: self.drain_timeout,
            max_connections: self
                .max_connections
                .unwrap_or_else(|| default_max_connections(open_files_limit())),
        }
    }

    /// How the proxy treats backends: ejection and pooling.
    pub fn backend_config(&self) -> BackendConfig {
        BackendConfig {
            eject_after_failures: self.eject_after,
            eject_cooldown: self.eject_cooldown,
            max_idle_per_backend: self.backend_max_idle,
        }
    }

    /// The mass-deletion guard's settings.
    pub(crate) fn guard(&self) -> Guard {
        Guard {
            share: self.mass_delete_share,
            min_routes: self.mass_delete_min_routes,
            min_removed: self.mass_delete_min_removed,
        }
    }
}

/// The default of `--max-connections` under a limit of `open_files`: half of it, less
/// 64 for the gateway's own files (listeners, snapshots, log, the orchestrator's
/// stream), so that each client connection has room for one to its backend; at least
/// 16.
pub(crate) fn default_max_connections(open_files: u64) -> usize {
    let max = open_files.saturating_sub(64) / 2;
    usize::try_from(max).unwrap_or(usize::MAX).max(16)
}

/// The soft limit on open files now (unlimited: `u64::MAX`).
fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        // Unknown: no cap of the gateway's own; accepts fail at the limit instead.
        return u64::MAX;
    }
    limit.rlim_cur
}

/// When an update is held (invariant 1): see [`Guard::verdict`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guard {
    pub(crate) share: f64,
    pub(crate) min_routes: usize,
    pub(crate) min_removed: usize,
}

/// Why an update is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldReason {
    /// It would swap a non-empty table for an empty one.
    Empty,
    /// It would remove more than the configured share of routes at once.
    MassDeletion,
}

impl Guard {
    /// Whether an update that turns a table of `before` routes into one of `after`
    /// routes, `removed` of the old ones gone, may be applied.
    ///
    /// Emptying a non-empty table is always held. Otherwise the update is held when it
    /// removes more than `share` of the routes, but only on a table of at least
    /// `min_routes` and when at least `min_removed` go: the floor that lets ordinary
    /// deletions, and small regions, through.
    pub(crate) fn verdict(
        &self,
        before: usize,
        removed: usize,
        after: usize,
    ) -> Option<HoldReason> {
        if before > 0 && after == 0 {
            return Some(HoldReason::Empty);
        }
        let over_share = removed as f64 > self.share * before as f64;
        if before >= self.min_routes && removed >= self.min_removed && over_share {
            return Some(HoldReason::MassDeletion);
        }
        None
    }
}

/// An orchestrator URL, checked: `http://host:port[/prefix]`, to which `/v1/routes` is
/// appended.
pub(crate) fn parse_orchestrator_url(url: &str) -> Result<http::Uri, ConfigError> {
    let bad = |reason: &str| invalid("orchestrator", url, reason);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(&format!("not a URL ({e}); write it as http://host:port")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported: the route stream is plain HTTP on the region's private network",
            ))
        }
        _ => return Err(bad("must start with http://, as in http://10.0.0.1:7070")),
    }
    if uri.authority().is_none() {
        return Err(bad("has no host: write it as http://host:port"));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query string"));
    }
    Ok(uri)
}

/// Parses `250ms`, `30s`, `10m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write it as 250ms, 30s, 10m or 1h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` must start with a whole number, as in 30s"))?;
    let per_unit = match unit {
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            ))
        }
    };
    per_unit
        .checked_mul(u32::try_from(number).map_err(|_| format!("`{text}` is too long"))?)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest exact unit.
pub(crate) fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_room_for_a_backend_connection_each() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(65_536), 32_736);
        // A limit so low it leaves nothing: a few connections all the same (accepts
        // fail past the limit, and are waited out).
        assert_eq!(default_max_connections(36), 16);
        // RLIM_INFINITY: no cap of the gateway's own (the proxy holds it to what its
        // semaphore can count).
        assert!(default_max_connections(u64::MAX) > 1 << 40);
    }
}
