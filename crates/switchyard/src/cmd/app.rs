//! `switchyard app create|get|list|delete|import`: the orchestrator's app API from a
//! shell. The orchestrator validates; this only builds requests and shows answers,
//! an error with its `error`, `detail` and every field at fault.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use orchestrator::config::parse_duration;
use serde_json::{json, Value};

use super::operator::{self, BAD, UNREACHABLE};
use crate::http::{Answer, Unreachable};
use crate::region::Region;

/// The exit statuses, shown by `--help` of `app` and of each of its subcommands.
macro_rules! exit_status {
    () => {
        "\
Exit status:
  0  done
  1  the orchestrator refused (4xx/5xx: its error, detail and fields are printed), an
     import had bad lines, or the request could not be made (no token, unreadable file)
  2  usage error
  3  the orchestrator could not be reached (connection refused or no answer in time)

The orchestrator is --orchestrator, else SWITCHYARD_ORCHESTRATOR, else the first
orchestrator in <DIR>/region.json (written by `switchyard up`), else
http://127.0.0.1:7000. Writes send the token from --token-file (SWITCHYARD_TOKEN_FILE),
else SWITCHYARD_TOKEN, else the token file named in region.json."
    };
}

/// Where an orchestrator listens when nothing says otherwise.
const DEFAULT_ORCHESTRATOR: &str = "http://127.0.0.1:7000";

#[derive(Debug, clap::Args)]
#[command(after_long_help = exit_status!())]
pub struct Args {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// Orchestrator base URL [default: the first orchestrator of <DIR>/region.json, else
    /// http://127.0.0.1:7000].
    #[arg(
        long,
        env = "SWITCHYARD_ORCHESTRATOR",
        value_name = "URL",
        global = true
    )]
    orchestrator: Option<String>,
    /// File holding the write token [default: SWITCHYARD_TOKEN, else the token file of
    /// <DIR>/region.json].
    #[arg(
        long,
        env = "SWITCHYARD_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    token_file: Option<PathBuf>,
    /// The write token itself (prefer --token-file: a flag shows in `ps`).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// State folder of `switchyard up`, whose region.json gives the defaults.
    #[arg(
        long,
        env = "SWITCHYARD_DIR",
        default_value = ".switchyard",
        global = true
    )]
    dir: PathBuf,
    /// Longest wait for an answer; for `import`, the longest silence between two
    /// progress lines.
    #[arg(long, default_value = "30s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// Print JSON (the API's own) instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum AppCommand {
    /// Create an app, from a JSON file or from flags.
    #[command(after_long_help = concat!(exit_status!(), "

Examples:
  switchyard app create --id shop --domain shop.example.com \\
      --backend 10.0.0.1:8080 --backend 10.0.0.2:8080=3 --http-check /healthz
  switchyard app create --file shop.json
  cat shop.json | switchyard app create --file -"))]
    Create(CreateArgs),
    /// Show one app.
    #[command(after_long_help = exit_status!())]
    Get {
        /// The app's id.
        id: String,
    },
    /// List apps as a table, a page at a time (or all of them with --all).
    #[command(after_long_help = exit_status!())]
    List(ListArgs),
    /// Delete an app.
    #[command(after_long_help = exit_status!())]
    Delete {
        /// The app's id.
        id: String,
        /// Delete only if the app is at this version (as `get` shows it).
        #[arg(long, value_name = "VERSION")]
        if_match: Option<u64>,
    },
    /// Import apps from an NDJSON file (one app per line), streamed to the orchestrator;
    /// prints its progress, then every line that failed.
    #[command(after_long_help = exit_status!())]
    Import {
        /// The NDJSON file, or `-` for stdin.
        file: PathBuf,
        /// Check every line first and import nothing if any is bad.
        #[arg(long)]
        atomic: bool,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The app as JSON (`{"id", "domains", "backends", "health_check"}`), or `-` for
    /// stdin; instead of the flags below.
    #[arg(long, short = 'f', value_name = "FILE",
          conflicts_with_all = ["id", "domains", "backends", "http_check", "tcp_check"])]
    file: Option<PathBuf>,
    /// The app's id.
    #[arg(long, required_unless_present = "file")]
    id: Option<String>,
    /// A domain it answers on (repeatable; `*.example.com` for a wildcard).
    #[arg(
        long = "domain",
        value_name = "DOMAIN",
        required_unless_present = "file"
    )]
    domains: Vec<String>,
    /// A backend, with an optional weight (repeatable).
    #[arg(long = "backend", value_name = "HOST:PORT[=WEIGHT]", value_parser = backend,
          required_unless_present = "file")]
    backends: Vec<BackendArg>,
    /// Probe backends with an HTTP GET of this path (2xx is healthy).
    #[arg(long, value_name = "PATH", conflicts_with = "tcp_check")]
    http_check: Option<String>,
    /// Probe backends by opening a TCP connection.
    #[arg(long)]
    tcp_check: bool,
}

#[derive(Debug, Clone)]
struct BackendArg {
    addr: String,
    weight: Option<u16>,
}

fn backend(text: &str) -> Result<BackendArg, String> {
    let (addr, weight) = match text.rsplit_once('=') {
        Some((addr, weight)) => {
            let weight = weight
                .parse()
                .map_err(|_| format!("weight `{weight}` is not a number from 1 to 1000"))?;
            (addr, Some(weight))
        }
        None => (text, None),
    };
    if !addr.contains(':') {
        return Err(format!("`{addr}` is not HOST:PORT"));
    }
    Ok(BackendArg {
        addr: addr.to_string(),
        weight,
    })
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Only the app that owns this domain.
    #[arg(long, conflicts_with_all = ["after", "all"])]
    domain: Option<String>,
    /// Apps per page (1 to 10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// Start after this app id (the `next` of the previous page).
    #[arg(long, value_name = "ID")]
    after: Option<String>,
    /// Follow `next` to the last page.
    #[arg(long)]
    all: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let api = Api::new(args.api)?;
    operator::runtime()?.block_on(async {
        match args.command {
            AppCommand::Create(create) => api.create(create).await,
            AppCommand::Get { id } => api.get(&id).await,
            AppCommand::List(list) => api.list(list).await,
            AppCommand::Delete { id, if_match } => api.delete(&id, if_match).await,
            AppCommand::Import { file, atomic } => api.import(&file, atomic).await,
        }
    })
}

/// One orchestrator's API, and how to show its answers.
struct Api {
    base: String,
    /// Where `base` came from, for an operator who did not expect it.
    base_from: String,
    args: ApiArgs,
    region: Option<Region>,
}

/// A failure already reported to the operator: exit with this status.
struct Reported(ExitCode);

impl Api {
    fn new(args: ApiArgs) -> anyhow::Result<Api> {
        // region.json is read only when it gives a default.
        let region =
            if args.orchestrator.is_none() || (args.token_file.is_none() && args.token.is_none()) {
                operator::region_if_present(&args.dir)?
            } else {
                None
            };
        let region_file = args.dir.join(crate::region::FILE);
        let first = region.as_ref().and_then(|r| r.orchestrators.first());
        let (base, base_from) = match (&args.orchestrator, first) {
            (Some(url), _) => (
                operator::base_url(url),
                "--orchestrator or SWITCHYARD_ORCHESTRATOR".to_string(),
            ),
            (None, Some(first)) => (
                operator::base_url(&first.url),
                format!("the first orchestrator in {}", region_file.display()),
            ),
            (None, None) => (
                DEFAULT_ORCHESTRATOR.to_string(),
                format!(
                    "the default: no --orchestrator, and no {}",
                    region_file.display()
                ),
            ),
        };
        Ok(Api {
            base,
            base_from,
            args,
            region,
        })
    }

    /// The write token, or an error saying how to give one.
    fn token(&self) -> anyhow::Result<String> {
        let read = |path: &Path, whence: &str| -> anyhow::Result<String> {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {} ({whence})", path.display()))?;
            let token = token.trim().to_string();
            anyhow::ensure!(
                !token.is_empty(),
                "the token file {} is empty",
                path.display()
            );
            Ok(token)
        };
        if let Some(path) = &self.args.token_file {
            return read(path, "--token-file or SWITCHYARD_TOKEN_FILE");
        }
        if let Some(token) = self.args.token.as_deref().map(str::trim) {
            if !token.is_empty() {
                return Ok(token.to_string());
            }
        }
        if let Some(region) = &self.region {
            let whence = format!(
                "named by {}",
                self.args.dir.join(crate::region::FILE).display()
            );
            return read(&region.token_file, &whence);
        }
        anyhow::bail!(
            "writes need the orchestrator's token, and none was given: pass --token-file FILE \
             (or set SWITCHYARD_TOKEN_FILE=FILE, or SWITCHYARD_TOKEN), or run this where \
             --dir ({}) holds the region.json of `switchyard up`",
            self.args.dir.display()
        )
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, Unreachable> {
        let url = format!("{}{path}", self.base);
        crate::http::request(method, &url, token, headers, body, self.args.timeout).await
    }

    /// The answer if its status is one of `ok`; otherwise the failure is printed.
    fn expect(&self, result: Result<Answer, Unreachable>, ok: &[u16]) -> Result<Answer, Reported> {
        match result {
            Ok(answer) if ok.contains(&answer.status) => Ok(answer),
            Ok(answer) => {
                self.refused(&answer);
                Err(Reported(operator::exit(BAD)))
            }
            Err(err) => Err(self.unreachable(&err)),
        }
    }

    fn unreachable(&self, err: &Unreachable) -> Reported {
        eprintln!("error: {err}");
        eprintln!("  (is it running? {} is {})", self.base, self.base_from);
        Reported(operator::exit(UNREACHABLE))
    }

    /// Shows an error answer: `error`, `detail`, and each of `fields`.
    fn refused(&self, answer: &Answer) {
        let body = answer.json().unwrap_or(Value::Null);
        let error = body["error"].as_str().unwrap_or("error");
        let detail = match body["detail"].as_str() {
            Some(detail) => detail.to_string(),
            None => operator::reason(answer),
        };
        eprintln!(
            "error: the orchestrator refused: {error} (HTTP {}): {detail}",
            answer.status
        );
        for field in body["fields"].as_array().into_iter().flatten() {
            let name = field["field"]
                .as_str()
                .filter(|f| !f.is_empty())
                .unwrap_or("(body)");
            let message = field["message"].as_str().unwrap_or_default();
            eprintln!("  {name}: {message}");
        }
        if answer.status == 401 {
            eprintln!(
                "  (check the token: --token-file, SWITCHYARD_TOKEN_FILE or SWITCHYARD_TOKEN)"
            );
        }
        if self.args.json {
            let mut out = if body.is_object() {
                body.clone()
            } else {
                json!({ "error": error, "detail": detail })
            };
            out["status"] = answer.status.into();
            println!("{out}");
        }
    }

    async fn create(&self, args: CreateArgs) -> anyhow::Result<ExitCode> {
        let body = match &args.file {
            Some(path) => read_input(path)?,
            None => Bytes::from(app_json(&args).to_string()),
        };
        let token = self.token()?;
        let headers = [("content-type", "application/json")];
        let result = self
            .call("POST", "/v1/apps", Some(&token), &headers, body)
            .await;
        let answer = match self.expect(result, &[200, 201]) {
            Ok(answer) => answer,
            Err(Reported(code)) => return Ok(code),
        };
        let app = answer.json()?;
        if self.args.json {
            println!("{app}");
        } else {
            // The answer's Location names the app's URL: say it, for the next command.
            let location = answer
                .headers
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| format!(" at {}{l}", self.base))
                .unwrap_or_default();
            println!(
                "created app {} (version {}){location}",
                text(&app["id"]),
                app["version"]
            );
            print!("{}", describe(&app));
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn get(&self, id: &str) -> anyhow::Result<ExitCode> {
        let path = format!("/v1/apps/{}", encode(id));
        let result = self.call("GET", &path, None, &[], Bytes::new()).await;
        let answer = match self.expect(result, &[200]) {
            Ok(answer) => answer,
            Err(Reported(code)) => return Ok(code),
        };
        let app = answer.json()?;
        if self.args.json {
            println!("{app}");
        } else {
            print!("{}", describe(&app));
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn list(&self, args: ListArgs) -> anyhow::Result<ExitCode> {
        let mut apps: Vec<Value> = Vec::new();
        let mut after = args.after.clone();
        let next = loop {
            let mut query = format!("/v1/apps?limit={}", args.limit);
            if let Some(domain) = &args.domain {
                query.push_str(&format!("&domain={}", encode(domain)));
            }
            if let Some(after) = &after {
                query.push_str(&format!("&after={}", encode(after)));
            }
            let result = self.call("GET", &query, None, &[], Bytes::new()).await;
            let page = match self.expect(result, &[200]) {
                Ok(answer) => answer.json()?,
                Err(Reported(code)) => return Ok(code),
            };
            apps.extend(page["apps"].as_array().cloned().unwrap_or_default());
            let next = page["next"].as_str().map(str::to_string);
            match next {
                Some(next) if args.all => after = Some(next),
                next => break next,
            }
        };
        if self.args.json {
            let mut out = json!({ "apps": apps });
            if let Some(next) = &next {
                out["next"] = next.clone().into();
            }
            println!("{out}");
        } else {
            print!("{}", table(&apps));
            if let Some(next) = next {
                eprintln!("(more apps follow: add --all, or --after {next} for the next page)");
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn delete(&self, id: &str, if_match: Option<u64>) -> anyhow::Result<ExitCode> {
        let token = self.token()?;
        let version = if_match.map(|v| format!("\"{v}\""));
        let headers: Vec<(&str, &str)> = version.iter().map(|v| ("if-match", v.as_str())).collect();
        let path = format!("/v1/apps/{}", encode(id));
        let result = self
            .call("DELETE", &path, Some(&token), &headers, Bytes::new())
            .await;
        if let Err(Reported(code)) = self.expect(result, &[200, 204]) {
            return Ok(code);
        }
        if self.args.json {
            println!("{}", json!({ "deleted": id }));
        } else {
            println!("deleted app {id}");
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn import(&self, file: &Path, atomic: bool) -> anyhow::Result<ExitCode> {
        let token = self.token()?;
        let chunks = stream_file(file)?;
        let url = format!(
            "{}/v1/apps/import{}",
            self.base,
            if atomic { "?atomic=true" } else { "" }
        );
        let headers = [("content-type", "application/x-ndjson")];
        let timeout = self.args.timeout;
        let started =
            crate::http::request_streamed("POST", &url, Some(&token), &headers, chunks, timeout)
                .await;
        let mut answer = match started {
            Ok(answer) if answer.status == 200 => answer,
            Ok(answer) => {
                let whole = answer.rest(timeout).await;
                let _ = self.expect(whole, &[200]);
                return Ok(operator::exit(BAD));
            }
            Err(err) => return Ok(self.unreachable(&err).0),
        };
        // Progress lines go to stderr as they arrive; the summary is the `done` line.
        let mut pending: Vec<u8> = Vec::new();
        let mut done = None;
        loop {
            let chunk = match answer.chunk(timeout).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(err) => return Ok(self.unreachable(&err).0),
            };
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if let Some(progress) = event.get("progress") {
                    eprintln!(
                        "import: {} lines read, {} imported, {} failed",
                        progress["lines"], progress["imported"], progress["failed"]
                    );
                } else if let Some(summary) = event.get("done") {
                    done = Some(summary.clone());
                }
            }
        }
        let Some(done) = done else {
            anyhow::bail!(
                "the orchestrator's answer ended before the import's summary: some apps may \
                 have been imported (see `switchyard app list`)"
            );
        };
        let failed = done["failed"].as_array().cloned().unwrap_or_default();
        if self.args.json {
            println!("{done}");
        } else {
            print!("{}", import_summary(&done, &failed));
        }
        Ok(if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            operator::exit(BAD)
        })
    }
}

/// The app's JSON from `create`'s flags; the orchestrator validates it.
fn app_json(args: &CreateArgs) -> Value {
    let backends: Vec<Value> = args
        .backends
        .iter()
        .map(|b| match b.weight {
            Some(weight) => json!({ "addr": b.addr, "weight": weight }),
            None => json!({ "addr": b.addr }),
        })
        .collect();
    let mut app = json!({ "id": args.id, "domains": args.domains, "backends": backends });
    if let Some(path) = &args.http_check {
        app["health_check"] = json!({ "type": "http", "path": path });
    } else if args.tcp_check {
        app["health_check"] = json!({ "type": "tcp" });
    }
    app
}

/// A file's content, or stdin's for `-`.
fn read_input(path: &Path) -> anyhow::Result<Bytes> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        return Ok(Bytes::from(buf));
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Bytes::from(bytes))
}

/// Reads a file (or stdin for `-`) on a thread of its own, a piece at a time, into a
/// request body: a large import is never held in memory whole.
fn stream_file(path: &Path) -> anyhow::Result<crate::http::BodyChunks> {
    let mut source: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    std::thread::Builder::new()
        .name("import-reader".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let piece = match source.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => Err(err),
                };
                let failed = piece.is_err();
                if sender.blocking_send(piece).is_err() || failed {
                    return;
                }
            }
        })
        .context("starting the file reader")?;
    Ok(receiver)
}

/// A JSON string as text, or the JSON itself.
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_string)
}

fn backend_text(backend: &Value) -> String {
    format!(
        "{} (weight {})",
        text(&backend["addr"]),
        backend["weight"].as_u64().unwrap_or(1)
    )
}

fn health_text(app: &Value) -> String {
    let check = &app["health_check"];
    match check["type"].as_str() {
        Some("http") => format!("http GET {}", text(&check["path"])),
        Some(other) => other.to_string(),
        None => "none (backends are taken as healthy)".to_string(),
    }
}

/// One app, a field per line.
fn describe(app: &Value) -> String {
    use std::fmt::Write;
    let list = |items: &Value, each: &dyn Fn(&Value) -> String| -> Vec<String> {
        items.as_array().into_iter().flatten().map(each).collect()
    };
    let mut out = String::new();
    let _ = writeln!(out, "id:            {}", text(&app["id"]));
    let _ = writeln!(out, "version:       {}", app["version"]);
    let pad = "\n               ";
    let domains = list(&app["domains"], &text);
    let _ = writeln!(out, "domains:       {}", domains.join(pad));
    let backends = list(&app["backends"], &backend_text);
    let _ = writeln!(out, "backends:      {}", backends.join(pad));
    let _ = writeln!(out, "health check:  {}", health_text(app));
    out
}

/// Apps as a table: id, version, domains, backends, health check.
fn table(apps: &[Value]) -> String {
    if apps.is_empty() {
        return "no apps\n".to_string();
    }
    let rows: Vec<[String; 5]> = apps
        .iter()
        .map(|app| {
            let domains: Vec<String> = app["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let shown = match domains.len() {
                0..=2 => domains.join(","),
                n => format!("{},{} (+{})", domains[0], domains[1], n - 2),
            };
            let backends = app["backends"].as_array().map_or(0, Vec::len);
            let health = match app["health_check"]["type"].as_str() {
                Some("http") => format!("http {}", text(&app["health_check"]["path"])),
                Some(other) => other.to_string(),
                None => "-".to_string(),
            };
            [
                text(&app["id"]),
                app["version"].to_string(),
                shown,
                backends.to_string(),
                health,
            ]
        })
        .collect();
    let header = ["ID", "VERSION", "DOMAINS", "BACKENDS", "HEALTH"].map(str::to_string);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The end of an import: counts, then every bad line with its number and fields.
fn import_summary(done: &Value, failed: &[Value]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let atomic = done["atomic"].as_bool().unwrap_or(false);
    let _ = writeln!(
        out,
        "import: {}, {} imported, {} failed{}",
        operator::count(done["lines"].as_u64().unwrap_or(0), "line"),
        operator::count(done["imported"].as_u64().unwrap_or(0), "app"),
        operator::count(failed.len() as u64, "line"),
        if atomic && !failed.is_empty() {
            " (--atomic: nothing was imported)"
        } else {
            ""
        }
    );
    for bad in failed {
        let fields = bad["fields"].as_array().cloned().unwrap_or_default();
        if fields.is_empty() {
            let _ = writeln!(out, "  line {}: {}", bad["line"], text(&bad["error"]));
        } else {
            let _ = writeln!(out, "  line {}:", bad["line"]);
            for field in fields {
                let name = field["field"]
                    .as_str()
                    .filter(|f| !f.is_empty())
                    .unwrap_or("(line)");
                let _ = writeln!(out, "    {name}: {}", text(&field["message"]));
            }
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986) and `*`.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~*".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_take_an_optional_weight() {
        let b = backend("10.0.0.1:8080=3").unwrap();
        assert_eq!((b.addr.as_str(), b.weight), ("10.0.0.1:8080", Some(3)));
        let b = backend("[::1]:80").unwrap();
        assert_eq!((b.addr.as_str(), b.weight), ("[::1]:80", None));
        assert!(backend("10.0.0.1:8080=x").is_err());
        assert!(backend("host").is_err());
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let apps = [
            json!({"id": "a", "version": 7, "domains": ["a.test"], "backends": [{"addr": "h:1", "weight": 1}]}),
            json!({"id": "bbbb", "version": 12, "domains": ["b.test", "c.test", "d.test"],
                   "backends": [], "health_check": {"type": "tcp"}}),
        ];
        let expected = "\
ID    VERSION  DOMAINS             BACKENDS  HEALTH
a     7        a.test              1         -
bbbb  12       b.test,c.test (+1)  0         tcp
";
        assert_eq!(table(&apps), expected);
    }

    #[test]
    fn encoding_keeps_ids_and_wildcards() {
        assert_eq!(encode("shop-1"), "shop-1");
        assert_eq!(encode("*.example.com"), "*.example.com");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
