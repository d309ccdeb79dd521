//! Child processes that are killed when dropped, and bounded waits on them.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, so that a failing or
/// panicking test never leaves servers behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    label: String,
    lines: Option<mpsc::Receiver<String>>,
}

impl ChildGuard {
    /// Spawn `cmd` with stdin closed and stdout piped (read it with
    /// [`ChildGuard::wait_for_line`]); stderr is inherited so that its complaints
    /// show in the test output.
    ///
    /// # Errors
    /// The process could not be started.
    pub fn spawn(cmd: &mut Command, label: impl Into<String>) -> io::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let label = label.into();
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = mpsc::channel();
            // Keeps draining stdout until the child exits, so it never blocks on it.
            let _detached = thread::Builder::new()
                .name(format!("{label}-stdout"))
                .spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            // Nobody listens any more: keep draining silently.
                        }
                    }
                });
            rx
        });
        Ok(Self {
            child,
            label,
            lines,
        })
    }

    /// The process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The label given at spawn time.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Wait until the child prints a line equal to `line` on stdout.
    ///
    /// # Errors
    /// `TimedOut` after `timeout`, or `UnexpectedEof` if stdout closed first.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> io::Result<()> {
        let rx = self
            .lines
            .as_ref()
            .ok_or_else(|| io::Error::other("stdout is not piped"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l == line => return Ok(()),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no {line:?} within {timeout:?}", self.label),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{}: exited before printing {line:?}", self.label),
                    ));
                }
            }
        }
    }

    /// Whether the child has exited, without waiting.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Errors mean it exited meanwhile; wait() reaps it either way.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Everything a finished command printed.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// Standard error as text.
    #[must_use]
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A running command whose stdout and stderr are being collected.
#[derive(Debug)]
pub struct PendingOutput {
    child: Option<Child>,
    label: String,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the collection; what was read so far is kept.
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl PendingOutput {
    /// Start `cmd` with stdin closed, collecting stdout and stderr.
    ///
    /// # Errors
    /// The process could not be started.
    pub fn spawn(cmd: &mut Command, label: impl Into<String>) -> io::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Ok(Self {
            child: Some(child),
            label: label.into(),
            stdout,
            stderr,
        })
    }

    /// Wait for the command to exit, at most `timeout`; on timeout it is killed and
    /// the error carries what it printed on stderr.
    ///
    /// # Errors
    /// `TimedOut`, or waiting failed.
    pub fn wait(mut self, timeout: Duration) -> io::Result<CommandOutput> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("already waited"))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(5));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        match status {
            Some(status) => Ok(CommandOutput {
                status,
                stdout,
                stderr,
            }),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not finish within {timeout:?}; stderr: {}",
                    self.label,
                    String::from_utf8_lossy(&stderr).trim()
                ),
            )),
        }
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run `cmd` to completion, at most `timeout`, collecting its output.
///
/// # Errors
/// It could not be started, or it timed out (and was killed).
pub fn run_with_timeout(
    cmd: &mut Command,
    label: &str,
    timeout: Duration,
) -> io::Result<CommandOutput> {
    PendingOutput::spawn(cmd, label)?.wait(timeout)
}
