//! `cargo xtask`: the project's automation, in Rust rather than shell.
//!
//! - `cargo xtask deps`  installs what the project needs from the distribution (ZooKeeper).
//! - `cargo xtask up`    installs what is missing, builds and runs `switchyard up`.
//! - `cargo xtask test`  installs what is missing and runs every test.
//! - `cargo xtask ci`    what CI runs: deps, `cargo fmt --check`, clippy, tests.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const CLASSPATH_ENV: &str = "SWITCHYARD_ZOOKEEPER_CLASSPATH";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match task {
        "deps" => deps(),
        "up" => deps().and_then(|()| up(rest)),
        "test" => deps().and_then(|()| test(rest)),
        "ci" => ci(),
        "help" | "--help" | "-h" => {
            println!("{}", HELP);
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            ExitCode::FAILURE
        }
    }
}

const HELP: &str = "usage: cargo xtask <task> [args]

tasks:
  deps          install Apache ZooKeeper from the distribution's packages if missing
  up [ARGS]     install what is missing, then run `switchyard up ARGS` (a local region)
  test [ARGS]   install what is missing, then run every test (`cargo test --workspace ARGS`)
  ci            what CI runs: deps, cargo fmt --check, cargo clippy -D warnings, tests";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(mut command: Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    let status = command
        .status()
        .map_err(|err| format!("cannot run {shown}: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Installs ZooKeeper (and with it a Java runtime) from the distribution's packages.
fn deps() -> Result<(), String> {
    if env::var_os(CLASSPATH_ENV).is_some() || Path::new(ZOOKEEPER_JAR).is_file() {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(format!(
            "Apache ZooKeeper is missing ({ZOOKEEPER_JAR} does not exist) and this system has no \
             apt-get. Install Apache ZooKeeper 3.6 or newer and a Java runtime with your package \
             manager, then set {CLASSPATH_ENV} to its class path (its lib/*.jar files and \
             zookeeper jar, separated by ':')."
        ));
    }
    eprintln!(
        "xtask: Apache ZooKeeper is missing; installing the distribution's `zookeeper` package"
    );
    // SAFETY: geteuid has no preconditions; declared here to keep xtask free of dependencies.
    let root_user = unsafe { geteuid() } == 0;
    let apt = |args: &[&str]| {
        let mut command = if root_user {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    if !root_user && !on_path("sudo") {
        return Err(
            "installing ZooKeeper needs root: run `apt-get install zookeeper` as root".into(),
        );
    }
    run(apt(&["update", "-q"]))?;
    run(apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "zookeeper",
    ]))?;
    if !Path::new(ZOOKEEPER_JAR).is_file() {
        return Err(format!(
            "the zookeeper package was installed but {ZOOKEEPER_JAR} is still missing"
        ));
    }
    Ok(())
}

extern "C" {
    fn geteuid() -> u32;
}

fn up(args: &[String]) -> Result<(), String> {
    let mut build = cargo();
    build.args(["build", "--release", "--package", "switchyard"]);
    run(build)?;
    let binary = target_dir().join("release/switchyard");
    let mut command = Command::new(&binary);
    command.arg("up").args(args);
    // Become `switchyard up`, so that Ctrl-C and the exit status are its own.
    use std::os::unix::process::CommandExt;
    let err = command.exec();
    Err(format!("cannot run {}: {err}", binary.display()))
}

fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

fn test(args: &[String]) -> Result<(), String> {
    let mut command = cargo();
    command
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    run(command)
}

fn ci() -> Result<(), String> {
    deps()?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy)?;
    test(&[])
}
