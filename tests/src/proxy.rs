//! The `colo-proxy` daemon as a child process: its output goes to a log file that is
//! shown when a test fails; it is stopped (SIGTERM, then SIGKILL) when dropped.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Where the `colo-proxy` binary is: `$COLO_PROXY_BIN`, or `colo-proxy` next to the
/// `deps/` directory of the running test binary (`target/<profile>/colo-proxy`, which
/// `cargo nextest run --workspace` and `cargo build -p colo-proxy` put there).
///
/// # Errors
/// It does not exist; the message says how to build it.
pub fn colo_proxy_bin() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("COLO_PROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("colo-proxy");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} does not exist: build it first (`cargo build -p colo-proxy`) or set COLO_PROXY_BIN",
                bin.display()
            ),
        ))
    }
}

/// A running `colo-proxy` (or any daemon): killed when dropped; while a test panics,
/// the drop prints the end of its log.
#[derive(Debug)]
pub struct ProxyProcess {
    child: Option<Child>,
    label: String,
    log: PathBuf,
}

impl ProxyProcess {
    /// Start `cmd` with stdout and stderr appended to `log`.
    ///
    /// # Errors
    /// The log could not be created or the process not started.
    pub fn spawn(cmd: &mut Command, label: &str, log: &Path) -> io::Result<Self> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {label} ({cmd:?}): {e}")))?;
        Ok(Self {
            child: Some(child),
            label: label.to_owned(),
            log: log.to_path_buf(),
        })
    }

    /// The label given at spawn time.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id, while it runs.
    #[must_use]
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether it has exited (and how), without waiting.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Err(io::Error::other(format!(
                "{} was already stopped",
                self.label
            ))),
        }
    }

    /// Send it signal `name` (`STOP`, `CONT`, `TERM` ...) with `kill(1)`.
    ///
    /// # Errors
    /// It is not running, or `kill` failed.
    pub fn signal(&self, name: &str) -> io::Result<()> {
        let pid = self
            .id()
            .ok_or_else(|| io::Error::other(format!("{} was already stopped", self.label)))?;
        crate::netns::run_checked(
            Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string()),
        )
        .map(drop)
    }

    /// Kill it at once (SIGKILL), as a crashed host would vanish, and reap it.
    ///
    /// # Errors
    /// It was already stopped, or waiting failed.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other(format!("{} was already stopped", self.label)))?;
        let _ = child.kill();
        child.wait()
    }

    /// Ask it to stop (SIGTERM) and wait up to `timeout`, then kill it.
    /// Returns its exit status, `None` if it had to be killed.
    ///
    /// # Errors
    /// It was already stopped, or waiting failed.
    pub fn terminate(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other(format!("{} was already stopped", self.label)))?;
        if child.try_wait()?.is_none() {
            // `kill -TERM <pid>`: std has no signal API and the crate forbids unsafe.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped (SIGSTOP) process.
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- {} log ({}), last 80 lines ----\n{}\n---- end of {} log ----",
                self.label,
                self.log.display(),
                self.log_tail(80),
                self.label
            );
        }
    }
}
