//! The control socket (`--control unix:PATH`): line-delimited JSON, version 1.
//! The protocol is documented in `docs/control-protocol.md`.
//!
//! Each client gets every event pushed as a line, and may send commands, one JSON
//! object per line; each command gets exactly one reply line (`"ok": true|false`),
//! in order. The client tasks only parse and frame; commands are carried out by the
//! role's driver, which owns the engine or the rewriter.

use colo_core::engine::{FlowMatch, FlowPolicy};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::endpoint::UnixServer;

/// The protocol version this server speaks.
pub const VERSION: u64 = 1;

/// Longest command line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Events buffered per slow client before it is told it lost some.
pub const EVENT_BACKLOG: usize = 1024;

/// A command the driver carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The COLO checkpoint has completed.
    CheckpointDone,
    /// The other VM is gone: this proxy's VM carries on alone.
    Failover,
    /// Report counters.
    Stats,
    /// Set the policy of the flows a match names (roles without a compare engine
    /// reply with an error).
    SetFlowPolicy {
        /// Which flows.
        matcher: FlowMatch,
        /// What to do with them.
        policy: FlowPolicy,
    },
    /// List the flow policies in force.
    GetFlowPolicy,
    /// Internal, never parsed from the socket: the Prometheus endpoint asks for the
    /// counters in text exposition format, returned under the key `exposition`.
    Metrics,
}

impl Command {
    /// Every command name, for error messages.
    pub const NAMES: &'static str = "checkpoint-done, failover, stats, set-log-level, \
                                     set-flow-policy, get-flow-policy";
}

/// A parsed command line: most commands go to the role's driver; `set-log-level`
/// is process-wide and carried out by the control socket itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// For the driver.
    Driver(Command),
    /// Replace the log filter with this directive list.
    SetLogLevel(String),
}

/// The reply fields of `set-log-level`, or the error; the filter is unchanged on error.
pub fn set_log_level(filter: &str) -> Result<serde_json::Map<String, Value>, String> {
    let (old, new) = crate::logging::set_filter(filter)?;
    let mut m = serde_json::Map::new();
    m.insert("old".into(), json!(old));
    m.insert("new".into(), json!(new));
    Ok(m)
}

/// A command with the channel for its reply (the reply object without `v`/`ok`).
#[derive(Debug)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Where the result goes: fields to add to the success reply, or an error.
    pub reply: oneshot::Sender<Result<serde_json::Map<String, Value>, String>>,
}

/// Parse one command line: `Ok(command)`, or the error to reply with.
pub fn parse_command(line: &str) -> Result<Parsed, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        format!("not JSON ({e}); send one object per line, e.g. {{\"v\":1,\"cmd\":\"stats\"}}")
    })?;
    let Some(obj) = value.as_object() else {
        return Err("a command is a JSON object, e.g. {\"v\":1,\"cmd\":\"stats\"}".to_owned());
    };
    match obj.get("v").and_then(Value::as_u64) {
        Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "unsupported protocol version {v}; this server speaks v 1"
            ));
        }
        None => return Err("missing \"v\": add \"v\":1 (the protocol version)".to_owned()),
    }
    let Some(cmd) = obj.get("cmd").and_then(Value::as_str) else {
        return Err(format!(
            "missing \"cmd\" string; commands: {}",
            Command::NAMES
        ));
    };
    let for_driver = match cmd {
        "checkpoint-done" => Command::CheckpointDone,
        "failover" => Command::Failover,
        "stats" => Command::Stats,
        "get-flow-policy" => Command::GetFlowPolicy,
        "set-flow-policy" => parse_set_flow_policy(obj)?,
        "set-log-level" => {
            return match obj.get("filter").and_then(Value::as_str) {
                Some(f) => Ok(Parsed::SetLogLevel(f.to_owned())),
                None => Err(
                    "set-log-level needs \"filter\": a level (error, warn, info, \
                             debug, trace) or a directive list such as \
                             \"warn,colo_proxy=debug\""
                        .to_owned(),
                ),
            };
        }
        other => {
            return Err(format!(
                "unknown cmd {other:?}; commands: {}",
                Command::NAMES
            ));
        }
    };
    Ok(Parsed::Driver(for_driver))
}

/// `{"match": "udp:123" | {"proto":"udp","port":123,"addr":"10.0.0.5"}, "policy": "pass"}`.
fn parse_set_flow_policy(obj: &serde_json::Map<String, Value>) -> Result<Command, String> {
    const USAGE: &str = "set-flow-policy needs \"match\" (\"udp:123\", \"tcp:10.0.0.5:9100\" \
                         or {\"proto\":\"udp\",\"port\":123,\"addr\":\"10.0.0.5\"}) and \
                         \"policy\" (\"pass\" or \"compare\")";
    let matcher: FlowMatch = match obj.get("match") {
        Some(Value::String(s)) => s.parse().map_err(|e| format!("{e}"))?,
        Some(Value::Object(m)) => {
            let proto = m.get("proto").and_then(Value::as_str);
            let port = m.get("port").and_then(Value::as_u64);
            let (Some(proto), Some(port)) = (proto, port) else {
                return Err(USAGE.to_owned());
            };
            let text = match m.get("addr") {
                None | Some(Value::Null) => format!("{proto}:{port}"),
                Some(Value::String(a)) if a.contains(':') => format!("{proto}:[{a}]:{port}"),
                Some(Value::String(a)) => format!("{proto}:{a}:{port}"),
                Some(_) => return Err(USAGE.to_owned()),
            };
            text.parse().map_err(|e| format!("{e}"))?
        }
        _ => return Err(USAGE.to_owned()),
    };
    let policy: FlowPolicy = obj
        .get("policy")
        .and_then(Value::as_str)
        .ok_or_else(|| USAGE.to_owned())?
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok(Command::SetFlowPolicy { matcher, policy })
}

/// Build an event line (without the newline): `{"v":1,"event":NAME,...fields}`.
pub fn event_line(name: &str, fields: serde_json::Map<String, Value>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("v".into(), json!(VERSION));
    obj.insert("event".into(), json!(name));
    obj.extend(fields);
    Value::Object(obj).to_string()
}

/// Build a reply line (without the newline) from a command's result, echoing the
/// request's `tag` when it had one.
fn reply_line(
    result: Result<serde_json::Map<String, Value>, String>,
    tag: Option<Value>,
) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("v".into(), json!(VERSION));
    match result {
        Ok(fields) => {
            obj.insert("ok".into(), json!(true));
            obj.extend(fields);
        }
        Err(e) => {
            obj.insert("ok".into(), json!(false));
            obj.insert("error".into(), json!(e));
        }
    }
    if let Some(tag) = tag {
        obj.insert("tag".into(), tag);
    }
    Value::Object(obj).to_string()
}

/// A role's control socket (when one was asked for) and the channels between its
/// clients and the driver.
#[derive(Debug)]
pub struct ControlPlane {
    server: Option<(UnixServer, String)>,
    metrics: Option<String>,
    requests_tx: mpsc::Sender<Request>,
    /// Commands for the driver.
    pub requests: mpsc::Receiver<Request>,
    /// Events for control clients: the driver sends, every client gets a copy.
    pub events: broadcast::Sender<String>,
}

/// The operator endpoints every daemon role takes: the control socket and the
/// Prometheus endpoint (which asks the driver through the control channel).
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Control socket (line-delimited JSON, docs/control-protocol.md): `unix:PATH`
    /// or a plain path.
    #[arg(long, value_name = "unix:PATH", value_parser = crate::cli::parse_control_path)]
    pub control: Option<std::path::PathBuf>,

    /// Serve the `stats` counters as Prometheus text over HTTP (GET /metrics) on
    /// `tcp:HOST:PORT`.
    #[arg(long, value_name = "tcp:HOST:PORT",
          value_parser = super::metrics::parse_metrics_addr)]
    pub metrics: Option<String>,
}

impl ControlPlane {
    /// Bind `--control` (if given) so that a bad path stops the role before it runs.
    pub fn bind(args: &OperatorArgs) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let server = match args.control.as_deref() {
            Some(p) => Some((
                UnixServer::bind(p).context("--control")?,
                p.display().to_string(),
            )),
            None => None,
        };
        let (requests_tx, requests) = mpsc::channel(16);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Ok(Self {
            server,
            metrics: args.metrics.clone(),
            requests_tx,
            requests,
            events,
        })
    }

    /// Start serving control clients (if there is a socket) and scrapers (if
    /// `--metrics` is given); returns the driver's ends.
    pub async fn spawn(
        self,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> anyhow::Result<(mpsc::Receiver<Request>, broadcast::Sender<String>)> {
        super::metrics::spawn(tasks, self.metrics.as_deref(), self.requests_tx.clone()).await?;
        if let Some((server, path)) = self.server {
            tracing::info!(path, "control socket listening");
            tasks.spawn(serve(server, self.requests_tx, self.events.clone()));
        }
        Ok((self.requests, self.events))
    }
}

/// Accept control clients forever.
pub async fn serve(
    server: UnixServer,
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<String>,
) {
    loop {
        match server.listener.accept().await {
            Ok((stream, _)) => {
                tracing::debug!("control client connected");
                tokio::spawn(client(stream, requests.clone(), events.subscribe()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve one control client until it goes away.
async fn client(
    stream: UnixStream,
    requests: mpsc::Sender<Request>,
    mut events: broadcast::Receiver<String>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&line[..pos]);
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let reply = handle_line(line, &requests).await;
                    if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
                if pending.len() > MAX_LINE {
                    let reply = reply_line(Err(format!("command line longer than {MAX_LINE} bytes")), None);
                    let _ = wr.write_all(format!("{reply}\n").as_bytes()).await;
                    return;
                }
            }
            ev = events.recv() => {
                let line = match ev {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        json!({"v": VERSION, "event": "events-lost", "count": n}).to_string()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if wr.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Parse a line, have the driver carry it out, and format the reply.
async fn handle_line(line: &str, requests: &mpsc::Sender<Request>) -> String {
    let tag = serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("tag").cloned());
    let command = match parse_command(line) {
        Ok(Parsed::Driver(c)) => c,
        Ok(Parsed::SetLogLevel(filter)) => return reply_line(set_log_level(&filter), tag),
        Err(e) => return reply_line(Err(e), tag),
    };
    let (reply, rx) = oneshot::channel();
    if requests.send(Request { command, reply }).await.is_err() {
        return reply_line(Err("the proxy is shutting down".into()), tag);
    }
    let result = rx
        .await
        .unwrap_or_else(|_| Err("the proxy is shutting down".into()));
    reply_line(result, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_explains_errors() {
        let driver = |c| Ok(Parsed::Driver(c));
        assert_eq!(
            parse_command(r#"{"v":1,"cmd":"stats"}"#),
            driver(Command::Stats)
        );
        assert_eq!(
            parse_command(r#"{"v":1,"cmd":"checkpoint-done","tag":7}"#),
            driver(Command::CheckpointDone)
        );
        assert_eq!(
            parse_command(r#"{"v":1,"cmd":"failover"}"#),
            driver(Command::Failover)
        );
        assert_eq!(
            parse_command(r#"{"v":1,"cmd":"set-log-level","filter":"debug"}"#),
            Ok(Parsed::SetLogLevel("debug".into()))
        );
        assert!(
            parse_command(r#"{"v":1,"cmd":"set-log-level"}"#)
                .unwrap_err()
                .contains("\"filter\"")
        );
        let pass_ntp = driver(Command::SetFlowPolicy {
            matcher: "udp:123".parse().unwrap(),
            policy: FlowPolicy::Pass,
        });
        assert_eq!(
            parse_command(r#"{"v":1,"cmd":"set-flow-policy","match":"udp:123","policy":"pass"}"#),
            pass_ntp
        );
        assert_eq!(
            parse_command(
                r#"{"v":1,"cmd":"set-flow-policy","match":{"proto":"udp","port":123},"policy":"pass"}"#
            ),
            pass_ntp
        );
        assert_eq!(
            parse_command(
                r#"{"v":1,"cmd":"set-flow-policy","match":{"proto":"tcp","port":80,"addr":"fd00::5"},"policy":"compare"}"#
            ),
            driver(Command::SetFlowPolicy {
                matcher: "tcp:[fd00::5]:80".parse().unwrap(),
                policy: FlowPolicy::Compare,
            })
        );
        for bad in [
            r#"{"v":1,"cmd":"set-flow-policy","match":"udp:123","policy":"drop"}"#,
            r#"{"v":1,"cmd":"set-flow-policy","match":"icmp:1","policy":"pass"}"#,
            r#"{"v":1,"cmd":"set-flow-policy","policy":"pass"}"#,
            r#"{"v":1,"cmd":"set-flow-policy","match":{"port":1},"policy":"pass"}"#,
        ] {
            assert!(parse_command(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_command(r#"{"v":1,"cmd":"get-flow-policy"}"#),
            driver(Command::GetFlowPolicy)
        );
        assert!(
            parse_command(r#"{"v":1,"cmd":"metrics"}"#).is_err(),
            "internal command is not on the socket"
        );
        assert!(parse_command("stats").unwrap_err().contains("not JSON"));
        assert!(
            parse_command(r#"{"cmd":"stats"}"#)
                .unwrap_err()
                .contains("missing \"v\"")
        );
        assert!(
            parse_command(r#"{"v":2,"cmd":"stats"}"#)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(
            parse_command(r#"{"v":1,"cmd":"x"}"#)
                .unwrap_err()
                .contains("unknown cmd")
        );
        assert!(parse_command(r#"[1]"#).unwrap_err().contains("object"));
    }

    #[test]
    fn replies_carry_version_ok_and_tag() {
        let r: Value =
            serde_json::from_str(&reply_line(Err("bad".into()), Some(json!("a")))).unwrap();
        assert_eq!(r, json!({"v":1,"ok":false,"error":"bad","tag":"a"}));
        let mut m = serde_json::Map::new();
        m.insert("epoch".into(), json!(3));
        let r: Value = serde_json::from_str(&reply_line(Ok(m), None)).unwrap();
        assert_eq!(r, json!({"v":1,"ok":true,"epoch":3}));
    }
}
