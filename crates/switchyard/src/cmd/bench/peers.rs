//! The peers `bench zk` compares with, made ready to run: the official Java client
//! (`bench/zk/ZkBench.java`, compiled with `javac` against the installed ZooKeeper jar)
//! and Kazoo (`bench/zk/kazoo_bench.py`, in a virtualenv that gets `kazoo` from PyPI
//! when it lacks it). Either may be missing; then it is skipped with the reason.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The Java programs, embedded so that the binary runs from anywhere.
const ZK_BENCH_JAVA: &str = include_str!("../../../../../bench/zk/ZkBench.java");
const ZK_WALK_JAVA: &str = include_str!("../../../../../bench/zk/ZkWalk.java");
/// The Kazoo script, embedded likewise.
const KAZOO_BENCH_PY: &str = include_str!("../../../../../bench/zk/kazoo_bench.py");
/// The SLF4J binding that silences the Java client's logging.
const SLF4J_NOP: &str = "/usr/share/java/slf4j-nop.jar";

/// How to start one client process; the benchmark appends its arguments.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// What was prepared, for the report (versions).
    pub about: String,
}

impl Launcher {
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command
    }
}

/// The folder the benchmark keeps its compiled Java class and its virtualenv in: the
/// cargo target folder the binary was built in, else a folder under the temp dir.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = env::current_exe() {
        // target/<profile>/switchyard
        if let Some(target) = exe.parent().and_then(Path::parent) {
            if target.join("CACHEDIR.TAG").is_file() {
                return target.to_path_buf();
            }
        }
    }
    env::temp_dir().join("switchyard-bench")
}

/// Switchyard's own binary, re-executed with `bench zk-client`.
pub fn layer() -> anyhow::Result<Launcher> {
    let exe = env::current_exe().context("finding the switchyard binary to re-execute")?;
    Ok(Launcher {
        program: exe,
        args: vec!["bench".into(), "zk-client".into()],
        about: format!("switchyard {}", env!("CARGO_PKG_VERSION")),
    })
}

/// Compiles the Java programs into `dir/bench-java`; `ZkBench` runs.
pub fn java(dir: &Path) -> anyhow::Result<Launcher> {
    java_program(dir, "ZkBench")
}

/// Compiles the Java programs into `dir/bench-java`; `ZkWalk` runs (a subtree read
/// node by node, as a tree cache loads: the peer of an orchestrator's start).
pub fn java_walk(dir: &Path) -> anyhow::Result<Launcher> {
    java_program(dir, "ZkWalk")
}

fn java_program(dir: &Path, main_class: &str) -> anyhow::Result<Launcher> {
    let java = find_program("java").context("no `java` in $JAVA_HOME/bin or on $PATH")?;
    let javac = find_program("javac").context(
        "no `javac` in $JAVA_HOME/bin or on $PATH (install a JDK, e.g. default-jdk-headless)",
    )?;
    let zk_classpath = match env::var(zkserver::CLASSPATH_ENV) {
        Ok(cp) if !cp.trim().is_empty() => cp,
        _ => {
            if !Path::new(zkserver::DEBIAN_JAR).is_file() {
                bail!(
                    "{} does not exist (apt-get install zookeeper)",
                    zkserver::DEBIAN_JAR
                );
            }
            zkserver::DEBIAN_JAR.to_string()
        }
    };
    let classes = dir.join("bench-java");
    fs::create_dir_all(&classes).with_context(|| format!("creating {}", classes.display()))?;
    let mut sources = Vec::new();
    for (name, text) in [
        ("ZkBench.java", ZK_BENCH_JAVA),
        ("ZkWalk.java", ZK_WALK_JAVA),
    ] {
        let source = classes.join(name);
        fs::write(&source, text).with_context(|| format!("writing {}", source.display()))?;
        sources.push(source);
    }
    let output = Command::new(&javac)
        .arg("-nowarn")
        .arg("-cp")
        .arg(&zk_classpath)
        .arg("-d")
        .arg(&classes)
        .args(&sources)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", javac.display()))?;
    if !output.status.success() {
        bail!(
            "javac failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut classpath = format!("{}:{zk_classpath}", classes.display());
    if Path::new(SLF4J_NOP).is_file() {
        classpath.push(':');
        classpath.push_str(SLF4J_NOP);
    }
    let version = Command::new(&java)
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "java (version unknown)".into());
    Ok(Launcher {
        program: java,
        args: vec!["-cp".into(), classpath.into(), main_class.into()],
        about: format!("{version}; ZooKeeper client from {zk_classpath}"),
    })
}

/// Makes a virtualenv with Kazoo in `dir/bench-venv` (installing it only when missing)
/// and writes the script beside it.
pub fn kazoo(dir: &Path) -> anyhow::Result<Launcher> {
    let python3 = find_program("python3").context("no `python3` on $PATH")?;
    let venv = dir.join("bench-venv");
    let python = venv.join("bin/python");
    let version = |python: &Path| -> Option<String> {
        let out = Command::new(python)
            .args([
                "-c",
                "import importlib.metadata as m, kazoo; print(m.version('kazoo'))",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let kazoo_version = match python.is_file().then(|| version(&python)).flatten() {
        Some(v) => v,
        None => {
            eprintln!(
                "bench: installing Kazoo into {} (python3 -m venv, pip install kazoo)",
                venv.display()
            );
            run_quiet(
                Command::new(&python3).arg("-m").arg("venv").arg(&venv),
                "python3 -m venv",
            )?;
            run_quiet(
                Command::new(venv.join("bin/pip")).args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "kazoo",
                ]),
                "pip install kazoo",
            )?;
            version(&python).context("kazoo was installed but does not import")?
        }
    };
    let script = dir.join("bench-kazoo").join("kazoo_bench.py");
    let folder = script.parent().expect("a file in a folder");
    fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    fs::write(&script, KAZOO_BENCH_PY).with_context(|| format!("writing {}", script.display()))?;
    Ok(Launcher {
        program: python,
        args: vec!["-u".into(), script.into()],
        about: format!("kazoo {kazoo_version} in {}", venv.display()),
    })
}

fn run_quiet(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "{what} failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(())
}

/// `$JAVA_HOME/bin/<name>` for Java tools, else the first `<name>` on `$PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    if name.starts_with("java") {
        if let Some(home) = env::var_os("JAVA_HOME") {
            let candidate = Path::new(&home).join("bin").join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
