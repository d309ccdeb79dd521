//! The thin tokio side of the QMP driver: one task per monitor that connects (and
//! reconnects), negotiates capabilities, turns lines into [`QmpInput`]s for the role's
//! driver, and writes the commands the state machine produced.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::machine::{QmpInput, Vm};

/// Longest QMP line accepted; a longer one drops the connection.
pub const MAX_LINE: usize = 1 << 20;
/// How long the greeting and capabilities negotiation may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Parse one line from a QMP monitor. `Ok(None)` for the greeting and for lines
/// that carry nothing for us.
pub fn parse_line(line: &[u8]) -> Result<Option<QmpInput>, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("not a JSON object".into());
    };
    let id = obj.get("id").map(|i| match i {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    if let Some(name) = obj.get("event").and_then(Value::as_str) {
        let data = obj.get("data").cloned().unwrap_or(Value::Null);
        return Ok(Some(QmpInput::Event {
            name: name.to_owned(),
            data,
        }));
    }
    if let Some(ret) = obj.get("return") {
        return Ok(Some(QmpInput::Reply {
            id,
            result: Ok(ret.clone()),
        }));
    }
    if let Some(err) = obj.get("error") {
        let desc = err
            .get("desc")
            .and_then(Value::as_str)
            .map_or_else(|| err.to_string(), str::to_owned);
        return Ok(Some(QmpInput::Reply {
            id,
            result: Err(desc),
        }));
    }
    if obj.contains_key("QMP") {
        return Ok(None);
    }
    Err("neither event, return, error nor greeting".into())
}

/// Splits a byte stream into lines, refusing lines longer than [`MAX_LINE`].
#[derive(Debug, Default)]
struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => {
                Err(format!("QMP line longer than {MAX_LINE} bytes"))
            }
            None => Ok(None),
        }
    }
}

/// Read the next parsed message.
async fn next_message(
    stream: &mut UnixStream,
    lines: &mut LineBuffer,
) -> Result<Option<QmpInput>, String> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(line) = lines.next_line()? {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return parse_line(&line);
        }
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("monitor closed the connection".into());
        }
        lines.push(&buf[..n]);
    }
}

async fn handshake(stream: &mut UnixStream, lines: &mut LineBuffer) -> Result<(), String> {
    stream
        .write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":\"caps\"}\n")
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match next_message(stream, lines).await? {
            Some(QmpInput::Reply { result: Ok(_), .. }) => return Ok(()),
            Some(QmpInput::Reply { result: Err(e), .. }) => {
                return Err(format!("qmp_capabilities refused: {e}"));
            }
            _ => {}
        }
    }
}

/// Serve one monitor forever: connect, hand inputs to `tx`, write `commands`.
pub async fn run<E>(vm: Vm, path: PathBuf, mut commands: mpsc::Receiver<Value>, tx: mpsc::Sender<E>)
where
    E: From<(Vm, QmpInput)> + Send + 'static,
{
    let mut delay = RETRY_MIN;
    let mut logged_wait = false;
    loop {
        let mut stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e) => {
                if !logged_wait {
                    tracing::info!(vm = vm.as_str(), path = %path.display(), error = %e, "waiting for the QMP monitor");
                    logged_wait = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        let mut lines = LineBuffer::default();
        match tokio::time::timeout(HANDSHAKE, handshake(&mut stream, &mut lines)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(vm = vm.as_str(), error = %e, "QMP handshake failed; retrying");
                tokio::time::sleep(RETRY_MAX).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    vm = vm.as_str(),
                    "QMP greeting or capabilities timed out; retrying"
                );
                continue;
            }
        }
        delay = RETRY_MIN;
        logged_wait = false;
        // Commands produced while we were away are stale (the machine re-asks).
        while commands.try_recv().is_ok() {}
        tracing::info!(vm = vm.as_str(), path = %path.display(), "QMP monitor connected");
        if tx.send((vm, QmpInput::Connected).into()).await.is_err() {
            return;
        }
        let why = serve(&mut stream, &mut lines, &mut commands, vm, &tx).await;
        match why {
            Ok(()) => return, // the driver is gone
            Err(e) => tracing::warn!(vm = vm.as_str(), error = %e, "QMP monitor lost"),
        }
        if tx.send((vm, QmpInput::Disconnected).into()).await.is_err() {
            return;
        }
        tokio::time::sleep(RETRY_MIN).await;
    }
}

async fn serve<E>(
    stream: &mut UnixStream,
    lines: &mut LineBuffer,
    commands: &mut mpsc::Receiver<Value>,
    vm: Vm,
    tx: &mpsc::Sender<E>,
) -> Result<(), String>
where
    E: From<(Vm, QmpInput)> + Send + 'static,
{
    let mut bad = 0u64;
    loop {
        tokio::select! {
            msg = next_message(stream, lines) => {
                match msg {
                    Ok(Some(input)) => {
                        if tx.send((vm, input).into()).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => {}
                    Err(e) if e.starts_with("not JSON") || e.starts_with("neither") || e.starts_with("not a JSON") => {
                        bad += 1;
                        if bad.is_power_of_two() {
                            tracing::warn!(vm = vm.as_str(), bad, error = %e, "ignoring a malformed QMP line");
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                let mut line = cmd.to_string();
                line.push('\n');
                stream.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_events_replies_and_greeting() {
        assert_eq!(
            parse_line(br#"{"QMP": {"version": {}, "capabilities": []}}"#),
            Ok(None)
        );
        assert_eq!(
            parse_line(br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#),
            Ok(Some(QmpInput::Event {
                name: "STOP".into(),
                data: Value::Null
            }))
        );
        assert_eq!(
            parse_line(br#"{"event": "MIGRATION_PASS", "data": {"pass": 7}}"#),
            Ok(Some(QmpInput::Event {
                name: "MIGRATION_PASS".into(),
                data: json!({"pass": 7})
            }))
        );
        assert_eq!(
            parse_line(br#"{"return": {}, "id": "checkpoint-3"}"#),
            Ok(Some(QmpInput::Reply {
                id: Some("checkpoint-3".into()),
                result: Ok(json!({}))
            }))
        );
        assert_eq!(
            parse_line(br#"{"error": {"class": "GenericError", "desc": "nope"}, "id": 4}"#),
            Ok(Some(QmpInput::Reply {
                id: Some("4".into()),
                result: Err("nope".into())
            }))
        );
        assert!(parse_line(b"{").unwrap_err().starts_with("not JSON"));
        assert!(parse_line(b"[1]").unwrap_err().starts_with("not a JSON"));
        assert!(parse_line(b"{\"x\":1}").unwrap_err().starts_with("neither"));
    }

    #[test]
    fn lines_are_split_and_bounded() {
        let mut l = LineBuffer::default();
        l.push(b"{\"a\":1}\r\n{\"b\"");
        assert_eq!(l.next_line(), Ok(Some(b"{\"a\":1}".to_vec())));
        assert_eq!(l.next_line(), Ok(None));
        l.push(b":2}\n");
        assert_eq!(l.next_line(), Ok(Some(b"{\"b\":2}".to_vec())));
        l.push(&vec![b'x'; MAX_LINE + 1]);
        assert!(l.next_line().is_err());
    }
}
