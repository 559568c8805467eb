//! The `capped` CPU mode: each proxy limited to the same share of one CPU by a cgroup
//! CPU quota, so that the proxy, not the load side, is what runs out.
//!
//! On one core of its own a proxy here is not the bottleneck: wrk and the backend, which
//! share the other CPU, are 95–98 % busy before any proxy is (docs/BENCHMARKS.md), so
//! requests/s says more about them than about the proxy. Capped at half a CPU, a proxy
//! runs out while the load side still has about half of its CPU to spare, and
//! requests/s measures what each proxy does with the same CPU time.
//!
//! One cgroup, made for the run and removed after it, holds each proxy in turn: cgroup v1's
//! `cpu` controller (`cpu.cfs_quota_us`) or cgroup v2's (`cpu.max`), whichever the
//! machine mounts. A proxy joins it between fork and exec, so every process and thread
//! it starts (nginx's workers) is in it from the first instruction. Needs root.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

/// The quota's period. Short, so that a throttled proxy waits at most a few ms at a time.
const PERIOD_US: u64 = 10_000;

/// Which cgroup interface holds the `cpu` controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A cgroup limiting its members to a share of one CPU; removed when dropped.
pub(super) struct CpuCap {
    dir: PathBuf,
    version: Version,
    /// CPU time its members may use per [`PERIOD_US`].
    quota_us: u64,
}

/// Periods of the quota, and how many of them ended with the members throttled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Throttling {
    pub periods: u64,
    pub throttled: u64,
}

impl Throttling {
    /// The share of the periods since `before` in which the quota ran out, in %.
    pub fn percent_since(self, before: Throttling) -> Option<f64> {
        let periods = self.periods.checked_sub(before.periods)?;
        let throttled = self.throttled.checked_sub(before.throttled)?;
        (periods > 0).then(|| 100.0 * throttled as f64 / periods as f64)
    }
}

impl CpuCap {
    /// Makes the cgroup. An error says what is missing: no `cpu` controller mounted, or
    /// no right to make a cgroup (not root).
    pub fn create(percent: u32) -> anyhow::Result<CpuCap> {
        anyhow::ensure!(
            (1..=100).contains(&percent),
            "a CPU cap must be 1 to 100 % of a CPU, not {percent}"
        );
        let mounts =
            fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let (root, version) = cpu_hierarchy(&mounts, |path| fs::read_to_string(path).ok())
            .context("no cgroup `cpu` controller is mounted (cgroup v1 `cpu`, or cgroup v2 with `cpu` in cgroup.controllers)")?;
        let dir = root.join(format!("switchyard-bench-{}", std::process::id()));
        if version == Version::V2 {
            // The controller must be enabled for the root's children.
            let control = root.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "cpu") {
                fs::write(&control, "+cpu").with_context(|| {
                    format!("enabling the cpu controller in {}", control.display())
                })?;
            }
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "creating the cgroup {} (the capped mode needs root)",
                        dir.display()
                    )
                })
            }
        }
        let quota = PERIOD_US * u64::from(percent) / 100;
        let cap = CpuCap {
            dir,
            version,
            quota_us: quota,
        };
        match version {
            Version::V1 => {
                cap.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
                cap.write("cpu.cfs_quota_us", &quota.to_string())?;
            }
            Version::V2 => cap.write("cpu.max", &format!("{quota} {PERIOD_US}"))?,
        }
        Ok(cap)
    }

    pub fn describe(&self) -> String {
        let (file, version) = match self.version {
            Version::V1 => ("cpu.cfs_quota_us", "v1"),
            Version::V2 => ("cpu.max", "v2"),
        };
        format!(
            "cgroup {version} {} ({file}: {} µs per {PERIOD_US} µs)",
            self.dir.display(),
            self.quota_us,
        )
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
    }

    /// Makes `command`'s process join the cgroup before it runs the program.
    pub fn apply(&self, command: &mut Command) -> anyhow::Result<()> {
        let procs = CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes())
            .context("a cgroup path with a NUL byte")?;
        // SAFETY: open, write and close are async-signal-safe system calls; the closure
        // reads only the path moved into it. Writing 0 moves the writing process.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                let error = io::Error::last_os_error();
                libc::close(fd);
                if written != 2 {
                    return Err(error);
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// The quota's periods so far (zero if cpu.stat cannot be read).
    pub fn throttling(&self) -> Throttling {
        fs::read_to_string(self.dir.join("cpu.stat"))
            .map(|text| parse_stat(&text))
            .unwrap_or_default()
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // A stopped proxy's last processes may take a moment to leave.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return,
                Err(err) if Instant::now() >= until => {
                    eprintln!(
                        "bench: could not remove the cgroup {}: {err}",
                        self.dir.display()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Where the `cpu` controller is mounted, from /proc/self/mounts: a cgroup v1 hierarchy
/// with `cpu` among its options, else a cgroup v2 one whose `cgroup.controllers` (read
/// with `read`) lists `cpu`.
fn cpu_hierarchy(
    mounts: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<(PathBuf, Version)> {
    let mut v2 = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount_point, kind, options, ..] = fields[..] else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point);
        match kind {
            "cgroup" if options.split(',').any(|o| o == "cpu") => {
                return Some((mount_point, Version::V1));
            }
            "cgroup2" if v2.is_none() => {
                let controllers = read(&mount_point.join("cgroup.controllers"));
                if controllers.is_some_and(|c| c.split_whitespace().any(|c| c == "cpu")) {
                    v2 = Some((mount_point, Version::V2));
                }
            }
            _ => {}
        }
    }
    v2
}

/// `nr_periods` and `nr_throttled` from a cpu.stat (v1 and v2 name them alike).
fn parse_stat(text: &str) -> Throttling {
    let mut out = Throttling::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(value) = value.parse() else { continue };
        match key {
            "nr_periods" => out.periods = value,
            "nr_throttled" => out.throttled = value,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
";

    #[test]
    fn the_v1_cpu_controller_is_found_by_its_option_not_a_prefix() {
        let found = cpu_hierarchy(HYBRID, |_| Some("memory pids".into()));
        assert_eq!(
            found,
            Some((PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), Version::V1))
        );
    }

    #[test]
    fn a_v2_hierarchy_counts_only_with_cpu_among_its_controllers() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n";
        let with_cpu = cpu_hierarchy(unified, |path| {
            assert_eq!(path, Path::new("/sys/fs/cgroup/cgroup.controllers"));
            Some("cpuset cpu io memory pids\n".into())
        });
        assert_eq!(
            with_cpu,
            Some((PathBuf::from("/sys/fs/cgroup"), Version::V2))
        );
        assert_eq!(
            cpu_hierarchy(unified, |_| Some("cpuset io memory\n".into())),
            None
        );
        assert_eq!(cpu_hierarchy(unified, |_| None), None);
        // Hybrid, the unified hierarchy without controllers: v1's cpu is the one.
        let hybrid = cpu_hierarchy(HYBRID, |_| Some(String::new()));
        assert_eq!(hybrid.map(|(_, v)| v), Some(Version::V1));
        // An unreadable v2 hierarchy does not hide a v1 one after it.
        let unreadable_first = format!("{unified}{HYBRID}");
        let found = cpu_hierarchy(&unreadable_first, |_| None);
        assert_eq!(found.map(|(_, v)| v), Some(Version::V1));
        assert_eq!(cpu_hierarchy("garbage\n\n", |_| None), None);
    }

    #[test]
    fn throttling_is_read_from_cpu_stat_and_compared_between_readings() {
        let v1 = "nr_periods 4895\nnr_throttled 4765\nthrottled_time 22460629743\n";
        let v2 = "usage_usec 10\nnr_periods 10\nnr_throttled 4\nthrottled_usec 7\n";
        let a = parse_stat(v1);
        assert_eq!(
            a,
            Throttling {
                periods: 4895,
                throttled: 4765
            }
        );
        let b = parse_stat(v2);
        assert_eq!(
            b,
            Throttling {
                periods: 10,
                throttled: 4
            }
        );
        assert_eq!(
            parse_stat("nr_periods x\n\nnr_throttled\n"),
            Throttling::default()
        );
        let later = Throttling {
            periods: 5895,
            throttled: 5265,
        };
        assert_eq!(later.percent_since(a), Some(50.0));
        assert_eq!(a.percent_since(a), None);
        assert_eq!(a.percent_since(later), None);
    }
}
