//! Network namespaces that remove themselves, and commands run inside them.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace this crate creates is named `colo-<pid>-<n>-<role>`.
pub const NETNS_PREFIX: &str = "colo-";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static CLEAN_STALE: Once = Once::new();

/// Run `ip` with `args` in the current namespace; an error carries its stderr.
///
/// # Errors
/// `ip` could not be run or exited unsuccessfully.
pub fn ip<I, S>(args: I) -> io::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_checked(&mut cmd)
}

/// Run a command to completion and return its stdout; a non-zero exit becomes an
/// error that names the command and carries its stderr.
///
/// # Errors
/// The command could not be started or exited unsuccessfully.
pub fn run_checked(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Names of the network namespaces that exist now.
///
/// # Errors
/// `ip netns list` failed.
pub fn list_netns() -> io::Result<Vec<String>> {
    let out = ip(["netns", "list"])?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The pid embedded in a namespace name made by [`Netns::create`].
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NETNS_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Delete namespaces left behind by earlier runs: those named with
/// [`NETNS_PREFIX`] whose owning process is gone (a test run that was killed, or that
/// aborted instead of unwinding). Namespaces of live processes, including parallel
/// test runs, are left alone. Returns the names removed.
#[must_use]
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in list_netns().unwrap_or_default() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if ip(["netns", "del", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// A network namespace, deleted when dropped (also while a panicking test unwinds).
///
/// Processes started inside it are not killed by the drop: hold them in
/// [`crate::process::ChildGuard`]s that are dropped first.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create a namespace named `colo-<pid>-<n>-<role>`, unique within this process.
    /// The first call in a process also removes stale namespaces of dead processes.
    ///
    /// # Errors
    /// `ip netns add` failed.
    pub fn create(role: &str) -> io::Result<Self> {
        CLEAN_STALE.call_once(|| {
            for name in cleanup_stale() {
                eprintln!("colo-integration: removed stale network namespace {name}");
            }
        });
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}-{role}", std::process::id());
        ip(["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which
    /// execs the program: the child's pid is the program's).
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Run `program args...` inside the namespace to completion; returns its stdout.
    ///
    /// # Errors
    /// The command failed.
    pub fn run<I, S>(&self, program: &str, args: I) -> io::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_checked(&mut cmd)
    }

    /// Run `ip args...` against this namespace (`ip -n <name>`).
    ///
    /// # Errors
    /// The command failed.
    pub fn ip<I, S>(&self, args: I) -> io::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_checked(&mut cmd)
    }

    /// Write `value` to `/proc/sys/<path>` as seen from inside the namespace (the
    /// `net` subtree is per namespace). `path` uses slashes: `net/ipv4/tcp_timestamps`.
    ///
    /// # Errors
    /// The file does not exist or could not be written.
    pub fn set_sysctl(&self, path: &str, value: &str) -> io::Result<()> {
        let file = format!("/proc/sys/{path}");
        self.run("sh", ["-c", "echo \"$1\" > \"$0\"", &file, value])
            .map(drop)
    }

    /// Read `/proc/sys/<path>` as seen from inside the namespace.
    ///
    /// # Errors
    /// The file could not be read.
    pub fn sysctl(&self, path: &str) -> io::Result<String> {
        let file = format!("/proc/sys/{path}");
        self.run("cat", [&file]).map(|s| s.trim().to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(["netns", "del", &self.name]) {
            eprintln!("colo-integration: could not delete {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_our_names_only() {
        assert_eq!(owner_pid("colo-1234-0-pvm"), Some(1234));
        assert_eq!(owner_pid("colo-x-0-pvm"), None);
        assert_eq!(owner_pid("other-1234"), None);
    }
}
