//! Starts child processes that cannot outlive the process that started them.
//!
//! Each server runs in a process group of its own, so that a kill reaches the JVM and
//! anything it forked. On Linux the child also gets `PR_SET_PDEATHSIG`: if our process
//! dies without running its destructors (SIGKILL, an aborted test binary), the kernel
//! kills the server too. That signal fires when the *thread* that forked the child
//! exits, not the process, so every child is forked by one thread that lives as long
//! as the process does.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` in a new process group that dies with this process: from the
/// process-lifetime spawner thread, with `PR_SET_PDEATHSIG` on Linux. For any child a
/// supervisor must not leave behind (`switchyard up` uses it for all of its own).
pub fn spawn(mut command: Command) -> io::Result<Child> {
    command.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    let (reply, answer) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .map_err(|_| io::Error::other("the process spawner thread has stopped"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the process spawner thread has stopped"))?
}

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("zkserver-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the process spawner thread");
        Mutex::new(requests)
    })
}

/// Sends `signal` to the process group led by `pid`.
pub(crate) fn signal_group(pid: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        // The group is already gone: nothing left to signal.
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(err)
        }
    }
}

/// Waits until every thread of process `pid` has stopped after a SIGSTOP.
///
/// `killpg` returns once the signal is queued, not once it has taken effect: the kernel
/// stops the other threads of a process only when one of its threads runs and takes
/// the signal, and meanwhile a thread woken by the network can still answer a request.
/// A caller that promises "paused" must wait for the stop itself.
#[cfg(target_os = "linux")]
pub(crate) fn wait_stopped(pid: u32, timeout: std::time::Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let tasks = format!("/proc/{pid}/task");
    loop {
        let mut all_stopped = true;
        for task in std::fs::read_dir(&tasks)? {
            let stat = match std::fs::read_to_string(task?.path().join("stat")) {
                Ok(stat) => stat,
                // A thread that ended between the listing and the read has stopped.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            // The state is the first field after the parenthesised command name,
            // which may itself hold spaces and parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if !matches!(state, Some('T' | 't' | 'Z' | 'X')) {
                all_stopped = false;
                break;
            }
        }
        if all_stopped {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("process {pid} did not stop within {timeout:?} of SIGSTOP"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn wait_stopped(_pid: u32, _timeout: std::time::Duration) -> io::Result<()> {
    Ok(())
}
