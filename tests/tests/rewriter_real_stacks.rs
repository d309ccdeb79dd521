//! The rewriter and the compare engine against real Linux TCP stacks: a client, a
//! primary and a secondary "VM" as network namespaces, the same deterministic
//! service in both VMs, and the relay (rewriter + engine) between their TAP devices.
//!
//! Needs root; prints `SKIPPED: <reason>` and returns where the lab cannot be built.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use colo_core::engine::{CheckpointReason, DivergenceKind, EngineConfig};
use colo_core::flow::{Endpoint, FlowKey, FlowProto};
use colo_core::rewrite::OpenKind;
use colo_integration::lab::{CLIENT_IP, VM_IP};
use colo_integration::process::{CommandOutput, PendingOutput};
use colo_integration::proto;
use colo_integration::relay::{RelayEvent, TapRole};
use colo_integration::{CheckpointPolicy, Lab, LabConfig, RelayConfig, unavailable_reason};

const TESTSRV: &str = env!("CARGO_BIN_EXE_colo-testsrv");
const BULK_PORT: u16 = 7000;
const ECHO_PORT: u16 = 7001;
const NONDET_PORT: u16 = 7002;
const BULK_CLOSE_PORT: u16 = 7003;
/// Every test finishes its traffic within this (the whole test stays under 60 s).
const TEST_BUDGET: Duration = Duration::from_secs(45);

/// Let the last ACKs and FINs through, then stop the relay and print its report.
fn settle_and_stop(mut lab: Lab) -> colo_integration::RelayReport {
    let relay = lab.relay().expect("relay running");
    if !relay.wait_quiescent(Duration::from_millis(300), Duration::from_secs(5)) {
        eprintln!("the relay did not become quiescent within 5 s");
    }
    let report = lab.stop().expect("stopping the relay");
    drop(lab);
    eprintln!("{}", report.summary());
    report
}

/// Build the lab, or say why not and return `None`.
fn lab_or_skip(config: LabConfig) -> Option<Lab> {
    if let Some(reason) = unavailable_reason() {
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    Some(Lab::start(config).expect("building the lab"))
}

fn start_service(lab: &mut Lab, listeners: &[String]) {
    let mut args = vec!["serve".to_owned(), "--lifetime".into(), "90".into()];
    args.extend_from_slice(listeners);
    lab.start_service(TESTSRV.as_ref(), &args, Duration::from_secs(10))
        .expect("starting the service in both VMs");
}

fn client(lab: &Lab, args: &[String], label: &str) -> PendingOutput {
    let mut cmd: Command = lab.client_command(TESTSRV);
    cmd.arg("client").args(args);
    PendingOutput::spawn(&mut cmd, label).expect("starting a client")
}

/// The connection's flow key, from the `local=` line the client prints.
fn client_flow(out: &CommandOutput, server_port: u16) -> FlowKey {
    let text = out.stderr_text();
    let local: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("local="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("client printed no local address: {text}"));
    assert_eq!(local.ip(), IpAddr::V4(CLIENT_IP));
    FlowKey::new(
        [0, 0],
        FlowProto::Tcp,
        Endpoint::new(local.ip(), local.port()),
        Endpoint::new(IpAddr::V4(VM_IP), server_port),
    )
    .0
}

/// Wait for a client, at most until `deadline`.
fn finish(pending: PendingOutput, deadline: Instant) -> CommandOutput {
    let left = deadline.saturating_duration_since(Instant::now());
    let out = pending.wait(left).expect("client finished in time");
    assert!(
        out.status.success(),
        "client failed ({}): {}",
        out.status,
        out.stderr_text()
    );
    out
}

#[test]
fn deterministic_bulk_through_rewriter() {
    let started = Instant::now();
    let deadline = started + TEST_BUDGET;
    let Some(mut lab) = lab_or_skip(LabConfig::default()) else {
        return;
    };
    start_service(
        &mut lab,
        &[format!("bulk:{BULK_PORT}"), format!("echo:{ECHO_PORT}")],
    );

    const BULK_BYTES: usize = 4 << 20;
    const ECHO_CONNS: u32 = 5;
    const ECHO_MESSAGES: u32 = 10;
    let vm = |port: u16| format!("{VM_IP}:{port}");

    // One bulk download and five request/response connections, all at once.
    let bulk = client(
        &lab,
        &["bulk".into(), vm(BULK_PORT), BULK_BYTES.to_string()],
        "bulk client",
    );
    let echoes: Vec<(u32, PendingOutput)> = (1..=ECHO_CONNS)
        .map(|c| {
            let args = [
                "echo".into(),
                vm(ECHO_PORT),
                c.to_string(),
                ECHO_MESSAGES.to_string(),
            ];
            (c, client(&lab, &args, &format!("echo client {c}")))
        })
        .collect();

    let bulk = finish(bulk, deadline);
    assert_eq!(bulk.stdout.len(), BULK_BYTES, "bulk length");
    assert!(
        bulk.stdout == proto::bulk_bytes(BULK_BYTES),
        "bulk bytes differ from the pattern"
    );
    let mut flows = vec![client_flow(&bulk, BULK_PORT)];
    let mut server_bytes = BULK_BYTES as u64;
    for (c, pending) in echoes {
        let out = finish(pending, deadline);
        let expected = proto::echo_transcript(c, ECHO_MESSAGES);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&expected),
            "echo connection {c}"
        );
        server_bytes += expected.len() as u64;
        flows.push(client_flow(&out, ECHO_PORT));
    }

    let report = settle_and_stop(lab);
    eprintln!(
        "deterministic_bulk_through_rewriter took {:?}",
        started.elapsed()
    );

    // The engine saw every byte of both VMs agree, and asked for nothing.
    assert_eq!(report.divergences().count(), 0, "{}", report.summary());
    assert_eq!(
        report.checkpoint_requests().count(),
        0,
        "{}",
        report.summary()
    );
    assert_eq!(report.engine.divergences_total(), 0);
    assert_eq!(report.engine.checkpoints_total(), 0);
    assert_eq!(
        report.engine.bytes_matched,
        server_bytes,
        "every byte the service sent was matched once\n{}",
        report.summary()
    );
    assert!(
        report.engine.datagrams_matched >= 1,
        "the client's ARP request was answered by both VMs and matched"
    );
    assert!(report.unreleased.is_empty(), "{}", report.summary());
    assert_eq!(report.engine.held_frames, 0, "nothing left held");
    assert_eq!(report.engine.released_by_flush, 0);
    assert_eq!(
        report.tap(TapRole::Client).frames_out,
        report.engine.released_frames
    );
    for role in [TapRole::Client, TapRole::Primary, TapRole::Secondary] {
        assert_eq!(report.tap(role).errors, 0, "{} tap errors", role.name());
    }
    // The client's acknowledgements reached the secondary translated: nothing waited
    // for an offset in vain.
    assert_eq!(report.rewriter.held_expired, 0);
    assert_eq!(report.rewriter.dropped_hold_full, 0);

    // The rewriter learned offsets for every connection from its handshake.
    for flow in &flows {
        let learned = report
            .learned_for(flow)
            .unwrap_or_else(|| panic!("no offsets learned for {flow}\n{}", report.summary()));
        assert_eq!(learned.open, OpenKind::Passive, "{flow}");
        let ts = learned.offsets.ts.expect("both VMs use timestamps");
        assert_ne!(ts, 0, "{flow}: the secondary runs another timestamp clock");
    }
    assert!(
        flows
            .iter()
            .filter_map(|f| report.learned_for(f))
            .any(|l| l.offsets.seq != 0),
        "the two stacks chose different ISNs"
    );
    assert!(report.rewriter.offsets_learned >= flows.len() as u64);
    assert!(report.rewriter.rewritten > 0);
    assert_eq!(report.rewriter.midstream_assumed, 0);
}

#[test]
fn nondeterministic_reply_is_detected() {
    let started = Instant::now();
    let config = LabConfig {
        relay: RelayConfig {
            engine: EngineConfig {
                // After the first (fake) checkpoint the secondary is not a copy of the
                // primary, so every later reply waits this long for it.
                compare_timeout: colo_core::Duration::from_millis(400),
                ..EngineConfig::default()
            },
            checkpoint: CheckpointPolicy::CompleteImmediately,
            ..RelayConfig::default()
        },
        ..LabConfig::default()
    };
    let deadline = started + TEST_BUDGET;
    let Some(mut lab) = lab_or_skip(config) else {
        return;
    };
    start_service(
        &mut lab,
        &[format!("echo:{ECHO_PORT}"), format!("nondet:{NONDET_PORT}")],
    );
    let vm = |port: u16| format!("{VM_IP}:{port}");

    // A deterministic connection first: no divergence.
    let echo = finish(
        client(
            &lab,
            &["echo".into(), vm(ECHO_PORT), "1".into(), "5".into()],
            "echo client",
        ),
        deadline,
    );
    assert_eq!(echo.stdout, proto::echo_transcript(1, 5));
    let echo_flow = client_flow(&echo, ECHO_PORT);
    let relay = lab.relay().expect("relay running");
    assert!(
        !relay
            .events()
            .iter()
            .any(|e| matches!(e.event, RelayEvent::Divergence(_))),
        "deterministic traffic diverged: {:?}",
        relay.events()
    );

    // Then the service that puts its clock into every reply.
    const MESSAGES: u32 = 4;
    let nondet = finish(
        client(
            &lab,
            &[
                "echo".into(),
                vm(NONDET_PORT),
                "9".into(),
                MESSAGES.to_string(),
            ],
            "nondet client",
        ),
        deadline,
    );
    let nondet_flow = client_flow(&nondet, NONDET_PORT);
    let report = settle_and_stop(lab);
    eprintln!(
        "nondeterministic_reply_is_detected took {:?}",
        started.elapsed()
    );

    // The client got the primary's replies, complete and in order.
    let text = String::from_utf8(nondet.stdout.clone()).expect("replies are text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), MESSAGES as usize, "{text}");
    for (i, line) in lines.iter().enumerate() {
        let req = proto::echo_request(9, i as u32);
        let prefix = format!("{} t=", proto::nondet_reply_prefix(req.trim_end()));
        let nanos = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("reply {i} is {line:?}, expected {prefix:?}..."));
        assert!(
            !nanos.is_empty() && nanos.bytes().all(|b| b.is_ascii_digit()),
            "reply {i}: {line:?}"
        );
    }

    // The first divergence: payload, on that connection, inside the first reply's
    // timestamp, and what the engine says the primary sent is what the client got.
    let first = report
        .divergences()
        .next()
        .unwrap_or_else(|| panic!("no divergence\n{}", report.summary()));
    assert_eq!(first.flow, Some(nondet_flow), "{first}");
    let DivergenceKind::Payload {
        offset,
        primary,
        secondary,
    } = &first.kind
    else {
        panic!("first divergence is not a payload one: {first}");
    };
    let first_reply = lines[0].len() as u64 + 1;
    let req0 = proto::echo_request(9, 0);
    let digits_start = format!("{} t=", proto::nondet_reply_prefix(req0.trim_end())).len() as u64;
    assert!(
        (digits_start..first_reply - 1).contains(offset),
        "divergence at {offset}, the first reply's clock is at {digits_start}..{}",
        first_reply - 1
    );
    let at = usize::try_from(*offset).expect("small offset");
    assert!(!primary.is_empty());
    assert_eq!(
        &nondet.stdout[at..at + primary.len()],
        &primary[..],
        "the client received the primary's bytes"
    );
    assert_ne!(primary, secondary);

    // It asked for a checkpoint for that reason; the stand-in completed it.
    let request = report
        .checkpoint_requests()
        .next()
        .expect("a checkpoint request");
    assert_eq!(request.cause, *first);
    assert_eq!(request.cause.reason(), CheckpointReason::Payload);
    assert!(report.engine_epoch >= 1);
    // Nothing else diverged: neither the deterministic connection nor ARP.
    for d in report.divergences() {
        assert_ne!(d.flow, Some(echo_flow), "{d}");
        assert_eq!(
            d.flow,
            Some(nondet_flow),
            "only the nondet connection diverges: {d}"
        );
    }
}

/// The VM closes first (HTTP/1.0 style): after its FIN it acknowledges the client's
/// FIN with `seq = FIN + 1`. The engine never releases that ACK (its stream offset is
/// one past the matched front, because the FIN is no stream byte), so the client
/// retransmits its FIN, and after `compare_timeout` the held ACK is reported as
/// `SecondaryTooSlow` and a checkpoint is requested. Sans-IO reproduction:
/// `engine_repro.rs`.
#[test]
fn vm_closing_first_needs_no_checkpoint() {
    let deadline = Instant::now() + TEST_BUDGET;
    let Some(mut lab) = lab_or_skip(LabConfig::default()) else {
        return;
    };
    start_service(&mut lab, &[format!("bulk-close:{BULK_CLOSE_PORT}")]);
    const BYTES: usize = 256 << 10;
    let out = finish(
        client(
            &lab,
            &[
                "bulk".into(),
                format!("{VM_IP}:{BULK_CLOSE_PORT}"),
                BYTES.to_string(),
            ],
            "bulk client",
        ),
        deadline,
    );
    assert!(out.stdout == proto::bulk_bytes(BYTES));
    // Longer than the engine's compare timeout (3 s).
    std::thread::sleep(Duration::from_millis(3500));
    let report = settle_and_stop(lab);
    assert!(report.unreleased.is_empty(), "{}", report.summary());
    assert_eq!(
        report.checkpoint_requests().count(),
        0,
        "{}",
        report.summary()
    );
}
