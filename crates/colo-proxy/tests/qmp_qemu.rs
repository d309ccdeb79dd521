//! The QMP checkpoint driver against real QEMU monitors (Debian's `qemu-system-x86_64`,
//! `-M none`, no guest): `colo-proxy compare --qmp-primary/--qmp-secondary` connects,
//! negotiates capabilities, learns `x-checkpoint-delay`, answers a divergence with
//! `migrate-set-parameters` (which QEMU accepts) and asks again while no checkpoint
//! starts; when the primary QEMU dies it does not fail over by itself (no COLO ran, the
//! secondary is no copy), and the `failover` command sends `x-colo-lost-heartbeat` to
//! the secondary. The live COLO pair is in
//! `tests/tests/real_guests.rs`. Without QEMU: `SKIPPED: ...`.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use colo_core::sim::{FlowAddrs, Towards, udp_frame};
use common::{Control, Proxy, wire};
use serde_json::Value;

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_qemu(sock: &Path) -> Qemu {
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "none", "-display", "none", "-nodefaults", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "QEMU never created {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Qemu(child)
}

/// Poll `stats` until `pred` holds on its `qmp` object (10 s).
fn wait_qmp(ctl: &mut Control, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = ctl.command("stats");
        let q = st["stats"]["qmp"].clone();
        if pred(&q) {
            return q;
        }
        assert!(Instant::now() < deadline, "never {what}: {q}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn qmp_driver_asks_reasks_and_fails_over_with_real_qemu() {
    if !qemu_available() {
        println!("SKIPPED: qemu-system-x86_64 not found (apt-get install qemu-system-x86)");
        return;
    }
    let qdir = tempfile::tempdir().unwrap();
    let pq = qdir.path().join("primary.qmp");
    let sq = qdir.path().join("secondary.qmp");
    let mut primary = start_qemu(&pq);
    let _secondary = start_qemu(&sq);

    let pq_arg = format!("unix:{}", pq.display());
    let sq_arg = format!("unix:{}", sq.display());
    let mut proxy = Proxy::start_compare(&[
        "--control",
        "unix:{dir}/ctl.sock",
        "--qmp-primary",
        &pq_arg,
        "--qmp-secondary",
        &sq_arg,
        "--checkpoint-reask",
        "100",
        "--heartbeat-timeout",
        "400",
    ]);
    let mut ctl = Control::new(proxy.connect("ctl.sock"));
    let q = wait_qmp(&mut ctl, "both monitors up", |q| {
        q["primary_up"] == true && q["secondary_up"] == true
    });
    // QEMU 7.2's default x-checkpoint-delay, read with query-migrate-parameters.
    assert_eq!(q["checkpoint_delay_ms"], 20000, "{q}");
    assert_eq!(q["asks"], 0);

    // Two different datagrams: a divergence, so the engine wants a checkpoint.
    let addrs = FlowAddrs::v4(1000);
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let _out = proxy.connect("out.sock");
    pri.write_all(&wire(
        &[udp_frame(&addrs, Towards::Client, b"primary")],
        false,
    ))
    .unwrap();
    sec.write_all(&wire(
        &[udp_frame(&addrs, Towards::Client, b"second!")],
        false,
    ))
    .unwrap();
    ctl.event("checkpoint-requested");
    // No COLO here, so no STOP follows: the driver keeps asking; QEMU accepts each.
    let q = wait_qmp(&mut ctl, "re-asked", |q| q["reasks"].as_u64() >= Some(2));
    assert_eq!(q["errors"], 0, "QEMU refused migrate-set-parameters: {q}");
    assert_eq!(q["pending"], true);
    assert_eq!(q["started"], 0);

    // The primary QEMU dies. No COLO ran here (no checkpoint), so the secondary is no
    // copy and the proxy does not fail over by itself, heartbeat or not...
    let _ = primary.0.kill();
    let _ = primary.0.wait();
    wait_qmp(&mut ctl, "primary down", |q| q["primary_up"] == false);
    std::thread::sleep(Duration::from_millis(800));
    let q = ctl.command("stats")["stats"]["qmp"].clone();
    assert_eq!(
        q["failed_over"],
        Value::Null,
        "auto failover before COLO ran: {q}"
    );
    // ...but the operator's failover picks the secondary, the survivor.
    let reply = ctl.command("failover");
    assert_eq!(reply["survivor"], "secondary", "{reply}");
    let ev = ctl.event("failover");
    assert_eq!(ev["survivor"], "secondary", "{ev}");
    assert_eq!(ev["cause"], "command", "{ev}");
    // x-colo-lost-heartbeat reached the secondary QEMU, which is not in COLO mode and
    // says so: one error reply, proof that the command went out.
    let q = wait_qmp(&mut ctl, "lost-heartbeat answered", |q| {
        q["errors"].as_u64() >= Some(1)
    });
    assert_eq!(q["failed_over"], "secondary");
    let st = ctl.command("stats");
    assert_eq!(st["stats"]["mode"], "pass-through");
    assert!(proxy.alive());
}

/// `colo-proxy primary` runs the same driver (its QMP heartbeat option is
/// `--qmp-heartbeat-timeout`): it connects to both monitors, learns the delay, and its
/// `failover` command sends `x-colo-lost-heartbeat` to the secondary QEMU.
#[test]
fn primary_role_drives_real_qemu_monitors() {
    if !qemu_available() {
        println!("SKIPPED: qemu-system-x86_64 not found (apt-get install qemu-system-x86)");
        return;
    }
    let qdir = tempfile::tempdir().unwrap();
    let pq = qdir.path().join("primary.qmp");
    let sq = qdir.path().join("secondary.qmp");
    let mut primary = start_qemu(&pq);
    let _secondary = start_qemu(&sq);
    let pq_arg = format!("unix:{}", pq.display());
    let sq_arg = format!("unix:{}", sq.display());
    let mut proxy = common::start_primary(
        tempfile::tempdir().unwrap(),
        "unix:{dir}/link.sock",
        &[
            "--qmp-primary",
            &pq_arg,
            "--qmp-secondary",
            &sq_arg,
            "--qmp-heartbeat-timeout",
            "400",
            "--heartbeat-timeout",
            "3000",
        ],
    );
    let mut ctl = Control::new(proxy.connect("ctl.sock"));
    let q = wait_qmp(&mut ctl, "both monitors up", |q| {
        q["primary_up"] == true && q["secondary_up"] == true
    });
    assert_eq!(q["checkpoint_delay_ms"], 20000, "{q}");
    // The primary QEMU dies (no COLO ran: no failover by itself); the operator's
    // failover then picks the secondary.
    let _ = primary.0.kill();
    let _ = primary.0.wait();
    wait_qmp(&mut ctl, "primary down", |q| q["primary_up"] == false);
    let reply = ctl.command("failover");
    assert_eq!(reply["survivor"], "secondary", "{reply}");
    let ev = ctl.event("failover");
    assert_eq!(ev["cause"], "command", "{ev}");
    // The secondary QEMU (not in COLO) refuses x-colo-lost-heartbeat: proof it went out.
    let q = wait_qmp(&mut ctl, "lost-heartbeat answered", |q| {
        q["errors"].as_u64() >= Some(1)
    });
    assert_eq!(q["failed_over"], "secondary");
    assert!(proxy.alive());
}
