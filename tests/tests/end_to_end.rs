//! Issue 6: end to end through real Linux TCP stacks. A client, a primary VM and a
//! secondary VM as network namespaces, the real `colo-proxy primary` and
//! `colo-proxy secondary` daemons between them (TAP devices, a loopback TCP link),
//! and the same `colo-testsrv` service in both VMs. Every scenario asserts on the
//! bytes the client (or the VM) received and on the proxies' control-socket events.
//!
//! Needs root, `ip` and `/dev/net/tun`; prints `SKIPPED: <reason>` and returns where
//! the lab cannot be built. Needs the `colo-proxy` binary next to the test binary
//! (`cargo nextest run --workspace` builds it; or `cargo build -p colo-proxy`, or
//! `COLO_PROXY_BIN=...`).

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use colo_core::flow::{Endpoint, FlowKey, FlowProto};
use colo_integration::process::{CommandOutput, WatchedOutput};
use colo_integration::proto;
use colo_integration::twin::{
    PathKind, TwinConfig, TwinLab, Vm, client_addr, unavailable_reason, vm_addr,
};
use serde_json::Value;

const TESTSRV: &str = env!("CARGO_BIN_EXE_colo-testsrv");
const BULK_PORT: u16 = 7000;
const ECHO_PORT: u16 = 7001;
const NONDET_CLOSE_PORT: u16 = 7004;
const UDP_PORT: u16 = 7005;
const UDP_NONDET_PORT: u16 = 7006;
/// Servers in the client namespace, for connections the VMs open.
const OUT_ECHO_PORT: u16 = 8000;
const OUT_BULK_PORT: u16 = 8001;
/// The primary's compare timeout (its default): late or missing secondary output
/// shows up as an event within this.
const COMPARE_TIMEOUT_MS: u64 = 3000;
/// Time for late events (a frame left waiting for the secondary) to be reported.
const EVENT_GRACE: Duration = Duration::from_millis(COMPARE_TIMEOUT_MS + 500);
const MIB: usize = 1 << 20;

fn config() -> TwinConfig {
    TwinConfig {
        primary_args: vec!["--compare-timeout".into(), COMPARE_TIMEOUT_MS.to_string()],
        ..TwinConfig::default()
    }
}

/// Build the lab, or say why not and return `None`.
fn lab_or_skip(config: &TwinConfig) -> Option<TwinLab> {
    if let Some(reason) = unavailable_reason() {
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    Some(TwinLab::start(config).unwrap_or_else(|e| panic!("building the two-host lab: {e}")))
}

/// The lab with [`config`] and the test service running in both VMs, or `None`
/// (after saying why) where the lab cannot be built.
fn lab_with_services() -> Option<TwinLab> {
    let mut lab = lab_or_skip(&config())?;
    start_services(&mut lab);
    Some(lab)
}

fn start_services(lab: &mut TwinLab) {
    let args = [
        "serve".to_owned(),
        "--lifetime".into(),
        "300".into(),
        format!("bulk:{BULK_PORT}"),
        format!("echo:{ECHO_PORT}"),
        format!("nondet-close:{NONDET_CLOSE_PORT}"),
        format!("udp-echo:{UDP_PORT}"),
        format!("udp-nondet:{UDP_NONDET_PORT}"),
    ];
    lab.start_service(TESTSRV.as_ref(), &args)
        .expect("starting the service in both VMs");
}

fn client(lab: &TwinLab, args: &[String], label: &str) -> WatchedOutput {
    let mut all = vec!["client".to_owned()];
    all.extend_from_slice(args);
    lab.run_in_client(TESTSRV.as_ref(), &all, label)
        .expect("starting a client")
}

fn finish(lab: &TwinLab, pending: WatchedOutput, timeout: Duration) -> CommandOutput {
    let out = match pending.wait(timeout) {
        Ok(out) => out,
        Err(e) => panic!("{e}\n{}", lab.proxy_logs()),
    };
    assert!(
        out.status.success(),
        "client failed ({}): {}\n{}",
        out.status,
        out.stderr_text(),
        lab.proxy_logs()
    );
    out
}

fn bulk_args(addr: SocketAddr, bytes: usize) -> Vec<String> {
    vec!["bulk".into(), addr.to_string(), bytes.to_string()]
}

fn echo_args(addr: SocketAddr, conn: u32, count: u32) -> Vec<String> {
    vec![
        "echo".into(),
        addr.to_string(),
        conn.to_string(),
        count.to_string(),
    ]
}

/// An echo client's `count` requests on connection `conn` to `server`, run to the
/// end; asserts the transcript and returns its output.
fn echo_ok(lab: &TwinLab, server: SocketAddr, conn: u32, count: u32, label: &str) -> CommandOutput {
    let echo = client(lab, &echo_args(server, conn, count), label);
    let echo = finish(lab, echo, Duration::from_secs(30));
    assert_eq!(
        echo.stdout,
        proto::echo_transcript(conn, count),
        "{label}: transcript"
    );
    echo
}

fn echo_many_args(addr: SocketAddr, conns: u32, count: u32) -> Vec<String> {
    vec![
        "echo-many".into(),
        addr.to_string(),
        conns.to_string(),
        count.to_string(),
    ]
}

fn udp_echo_args(addr: SocketAddr, count: u32) -> Vec<String> {
    vec!["udp-echo".into(), addr.to_string(), count.to_string()]
}

fn assert_bulk(out: &CommandOutput, bytes: usize, what: &str) {
    assert_eq!(out.stdout.len(), bytes, "{what}: length");
    let expected = proto::bulk_bytes(bytes);
    if out.stdout != expected {
        let first = out
            .stdout
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!("{what}: bytes differ from the pattern from offset {first} on");
    }
}

fn echo_many_expected(conns: u32, count: u32) -> Vec<u8> {
    (1..=conns)
        .flat_map(|c| proto::echo_transcript(c, count))
        .collect()
}

fn udp_expected(count: u32) -> Vec<u8> {
    (0..count)
        .flat_map(|i| {
            let req = proto::echo_request(0, i);
            proto::echo_reply(req.trim_end_matches('\n')).into_bytes()
        })
        .collect()
}

/// The connection's flow, from the `local=` line a client prints.
fn client_flow(out: &CommandOutput, proto: FlowProto, server: SocketAddr) -> FlowKey {
    let text = out.stderr_text();
    let local: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("local="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("client printed no local address: {text}"));
    FlowKey::new(
        [0, 0],
        proto,
        Endpoint::new(local.ip(), local.port()),
        Endpoint::new(server.ip(), server.port()),
    )
    .0
}

/// Run a client (`args`) of a nondeterministic service on `server` and play the
/// COLO framework: the primary holds the diverged reply until the checkpoint is done,
/// so wait for `checkpoint-requested`, answer `checkpoint-done`, then let the client
/// finish. Asserts that the request names `reason` and the client's flow, and that
/// the client got exactly the primary VM's reply. Returns the reply and the flow.
fn diverging_exchange(
    lab: &mut TwinLab,
    args: &[String],
    proto: FlowProto,
    server: SocketAddr,
    reason: &str,
) -> (String, FlowKey) {
    let run = client(lab, args, "nondeterministic client");
    let event = lab
        .control(Vm::Primary)
        .wait_event_named("checkpoint-requested", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.proxy_logs()));
    let done = lab
        .control(Vm::Primary)
        .command("checkpoint-done", Duration::from_secs(5))
        .expect("checkpoint-done reply");
    assert_eq!(done["ok"], true, "{done}");
    let out = finish(lab, run, Duration::from_secs(30));
    let flow = client_flow(&out, proto, server);
    assert_eq!(event["reason"], reason, "{event}");
    assert_eq!(event["flow"], flow.to_string(), "{event}");
    let primary_sent: Vec<String> = lab
        .service_lines(Vm::Primary)
        .into_iter()
        .filter_map(|l| l.strip_prefix("sent ").map(str::to_owned))
        .collect();
    assert_eq!(primary_sent.len(), 1, "{primary_sent:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", primary_sent[0]),
        "the client got the primary's reply"
    );
    (primary_sent[0].clone(), flow)
}

/// Let late events arrive, then assert that the primary asked for no checkpoint and
/// reported no limit or degradation.
fn assert_no_checkpoint(lab: &mut TwinLab) {
    thread::sleep(EVENT_GRACE);
    let events = lab.control(Vm::Primary).events();
    let bad: Vec<&Value> = events
        .iter()
        .filter(|e| {
            matches!(
                e["event"].as_str(),
                Some("checkpoint-requested" | "limit-reached" | "degraded" | "events-lost")
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "the primary reported {} unexpected events: {}\nall events: {}\n{}",
        bad.len(),
        Value::from(bad.iter().map(|v| (*v).clone()).collect::<Vec<_>>()),
        Value::from(events.clone()),
        lab.proxy_logs()
    );
}

/// The primary compared everything it released (nothing passed unchecked, nothing
/// left held) and heard the secondary.
fn assert_all_compared(lab: &mut TwinLab) {
    let s = stats(lab, Vm::Primary);
    assert_eq!(s["released"]["unchecked"], 0, "{s}");
    assert_eq!(s["held"]["frames"], 0, "{s}");
    assert_eq!(s["mode"], "compare", "{s}");
    assert_eq!(s["released"]["bytes"], s["bytes_in"]["primary"], "{s}");
    assert!(
        s["bytes_in"]["secondary"].as_u64().unwrap_or(0) > 0,
        "no secondary output reached the primary: {s}"
    );
}

/// Poll `stats` of `vm` until `pred` holds (at most 5 s); returns the last stats.
fn wait_stats(lab: &mut TwinLab, vm: Vm, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stats(lab, vm);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{vm:?} stats never got there: {s}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn stats(lab: &mut TwinLab, vm: Vm) -> Value {
    let reply = lab
        .control(vm)
        .command("stats", Duration::from_secs(5))
        .expect("stats reply");
    assert_eq!(reply["ok"], true, "{reply}");
    reply["stats"].clone()
}

/// The lab itself, without proxies: the primary VM straight on the client's bridge.
/// Runs whether or not the proxies are built; checks the services, the clients and
/// the namespaces' IPv4/IPv6 set-up the proxy scenarios rely on.
#[test]
fn direct_path_lab_check() {
    let Some(mut lab) = lab_or_skip(&TwinConfig {
        path: PathKind::Direct,
        ..TwinConfig::default()
    }) else {
        return;
    };
    // The direct path has no secondary VM on the wire; a service there is harmless.
    start_services(&mut lab);
    let bulk = client(
        &lab,
        &bulk_args(vm_addr(false, BULK_PORT), 8 * MIB),
        "bulk v4",
    );
    let echo = client(
        &lab,
        &echo_many_args(vm_addr(true, ECHO_PORT), 20, 20),
        "echo-many v6",
    );
    let udp = client(&lab, &udp_echo_args(vm_addr(true, UDP_PORT), 50), "udp v6");
    let bulk = finish(&lab, bulk, Duration::from_secs(60));
    assert_bulk(&bulk, 8 * MIB, "direct bulk");
    let echo = finish(&lab, echo, Duration::from_secs(60));
    assert_eq!(echo.stdout, echo_many_expected(20, 20), "direct echo-many");
    let udp = finish(&lab, udp, Duration::from_secs(60));
    assert_eq!(udp.stdout, udp_expected(50), "direct udp");
    assert_eq!(
        lab.service_lines(Vm::Primary)
            .iter()
            .filter(|l| l.starts_with("accepted "))
            .count(),
        21,
        "one bulk and 20 echo connections reached the primary VM"
    );
}

/// The deterministic service: a 100 MB download and 200 concurrent request/response
/// connections at once. The two stacks choose different ISNs and timestamps and
/// segment differently, yet the client gets every byte exactly once and the primary
/// asks for no checkpoint.
#[test]
fn deterministic_bulk_and_small_messages() {
    let Some(mut lab) = lab_with_services() else {
        return;
    };
    const BULK: usize = 100 * MIB;
    const CONNS: u32 = 200;
    const MESSAGES: u32 = 25;
    let started = Instant::now();
    let bulk = client(
        &lab,
        &bulk_args(vm_addr(false, BULK_PORT), BULK),
        "bulk 100 MB",
    );
    let echo = client(
        &lab,
        &echo_many_args(vm_addr(false, ECHO_PORT), CONNS, MESSAGES),
        "echo-many",
    );
    let echo = finish(&lab, echo, Duration::from_secs(180));
    eprintln!(
        "{CONNS} x {MESSAGES} request/response: {:?}",
        started.elapsed()
    );
    let bulk = finish(&lab, bulk, Duration::from_secs(300));
    let took = started.elapsed();
    eprintln!(
        "100 MB bulk through the proxies: {took:?} ({:.1} MB/s)",
        BULK as f64 / took.as_secs_f64() / 1e6
    );
    assert_eq!(
        echo.stdout,
        echo_many_expected(CONNS, MESSAGES),
        "request/response transcripts"
    );
    assert_bulk(&bulk, BULK, "bulk");
    assert_no_checkpoint(&mut lab);
    assert_all_compared(&mut lab);
    // The secondary's stack chose other ISNs and timestamps: its frames were rewritten.
    let s = stats(&mut lab, Vm::Secondary);
    assert!(s["rewritten"].as_u64().unwrap_or(0) > 0, "{s}");
    assert_eq!(s["epoch"], 0, "{s}");
}

/// IPv6 TCP, and UDP over IPv4 and IPv6: identical answers, no checkpoint.
#[test]
fn deterministic_ipv6_and_udp() {
    let Some(mut lab) = lab_with_services() else {
        return;
    };
    const BULK: usize = 16 * MIB;
    let bulk = client(&lab, &bulk_args(vm_addr(true, BULK_PORT), BULK), "bulk v6");
    let echo = client(
        &lab,
        &echo_many_args(vm_addr(true, ECHO_PORT), 50, 20),
        "echo-many v6",
    );
    let udp4 = client(
        &lab,
        &udp_echo_args(vm_addr(false, UDP_PORT), 100),
        "udp v4",
    );
    let udp6 = client(&lab, &udp_echo_args(vm_addr(true, UDP_PORT), 100), "udp v6");
    let udp4 = finish(&lab, udp4, Duration::from_secs(60));
    let udp6 = finish(&lab, udp6, Duration::from_secs(60));
    let echo = finish(&lab, echo, Duration::from_secs(60));
    let bulk = finish(&lab, bulk, Duration::from_secs(120));
    assert_eq!(udp4.stdout, udp_expected(100), "udp v4 replies");
    assert_eq!(udp6.stdout, udp_expected(100), "udp v6 replies");
    assert!(
        !udp4.stderr_text().contains("no reply") && !udp6.stderr_text().contains("no reply"),
        "a datagram went unanswered: {} {}",
        udp4.stderr_text(),
        udp6.stderr_text()
    );
    assert_eq!(echo.stdout, echo_many_expected(50, 20), "v6 transcripts");
    assert_bulk(&bulk, BULK, "v6 bulk");
    assert_no_checkpoint(&mut lab);
    assert_all_compared(&mut lab);
}

/// Connections the VMs open: both VMs run the same client (from the same fixed
/// port, as a VM and its copy would) towards servers in the client namespace. The
/// client-side server sees one connection each, both VMs get the exact bytes, and
/// the primary asks for no checkpoint.
#[test]
fn vm_initiated_connections() {
    let Some(mut lab) = lab_or_skip(&config()) else {
        return;
    };
    let server = lab
        .start_client_server(
            TESTSRV.as_ref(),
            [
                "serve".to_owned(),
                "--lifetime".into(),
                "300".into(),
                format!("echo:{OUT_ECHO_PORT}"),
                format!("bulk:{OUT_BULK_PORT}"),
            ],
        )
        .expect("starting the client-side server");
    const BULK: usize = 8 * MIB;
    let run = |lab: &TwinLab, vm: Vm| {
        let echo = lab
            .run_in_vm(
                vm,
                TESTSRV.as_ref(),
                [
                    "client",
                    "--bind-port",
                    "40000",
                    "echo",
                    &client_addr(false, OUT_ECHO_PORT).to_string(),
                    "7",
                    "50",
                ],
                &format!("{vm:?} VM echo client"),
            )
            .expect("starting a VM client");
        let bulk = lab
            .run_in_vm(
                vm,
                TESTSRV.as_ref(),
                [
                    "client",
                    "--bind-port",
                    "40001",
                    "bulk",
                    &client_addr(true, OUT_BULK_PORT).to_string(),
                    &BULK.to_string(),
                ],
                &format!("{vm:?} VM bulk client"),
            )
            .expect("starting a VM client");
        (echo, bulk)
    };
    // Both VMs at once, as a VM and its running copy.
    let (p_echo, p_bulk) = run(&lab, Vm::Primary);
    let (s_echo, s_bulk) = run(&lab, Vm::Secondary);
    for (vm, echo, bulk) in [
        (Vm::Primary, p_echo, p_bulk),
        (Vm::Secondary, s_echo, s_bulk),
    ] {
        let echo = finish(&lab, echo, Duration::from_secs(60));
        assert_eq!(
            echo.stdout,
            proto::echo_transcript(7, 50),
            "{vm:?} VM echo transcript"
        );
        let bulk = finish(&lab, bulk, Duration::from_secs(120));
        assert_bulk(&bulk, BULK, &format!("{vm:?} VM bulk download"));
    }
    let accepted: Vec<String> = lab
        .client_server_lines(server)
        .into_iter()
        .filter(|l| l.starts_with("accepted "))
        .collect();
    let mut want = vec![
        format!("accepted echo {}", vm_addr(false, 40000)),
        format!("accepted bulk {}", vm_addr(true, 40001)),
    ];
    let mut got = accepted.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the client-side server saw each connection once");
    assert_no_checkpoint(&mut lab);
    assert_all_compared(&mut lab);
}

/// A service whose reply carries the VM's clock: the primary asks for a checkpoint
/// with reason `payload` on that connection, and the client gets the primary's
/// reply. The service closes the connection after the reply, so what the test
/// asserts stays true though the acknowledged "checkpoint" does not make the
/// secondary's stack a copy of the primary's.
#[test]
fn nondeterministic_reply_requests_checkpoint() {
    let Some(mut lab) = lab_with_services() else {
        return;
    };
    // Deterministic first: nothing to report.
    echo_ok(&lab, vm_addr(false, ECHO_PORT), 1, 5, "echo");
    assert!(
        lab.control(Vm::Primary)
            .events_named("checkpoint-requested")
            .is_empty(),
        "deterministic echo asked for a checkpoint: {:?}",
        lab.control(Vm::Primary).events()
    );

    let server = vm_addr(false, NONDET_CLOSE_PORT);
    let (primary_reply, flow) = diverging_exchange(
        &mut lab,
        &["nondet".into(), server.to_string(), "what time".into()],
        FlowProto::Tcp,
        server,
        "payload",
    );
    // The primary forwards the checkpoint over the link; the secondary resets its
    // rewriter once.
    let s = wait_stats(&mut lab, Vm::Secondary, |s| s["checkpoints"]["link"] == 1);
    assert_eq!(s["epoch"], 1, "{s}");
    let secondary_sent: Vec<String> = lab
        .service_lines(Vm::Secondary)
        .into_iter()
        .filter(|l| l.starts_with("sent "))
        .collect();
    assert_eq!(secondary_sent.len(), 1, "the secondary VM answered too");
    assert_ne!(
        secondary_sent[0],
        format!("sent {primary_reply}"),
        "the two VMs' clocks differed"
    );

    // Every request concerned that connection.
    let before = checkpoints_only_for(&mut lab, &flow);

    // A new deterministic connection after the checkpoint compares cleanly again.
    echo_ok(
        &lab,
        vm_addr(false, ECHO_PORT),
        2,
        5,
        "echo after the checkpoint",
    );
    thread::sleep(EVENT_GRACE);
    let after = lab
        .control(Vm::Primary)
        .events_named("checkpoint-requested");
    assert_eq!(
        after.len(),
        before,
        "deterministic traffic after the checkpoint asked for another: {}",
        Value::from(after)
    );
}

/// The same over UDP and IPv6: a datagram reply with the VM's clock in it. The
/// primary asks for a checkpoint with reason `datagram` on that flow; the client
/// gets the primary's datagram.
#[test]
fn nondeterministic_udp_reply_requests_checkpoint() {
    let Some(mut lab) = lab_with_services() else {
        return;
    };
    let server = vm_addr(true, UDP_NONDET_PORT);
    let (_, flow) = diverging_exchange(
        &mut lab,
        &["udp-once".into(), server.to_string(), "what time".into()],
        FlowProto::Udp,
        server,
        "datagram",
    );
    checkpoints_only_for(&mut lab, &flow);
}

/// After [`EVENT_GRACE`], every checkpoint the primary asked for was for `flow`;
/// returns how many it asked for.
fn checkpoints_only_for(lab: &mut TwinLab, flow: &FlowKey) -> usize {
    thread::sleep(EVENT_GRACE);
    let requests = lab
        .control(Vm::Primary)
        .events_named("checkpoint-requested");
    for e in &requests {
        assert_eq!(
            e["flow"],
            flow.to_string(),
            "a request for another flow: {e}"
        );
    }
    requests.len()
}

/// Start a download, wait until the client has `at_least` bytes.
fn download_in_progress(lab: &TwinLab, v6: bool, bytes: usize, at_least: usize) -> WatchedOutput {
    let mut bulk = client(lab, &bulk_args(vm_addr(v6, BULK_PORT), bytes), "bulk");
    bulk.wait_stderr("progress", Duration::from_secs(60), |l| {
        l.strip_prefix("progress ")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n >= at_least)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.proxy_logs()));
    bulk
}

/// The client's address of a running client, from its `local=` line.
fn local_addr(run: &WatchedOutput) -> SocketAddr {
    run.stderr_lines()
        .iter()
        .find_map(|l| l.strip_prefix("local=")?.parse().ok())
        .expect("the client printed its local address")
}

/// How the secondary is cut off.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Its proxy is killed: the link's TCP connection closes.
    Kill,
    /// Its proxy is frozen (SIGSTOP): the link stays open but goes silent, and only
    /// the heartbeat timeout can tell.
    Freeze,
}

/// The secondary host is lost mid-transfer: the primary says it is degraded and the
/// download completes, every byte once; new connections are served.
fn secondary_cut_mid_transfer(cut: Cut) {
    let Some(mut lab) = lab_with_services() else {
        return;
    };
    const BULK: usize = 48 * MIB;
    let bulk = download_in_progress(&lab, false, BULK, 8 * MIB);
    match cut {
        Cut::Kill => lab
            .kill_proxy(Vm::Secondary)
            .expect("killing the secondary"),
        Cut::Freeze => lab
            .proxy_process(Vm::Secondary)
            .expect("secondary running")
            .signal("STOP")
            .expect("freezing the secondary"),
    }
    let degraded = lab
        .control(Vm::Primary)
        .wait_event_named("degraded", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.proxy_logs()));
    eprintln!("{cut:?}: degraded after the cut: {degraded}");
    let bulk = finish(&lab, bulk, Duration::from_secs(120));
    assert_bulk(&bulk, BULK, "download across the secondary's loss");
    let s = stats(&mut lab, Vm::Primary);
    assert_ne!(s["mode"], "compare", "{s}");
    assert!(
        s["released"]["unchecked"].as_u64().unwrap_or(0) > 0,
        "the primary released output uncompared while degraded: {s}"
    );
    echo_ok(
        &lab,
        vm_addr(false, ECHO_PORT),
        3,
        10,
        "echo while degraded",
    );
    if matches!(cut, Cut::Freeze) {
        secondary_comes_back(&mut lab);
    }
}

/// The frozen secondary resumes: the link comes back (`secondary-back`), and after
/// the next checkpoint the primary compares again: a new connection's output is
/// compared, byte for byte, without a checkpoint request for it. (The secondary VM's
/// stack still holds the connections of before the cut, which a real checkpoint
/// would have replaced; whatever it says on those is not asserted on.)
fn secondary_comes_back(lab: &mut TwinLab) {
    lab.proxy_process(Vm::Secondary)
        .expect("secondary running")
        .signal("CONT")
        .expect("resuming the secondary");
    let back = lab
        .control(Vm::Primary)
        .wait_event_named("secondary-back", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.proxy_logs()));
    eprintln!("secondary back: {back}");
    let done = lab
        .control(Vm::Primary)
        .command("checkpoint-done", Duration::from_secs(5))
        .expect("checkpoint-done reply");
    assert_eq!(done["ok"], true, "{done}");
    let before = stats(lab, Vm::Primary);
    assert_eq!(before["mode"], "compare", "{before}");
    let server = vm_addr(false, ECHO_PORT);
    let echo = echo_ok(lab, server, 5, 20, "echo after the secondary came back");
    let flow = client_flow(&echo, FlowProto::Tcp, server);
    thread::sleep(EVENT_GRACE);
    let about_it: Vec<Value> = lab
        .control(Vm::Primary)
        .events_named("checkpoint-requested")
        .into_iter()
        .filter(|e| e["flow"] == flow.to_string())
        .collect();
    assert!(
        about_it.is_empty(),
        "the new connection diverged: {}",
        Value::from(about_it)
    );
    let after = stats(lab, Vm::Primary);
    assert_eq!(
        after["released"]["unchecked"], before["released"]["unchecked"],
        "output passed unchecked after the checkpoint: {after}"
    );
}

#[test]
fn secondary_killed_mid_transfer_degrades() {
    secondary_cut_mid_transfer(Cut::Kill);
}

#[test]
fn secondary_frozen_mid_transfer_degrades_by_heartbeat_then_comes_back() {
    secondary_cut_mid_transfer(Cut::Freeze);
}

/// The primary host vanishes mid-transfer (its proxy is killed: the primary VM is
/// cut off and the client port disappears from the bridge), then the secondary is
/// told to fail over: it announces the VM's address where it now faces the client,
/// sends duplicate ACKs on the open connection, takes the connection over, still
/// rewriting, and the download completes with every byte once.
fn primary_cut_failover(v6: bool) {
    let Some(mut lab) = lab_with_services() else {
        return;
    };
    const BULK: usize = 48 * MIB;
    let bulk = download_in_progress(&lab, v6, BULK, 8 * MIB);
    let local = local_addr(&bulk);
    lab.kill_proxy(Vm::Primary).expect("killing the primary");
    let reply = lab
        .control(Vm::Secondary)
        .command("failover", Duration::from_secs(5))
        .expect("failover reply");
    assert_eq!(reply["ok"], true, "{reply}");
    let done = lab
        .control(Vm::Secondary)
        .wait_event_named("failover-done", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.proxy_logs()));
    eprintln!("failover-done: {done}");
    let announced = if v6 {
        &done["neighbour_advertisement"]
    } else {
        &done["gratuitous_arp"]
    };
    let vm_ip = vm_addr(v6, 0).ip().to_string();
    assert!(
        announced
            .as_array()
            .is_some_and(|a| a.iter().any(|x| *x == vm_ip.as_str())),
        "the VM's address {vm_ip} was not announced: {done}"
    );
    let conn = format!("{} -> {local}", vm_addr(v6, BULK_PORT));
    assert!(
        done["dup_ack_connections"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| *x == conn.as_str())),
        "no duplicate ACKs on the open download {conn}: {done}"
    );
    let bulk = finish(&lab, bulk, Duration::from_secs(120));
    assert_bulk(&bulk, BULK, "download across the failover");
    let s = stats(&mut lab, Vm::Secondary);
    assert_eq!(s["failover"], true, "{s}");
    assert!(
        s["frames_in"]["client_port"]["frames"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the client's frames did not reach the secondary's client port: {s}"
    );
    // The secondary now serves new connections too.
    echo_ok(&lab, vm_addr(v6, ECHO_PORT), 4, 10, "echo after failover");
}

#[test]
fn primary_cut_failover_to_secondary() {
    primary_cut_failover(false);
}

#[test]
fn primary_cut_failover_to_secondary_ipv6() {
    primary_cut_failover(true);
}
