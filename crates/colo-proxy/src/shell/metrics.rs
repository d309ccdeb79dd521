//! The Prometheus endpoint (`--metrics tcp:HOST:PORT`): a minimal HTTP/1.1 server
//! answering `GET /metrics` with the role's counters in the text exposition format
//! (version 0.0.4).
//!
//! The counters are the ones the `stats` control command reports: the server asks
//! the role's driver for them over the same request channel as the control socket
//! ([`Command::Metrics`]), so the driver only formats a string and never waits for a
//! client. Each client is served by its own task with a deadline for the whole
//! exchange, a cap on the request size and a cap on concurrent clients, so a slow or
//! hostile scraper cannot stall the driver or grow memory.
//!
//! Every role gets it by adding `metrics: Option<String>` to its arguments (see
//! [`parse_metrics_addr`]), calling [`spawn`] next to the control socket, and
//! answering [`Command::Metrics`] with [`Exposition`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::control::{Command, Request};

/// Largest request head (request line and headers) accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has for the whole exchange (request and response).
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 8;
/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `--metrics` value: `tcp:HOST:PORT` (an empty host means all addresses).
pub fn parse_metrics_addr(s: &str) -> Result<String, String> {
    let hint = "the metrics endpoint is tcp:HOST:PORT, e.g. tcp:127.0.0.1:9464";
    let hp = s
        .strip_prefix("tcp:")
        .ok_or_else(|| format!("{s:?}: {hint}"))?;
    let (host, port) = hp
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: {hint}"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{s:?}: {port:?} is not a TCP port number; {hint}"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(format!("{host}:{port}"))
}

/// Bind the endpoint (so a bad address stops the role at startup) and serve it on
/// `tasks`. Does nothing without `--metrics`.
pub async fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    addr: Option<&str>,
    requests: mpsc::Sender<Request>,
) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics: cannot listen on tcp:{addr}"))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(local = %local, "metrics endpoint listening (GET /metrics)");
    tasks.spawn(serve(listener, requests));
    Ok(())
}

/// Accept scrapers forever.
pub async fn serve(listener: TcpListener, requests: mpsc::Sender<Request>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let requests = requests.clone();
                tokio::spawn(async move {
                    if tokio::time::timeout(CLIENT_DEADLINE, client(stream, requests))
                        .await
                        .is_err()
                    {
                        tracing::debug!(%peer, "metrics client too slow; closed");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serve one request, then close.
async fn client(mut stream: TcpStream, requests: mpsc::Sender<Request>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST {
            break false;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let (status, body) = if complete {
        respond(&head, &requests).await
    } else {
        (
            "431 Request Header Fields Too Large",
            format!("request head longer than {MAX_REQUEST} bytes\n"),
        )
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Status line and body for a complete request head.
async fn respond(head: &[u8], requests: &mpsc::Sender<Request>) -> (&'static str, String) {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "malformed request line\n".to_owned());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "HTTP/1.0 or HTTP/1.1 only\n".to_owned());
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return (
            "404 Not Found",
            "not found; the metrics are at /metrics\n".to_owned(),
        );
    }
    if method != "GET" {
        return ("405 Method Not Allowed", "use GET /metrics\n".to_owned());
    }
    let (reply, rx) = oneshot::channel();
    let request = Request {
        command: Command::Metrics,
        reply,
    };
    if requests.send(request).await.is_err() {
        return (
            "503 Service Unavailable",
            "the proxy is shutting down\n".to_owned(),
        );
    }
    match rx.await {
        Ok(Ok(mut fields)) => match fields.remove("exposition") {
            Some(Value::String(text)) => ("200 OK", text),
            _ => (
                "500 Internal Server Error",
                "no metrics from this role\n".to_owned(),
            ),
        },
        Ok(Err(e)) => ("500 Internal Server Error", format!("{e}\n")),
        Err(_) => (
            "503 Service Unavailable",
            "the proxy is shutting down\n".to_owned(),
        ),
    }
}

/// The reply of [`Command::Metrics`]: the exposition text under `exposition`.
#[must_use]
pub fn reply(exposition: Exposition) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("exposition".into(), json!(exposition.finish()));
    m
}

/// Labels of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Builds a text exposition: one `# HELP` and `# TYPE` per metric family, then its
/// samples. Counter names end in `_total`.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter family with its samples.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, u64)]) {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        self.family(name, "counter", help, samples);
    }

    /// A gauge family with its samples.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, u64)]) {
        self.family(name, "gauge", help, samples);
    }

    /// A counter family with one label, `key`, whose values are given with the samples.
    pub fn counter_by(&mut self, name: &str, help: &str, key: &str, samples: &[(&str, u64)]) {
        let labels: Vec<[(&str, &str); 1]> = samples.iter().map(|(v, _)| [(key, *v)]).collect();
        let samples: Vec<(Labels<'_>, u64)> = labels
            .iter()
            .zip(samples)
            .map(|(l, (_, n))| (&l[..], *n))
            .collect();
        self.counter(name, help, &samples);
    }

    /// A gauge family with one label, `key`, whose values are given with the samples.
    pub fn gauge_by(&mut self, name: &str, help: &str, key: &str, samples: &[(&str, u64)]) {
        let labels: Vec<[(&str, &str); 1]> = samples.iter().map(|(v, _)| [(key, *v)]).collect();
        let samples: Vec<(Labels<'_>, u64)> = labels
            .iter()
            .zip(samples)
            .map(|(l, (_, n))| (&l[..], *n))
            .collect();
        self.gauge(name, help, &samples);
    }

    /// A counter without labels.
    pub fn counter1(&mut self, name: &str, help: &str, value: u64) {
        self.counter(name, help, &[(&[], value)]);
    }

    /// A gauge without labels.
    pub fn gauge1(&mut self, name: &str, help: &str, value: u64) {
        self.gauge(name, help, &[(&[], value)]);
    }

    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(Labels<'_>, u64)]) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let _ = write!(self.out, "{k}=\"{v}\"");
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {value}");
        }
    }

    /// `colo_peer_up{role}`: whether each endpoint has a peer.
    pub fn peers(&mut self, peers: &[(&'static str, bool)]) {
        let samples: Vec<(&str, u64)> = peers.iter().map(|(r, up)| (*r, u64::from(*up))).collect();
        self.gauge_by(
            "colo_peer_up",
            "Whether the endpoint has a connected peer (1) or not (0).",
            "role",
            &samples,
        );
    }

    /// `colo_queue_*` and `colo_written_*` for the output queues, by name.
    pub fn out_queues(&mut self, queues: &[(&str, super::outq::OutStats)]) {
        let pick = |f: fn(&super::outq::OutStats) -> u64| -> Vec<(&str, u64)> {
            queues.iter().map(|(n, s)| (*n, f(s))).collect()
        };
        self.gauge_by(
            "colo_queue_bytes",
            "Bytes waiting in an output queue.",
            "queue",
            &pick(|s| s.queued_bytes),
        );
        self.gauge_by(
            "colo_queue_frames",
            "Frames waiting in an output queue.",
            "queue",
            &pick(|s| s.queued_frames),
        );
        self.counter_by(
            "colo_written_frames_total",
            "Frames written to an output.",
            "queue",
            &pick(|s| s.written_frames),
        );
        self.counter_by(
            "colo_written_bytes_total",
            "Bytes written to an output.",
            "queue",
            &pick(|s| s.written_bytes),
        );
        self.counter_by(
            "colo_queue_dropped_frames_total",
            "Frames dropped because an output queue was full.",
            "queue",
            &pick(|s| s.dropped_frames),
        );
    }

    /// The text.
    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_parse() {
        assert_eq!(
            parse_metrics_addr("tcp:127.0.0.1:9464"),
            Ok("127.0.0.1:9464".into())
        );
        assert_eq!(parse_metrics_addr("tcp::9464"), Ok("0.0.0.0:9464".into()));
        assert_eq!(parse_metrics_addr("tcp:[::1]:0"), Ok("[::1]:0".into()));
        assert!(parse_metrics_addr("127.0.0.1:9464").is_err());
        assert!(parse_metrics_addr("tcp:host").is_err());
        assert!(parse_metrics_addr("tcp:host:99999").is_err());
    }

    #[test]
    fn exposition_has_help_type_and_escaped_labels() {
        let mut e = Exposition::new();
        e.counter(
            "colo_frames_in_total",
            "Frames received.",
            &[(&[("side", "primary")], 3), (&[("side", "a\"b\\c\nd")], 4)],
        );
        e.gauge("colo_held_frames", "Frames held\nnow.", &[(&[], 2)]);
        assert_eq!(
            e.finish(),
            "# HELP colo_frames_in_total Frames received.\n\
             # TYPE colo_frames_in_total counter\n\
             colo_frames_in_total{side=\"primary\"} 3\n\
             colo_frames_in_total{side=\"a\\\"b\\\\c\\nd\"} 4\n\
             # HELP colo_held_frames Frames held\\nnow.\n\
             # TYPE colo_held_frames gauge\n\
             colo_held_frames 2\n"
        );
    }
}
