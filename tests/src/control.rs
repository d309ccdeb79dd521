//! A client of a proxy's control socket (docs/control-protocol.md): line-delimited
//! JSON, events pushed by the proxy and replies to our commands. A reader thread
//! sorts every line into the events seen so far or the replies waiting to be taken.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Debug, Default)]
struct Inbox {
    events: Vec<Value>,
    replies: Vec<Value>,
    /// Lines that were not JSON objects with `event` or `ok`.
    garbage: Vec<String>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection to one control socket.
#[derive(Debug)]
pub struct ControlClient {
    label: String,
    writer: UnixStream,
    shared: Arc<Shared>,
}

impl ControlClient {
    /// Connect to the socket at `path`, retrying until it accepts or `timeout` passes
    /// (the proxy creates it shortly after it starts).
    ///
    /// # Errors
    /// The socket did not accept a connection in time.
    pub fn connect(path: &Path, label: &str, timeout: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{label}: control socket {} not accepting after {timeout:?}: {e}",
                            path.display()
                        ),
                    ));
                }
            }
        };
        let shared = Arc::new(Shared::default());
        let reader = stream.try_clone()?;
        let for_thread = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("{label}-control"))
            .spawn(move || read_lines(reader, &for_thread))?;
        Ok(Self {
            label: label.to_owned(),
            writer: stream,
            shared,
        })
    }

    /// Send `{"v":1,"cmd":cmd}` and wait for its reply.
    ///
    /// # Errors
    /// Writing failed, the socket closed, or no reply came within `timeout`.
    pub fn command(&mut self, cmd: &str, timeout: Duration) -> io::Result<Value> {
        let line = json!({"v": 1, "cmd": cmd}).to_string();
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut inbox = self.shared.lock();
        loop {
            if !inbox.replies.is_empty() {
                return Ok(inbox.replies.remove(0));
            }
            if inbox.closed {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: control socket closed before the reply to {cmd}",
                        self.label
                    ),
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: no reply to {cmd} within {timeout:?}", self.label),
                ));
            }
            inbox = self
                .shared
                .changed
                .wait_timeout(inbox, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Every event received so far, oldest first.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// The events named `name` received so far.
    #[must_use]
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Lines that were neither an event nor a reply.
    #[must_use]
    pub fn garbage(&self) -> Vec<String> {
        self.shared.lock().garbage.clone()
    }

    /// Wait until an event for which `pred` holds has arrived (also one that arrived
    /// before the call) and return it.
    ///
    /// # Errors
    /// `TimedOut` with the events seen so far, or the socket closed.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> io::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut inbox = self.shared.lock();
        loop {
            if let Some(e) = inbox.events.iter().find(|e| pred(e)) {
                return Ok(e.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || inbox.closed {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: no {what} event within {timeout:?} (closed: {}); events: {}",
                        self.label,
                        inbox.closed,
                        Value::from(inbox.events.clone())
                    ),
                ));
            }
            inbox = self
                .shared
                .changed
                .wait_timeout(inbox, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Wait for an event named `name`.
    ///
    /// # Errors
    /// As [`ControlClient::wait_event`].
    pub fn wait_event_named(&self, name: &str, timeout: Duration) -> io::Result<Value> {
        self.wait_event(name, timeout, |e| e["event"] == name)
    }
}

fn read_lines(stream: UnixStream, shared: &Shared) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let mut inbox = shared.lock();
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v.get("event").is_some() => inbox.events.push(v),
            Ok(v) if v.get("ok").is_some() => inbox.replies.push(v),
            _ => inbox.garbage.push(line),
        }
        shared.changed.notify_all();
    }
    shared.lock().closed = true;
    shared.changed.notify_all();
}
