//! Finds the Java runtime and the Apache ZooKeeper jars that a server is started from.
//!
//! Nothing here downloads anything: ZooKeeper comes from the distribution's package
//! (`apt-get install zookeeper`), and a missing piece is an error that says how to get it.

use std::env;
use std::path::{Path, PathBuf};

use crate::Error;

/// Where the Debian/Ubuntu `zookeeper` package puts its jar.
pub const DEBIAN_JAR: &str = "/usr/share/java/zookeeper.jar";
/// An SLF4J binding from the same package's dependencies; without one the server logs nothing.
pub const DEBIAN_SLF4J_SIMPLE: &str = "/usr/share/java/slf4j-simple.jar";
/// Overrides the whole class path (for a ZooKeeper installed from Apache's tarball).
pub const CLASSPATH_ENV: &str = "SWITCHYARD_ZOOKEEPER_CLASSPATH";

/// The main class of a ZooKeeper server, standalone or in a quorum.
pub(crate) const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";

/// A Java runtime and a ZooKeeper class path that were found on this machine.
#[derive(Debug, Clone)]
pub struct Installation {
    /// The `java` executable.
    pub java: PathBuf,
    /// The class path handed to `java -cp`.
    pub classpath: String,
}

impl Installation {
    /// Looks for ZooKeeper and Java the way an operator would expect: `$SWITCHYARD_ZOOKEEPER_CLASSPATH`,
    /// else the Debian package; `$JAVA_HOME/bin/java`, else `java` on `$PATH`.
    pub fn locate() -> Result<Installation, Error> {
        let classpath = match env::var(CLASSPATH_ENV) {
            Ok(cp) if !cp.trim().is_empty() => cp,
            _ => {
                if !Path::new(DEBIAN_JAR).is_file() {
                    return Err(Error::NotInstalled {
                        what: "Apache ZooKeeper",
                        detail: format!(
                            "{DEBIAN_JAR} does not exist. Install it with `apt-get install zookeeper` \
                             (Debian/Ubuntu; `cargo xtask deps` does it for you), or set \
                             {CLASSPATH_ENV} to the class path of an Apache ZooKeeper 3.6+ installation"
                        ),
                    });
                }
                let mut cp = DEBIAN_JAR.to_string();
                // The package's manifest pulls in the rest of its class path; the
                // binding only makes the server write its log.
                if Path::new(DEBIAN_SLF4J_SIMPLE).is_file() {
                    cp.push(':');
                    cp.push_str(DEBIAN_SLF4J_SIMPLE);
                }
                cp
            }
        };
        let java = find_java().ok_or_else(|| Error::NotInstalled {
            what: "Java",
            detail: "no `java` in $JAVA_HOME/bin or on $PATH. Install a Java runtime, 11 or newer \
                     (`apt-get install default-jre-headless` on Debian/Ubuntu)"
                .to_string(),
        })?;
        Ok(Installation { java, classpath })
    }
}

fn find_java() -> Option<PathBuf> {
    if let Some(home) = env::var_os("JAVA_HOME") {
        let java = Path::new(&home).join("bin/java");
        if java.is_file() {
            return Some(java);
        }
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("java"))
        .find(|java| java.is_file())
}
