//! Child processes that are killed when dropped, and bounded waits on them.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
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

    /// The stdout lines printed since the last call (or since `READY`), without
    /// waiting.
    pub fn drain_lines(&mut self) -> Vec<String> {
        self.lines
            .as_ref()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
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

/// Wait for `child` to exit, at most `timeout`; then kill and reap it and return
/// `None`.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The output of a command that exited, or the error for one that had to be killed.
fn finished(
    label: &str,
    timeout: Duration,
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
) -> io::Result<CommandOutput> {
    match status {
        Some(status) => Ok(CommandOutput {
            status,
            stdout,
            stderr,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{label} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr).trim()
            ),
        )),
    }
}

/// A started command, stdin closed, its stdout collected in the background; killed
/// and reaped when dropped before it was waited for. The common part of
/// [`PendingOutput`] and [`WatchedOutput`].
#[derive(Debug)]
struct Collecting {
    child: Option<Child>,
    label: String,
    stdout: Option<JoinHandle<Vec<u8>>>,
}

impl Collecting {
    /// Start `cmd` with stdin closed and stdout and stderr piped; returns it and its
    /// stderr for the caller to read.
    fn spawn(cmd: &mut Command, label: String) -> io::Result<(Self, Option<ChildStderr>)> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take();
        let run = Self {
            child: Some(child),
            label,
            stdout,
        };
        Ok((run, stderr))
    }

    /// Whether the command has exited (or was waited for already).
    fn exited(&mut self) -> io::Result<bool> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?.is_some()),
            None => Ok(true),
        }
    }

    /// Wait for the command to exit, at most `timeout` (then it is killed): its exit
    /// status (`None` when killed) and everything it wrote on stdout.
    fn exit(&mut self, timeout: Duration) -> io::Result<(Option<ExitStatus>, Vec<u8>)> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("already waited"))?;
        let status = wait_or_kill(&mut child, timeout)?;
        let stdout = join_collected(self.stdout.take());
        Ok((status, stdout))
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running command whose stdout and stderr are being collected.
#[derive(Debug)]
pub struct PendingOutput {
    run: Collecting,
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

/// What a [`collect`] thread read (nothing if there was none or it panicked).
fn join_collected(handle: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    handle
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default()
}

impl PendingOutput {
    /// Start `cmd` with stdin closed, collecting stdout and stderr.
    ///
    /// # Errors
    /// The process could not be started.
    pub fn spawn(cmd: &mut Command, label: impl Into<String>) -> io::Result<Self> {
        let (run, stderr) = Collecting::spawn(cmd, label.into())?;
        Ok(Self {
            run,
            stderr: stderr.map(collect),
        })
    }

    /// Wait for the command to exit, at most `timeout`; on timeout it is killed and
    /// the error carries what it printed on stderr.
    ///
    /// # Errors
    /// `TimedOut`, or waiting failed.
    pub fn wait(mut self, timeout: Duration) -> io::Result<CommandOutput> {
        let (status, stdout) = self.run.exit(timeout)?;
        let stderr = join_collected(self.stderr.take());
        finished(&self.run.label, timeout, status, stdout, stderr)
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

/// A running command whose stdout is collected and whose stderr lines can be
/// watched while it runs (a download's `progress` lines, to cut a link mid-transfer).
#[derive(Debug)]
pub struct WatchedOutput {
    run: Collecting,
    stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Option<JoinHandle<()>>,
}

impl WatchedOutput {
    /// Start `cmd` with stdin closed.
    ///
    /// # Errors
    /// The process could not be started.
    pub fn spawn(cmd: &mut Command, label: impl Into<String>) -> io::Result<Self> {
        let (run, stderr) = Collecting::spawn(cmd, label.into())?;
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = std::sync::Arc::clone(&stderr_lines);
        let stderr = stderr.map(|err| {
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    lines
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(line);
                }
            })
        });
        Ok(Self {
            run,
            stderr_lines,
            stderr,
        })
    }

    /// The stderr lines printed so far.
    #[must_use]
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr_lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Wait until a stderr line satisfies `pred`; returns it.
    ///
    /// # Errors
    /// `TimedOut` (with the lines seen) or the process exited first.
    pub fn wait_stderr(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stderr_lines().into_iter().find(|l| pred(l)) {
                return Ok(l);
            }
            let exited = self.run.exited()?;
            if exited || Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: no {what} on stderr (exited: {exited}); stderr so far: {:?}",
                        self.run.label,
                        self.stderr_lines()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for the command to exit, at most `timeout` (then it is killed).
    ///
    /// # Errors
    /// `TimedOut` (with its stderr), or waiting failed.
    pub fn wait(mut self, timeout: Duration) -> io::Result<CommandOutput> {
        let (status, stdout) = self.run.exit(timeout)?;
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        let stderr = self.stderr_lines().join("\n").into_bytes();
        finished(&self.run.label, timeout, status, stdout, stderr)
    }
}
