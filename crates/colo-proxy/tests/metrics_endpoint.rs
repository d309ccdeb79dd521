//! The Prometheus endpoint (`--metrics`) of a running `colo-proxy compare` and
//! `rewrite`, scraped over real loopback HTTP: well-formed exposition, values that
//! move with traffic, errors for other requests, and scrapers that cannot stall the
//! proxy.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use colo_core::sim::{FlowAddrs, TcpSender};
use common::{Control, Proxy, http, read_for, read_frames, traffic, wire, write_split};

/// Scrape and parse: `name{labels}` -> value. Checks the exposition's shape.
fn scrape(addr: &str) -> HashMap<String, u64> {
    let (status, body) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = 0;
    let mut values = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                kind == "counter" || kind == "gauge",
                "unexpected type: {line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family {name} declared twice"
            );
        } else if line.starts_with("# HELP ") {
            helps += 1;
        } else {
            let (key, value) = line.rsplit_once(' ').unwrap();
            let family = key.split('{').next().unwrap();
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            let v: u64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            values.insert(key.to_owned(), v);
        }
    }
    assert_eq!(helps, types.len(), "one HELP per family");
    values
}

fn get(m: &HashMap<String, u64>, key: &str) -> u64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing; have {:?}", m.keys().collect::<Vec<_>>()))
}

#[test]
fn compare_metrics_move_with_traffic() {
    let mut proxy = Proxy::start_compare(&[
        "--control",
        "{dir}/ctl.sock",
        "--metrics",
        "tcp:127.0.0.1:0",
    ]);
    let addr = proxy.log_field("metrics endpoint listening", "local");
    let mut ctl = Control::new(proxy.connect("ctl.sock"));
    let m = scrape(&addr);
    assert_eq!(
        get(&m, r#"colo_peer_up{role="outdev"}"#),
        0,
        "listed (down) before any peer came"
    );
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut out = proxy.connect("out.sock");

    let m = scrape(&addr);
    assert_eq!(get(&m, r#"colo_frames_in_total{side="primary"}"#), 0);
    assert_eq!(get(&m, r#"colo_mode{mode="compare"}"#), 1);

    let frames = traffic(3, 4, false);
    let bytes = wire(&frames, false);
    write_split(&mut pri, &bytes, 1);
    write_split(&mut sec, &bytes, 2);
    read_frames(&mut out, frames.len(), false);
    let n = frames.len() as u64;
    let m = scrape(&addr);
    assert_eq!(get(&m, r#"colo_frames_in_total{side="primary"}"#), n);
    assert_eq!(get(&m, r#"colo_frames_in_total{side="secondary"}"#), n);
    assert_eq!(get(&m, r#"colo_released_frames_total{how="compared"}"#), n);
    assert_eq!(get(&m, r#"colo_released_frames_total{how="policy"}"#), 0);
    let payload: u64 = frames.iter().map(|f| f.data.len() as u64).sum();
    assert_eq!(get(&m, "colo_released_bytes_total"), payload);
    assert_eq!(get(&m, r#"colo_written_frames_total{queue="outdev"}"#), n);
    assert_eq!(get(&m, r#"colo_peer_up{role="outdev"}"#), 1);
    assert_eq!(get(&m, r#"colo_connections_total{event="created"}"#), 3 + 4);
    assert_eq!(get(&m, "colo_held_frames"), 0);
    // The same numbers as the stats command.
    let stats = ctl.command("stats");
    assert_eq!(stats["stats"]["frames_in"]["primary"], n, "{stats}");
    assert_eq!(stats["stats"]["released"]["bytes"], payload, "{stats}");

    // A divergence: a checkpoint request by reason, a held frame.
    let addrs = FlowAddrs::v4(77);
    let mut p = TcpSender::new(addrs, 100, 900);
    let mut s = TcpSender::new(addrs, 100, 900);
    write_split(
        &mut pri,
        &wire(&[p.syn_ack(), p.data(b"time=1111")], false),
        3,
    );
    write_split(
        &mut sec,
        &wire(&[s.syn_ack(), s.data(b"time=2222")], false),
        4,
    );
    ctl.event("checkpoint-requested");
    let m = scrape(&addr);
    assert_eq!(
        get(&m, r#"colo_checkpoints_requested_total{reason="payload"}"#),
        1
    );
    assert_eq!(get(&m, r#"colo_divergences_total{reason="payload"}"#), 1);
    assert_eq!(get(&m, "colo_held_frames"), 1);
    assert_eq!(get(&m, "colo_checkpoint_pending"), 1);
    ctl.command("checkpoint-done");
    let m = scrape(&addr);
    assert_eq!(get(&m, "colo_checkpoints_done_total"), 1);
    assert_eq!(get(&m, r#"colo_released_frames_total{how="flush"}"#), 1);
    assert_eq!(get(&m, "colo_held_frames"), 0);

    // The secondary goes away: degraded mode shows in the mode and peer gauges.
    drop(sec);
    ctl.event("degraded");
    let m = scrape(&addr);
    assert_eq!(get(&m, r#"colo_peer_up{role="secondary_in"}"#), 0);
    assert_eq!(get(&m, r#"colo_mode{mode="pass-through"}"#), 1);
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

#[test]
fn metrics_endpoint_refuses_other_requests_and_survives_slow_clients() {
    let mut proxy = Proxy::start_compare(&["--metrics", "tcp:127.0.0.1:0"]);
    let addr = proxy.log_field("metrics endpoint listening", "local");
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut out = proxy.connect("out.sock");

    assert_eq!(http(&addr, "GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&addr, "GET /metricsx HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&addr, "POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(&addr, "hello\r\n\r\n").0, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http(&addr, &huge).0, 431, "request size is bounded");
    let (status, _) = http(&addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut head = String::new();
    std::io::Read::read_to_string(&mut raw, &mut head).unwrap();
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );

    // More stalled scrapers than the endpoint serves at once: half a request each,
    // then nothing. The proxy keeps releasing frames meanwhile.
    let stalled: Vec<std::net::TcpStream> = (0..12)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    let frames = traffic(2, 2, false);
    let bytes = wire(&frames, false);
    write_split(&mut pri, &bytes, 5);
    write_split(&mut sec, &bytes, 6);
    let (got, _) = read_frames(&mut out, frames.len(), false);
    assert_eq!(got, frames, "the driver is not stalled by scrapers");
    assert!(read_for(&mut out, Duration::from_millis(100)).is_empty());
    drop(stalled);
    // Once they are gone (or timed out), scraping works again.
    let (status, body) = http(&addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!(
            "colo_frames_in_total{{side=\"primary\"}} {}",
            frames.len()
        )),
        "{body}"
    );
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

#[test]
fn rewrite_has_metrics_too() {
    let mut proxy = Proxy::start_rewrite(
        "unix:{dir}/from_out.sock",
        &["--metrics", "tcp:127.0.0.1:0"],
    );
    let addr = proxy.log_field("metrics endpoint listening", "local");
    let mut fsi = proxy.connect("from_in.sock");
    let mut fso = proxy.connect("from_out.sock");
    let frames = traffic(1, 2, false);
    write_split(&mut fsi, &wire(&frames, false), 7);
    read_frames(&mut fso, frames.len(), false);
    let m = scrape(&addr);
    assert_eq!(
        get(
            &m,
            r#"colo_rewrite_frames_in_total{direction="from_secondary"}"#
        ),
        frames.len() as u64
    );
    assert_eq!(
        get(
            &m,
            r#"colo_written_frames_total{queue="from_secondary_out"}"#
        ),
        frames.len() as u64
    );
    assert_eq!(get(&m, r#"colo_peer_up{role="from_secondary_in"}"#), 1);
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}
