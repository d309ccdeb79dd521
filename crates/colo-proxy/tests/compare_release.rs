//! `colo-proxy compare` on real Unix sockets: identical output is released in order
//! with its framing, a divergence asks for a checkpoint on the control socket and
//! `checkpoint-done` releases what was held.

mod common;

use std::time::Duration;

use colo_core::sim::{FlowAddrs, TcpSender};
use common::{Control, Proxy, read_for, read_frames, traffic, wire, with_vnet, write_split};

fn identical_frames_are_released_in_order(vnet: bool) {
    let extra: &[&str] = if vnet { &["--vnet-hdr-support"] } else { &[] };
    let mut proxy = Proxy::start_compare(extra);
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut out = proxy.connect("out.sock");

    let frames = traffic(6, 8, vnet);
    let bytes = wire(&frames, vnet);
    let sec_bytes = bytes.clone();
    let t = std::thread::spawn(move || write_split(&mut sec, &sec_bytes, 2));
    write_split(&mut pri, &bytes, 1);
    t.join().unwrap();

    let (got, raw) = read_frames(&mut out, frames.len(), vnet);
    assert_eq!(got.len(), frames.len());
    assert_eq!(got, frames, "released frames differ from the primary's");
    assert_eq!(raw, bytes, "released bytes keep the input framing");
    assert!(
        read_for(&mut out, Duration::from_millis(200)).is_empty(),
        "nothing extra"
    );
    assert!(
        proxy.stop().success(),
        "clean exit on SIGTERM:\n{}",
        proxy.log_text()
    );
    assert!(
        !proxy.path("pri.sock").exists(),
        "socket files removed on exit"
    );
}

#[test]
fn compare_identical_frames_released_in_order() {
    identical_frames_are_released_in_order(false);
}

#[test]
fn compare_identical_frames_released_in_order_vnet() {
    identical_frames_are_released_in_order(true);
}

#[test]
fn compare_divergence_requests_checkpoint_and_done_releases() {
    for vnet in [false, true] {
        let mut extra = vec!["--control", "unix:{dir}/ctl.sock"];
        if vnet {
            extra.push("--vnet-hdr-support=on");
        }
        let mut proxy = Proxy::start_compare(&extra);
        let mut ctl = Control::new(proxy.connect("ctl.sock"));
        let mut pri = proxy.connect("pri.sock");
        let mut sec = proxy.connect("sec.sock");
        let mut out = proxy.connect("out.sock");

        let addrs = FlowAddrs::v4(7);
        let mut p = TcpSender::new(addrs, 100, 900);
        let mut s = TcpSender::new(addrs, 100, 900);
        let pf: Vec<_> = [p.syn_ack(), p.data(b"hello world"), p.data(b"time=1111")]
            .into_iter()
            .map(|f| with_vnet(f, vnet))
            .collect();
        let sf: Vec<_> = [s.syn_ack(), s.data(b"hello world"), s.data(b"time=2222")]
            .into_iter()
            .map(|f| with_vnet(f, vnet))
            .collect();
        write_split(&mut pri, &wire(&pf, vnet), 3);
        write_split(&mut sec, &wire(&sf, vnet), 4);

        let ev = ctl.event("checkpoint-requested");
        assert_eq!(ev["v"], 1);
        assert_eq!(ev["id"], 1);
        assert_eq!(ev["reason"], "payload");
        assert!(ev["flow"].as_str().unwrap().contains("10.0.0.1"), "{ev}");
        assert!(ev["detail"].as_str().unwrap().contains("1111"), "{ev}");

        // The matching frames went out; the diverging one is held.
        let (got, _) = read_frames(&mut out, 2, vnet);
        assert_eq!(got, pf[..2]);
        assert!(
            read_for(&mut out, Duration::from_millis(300)).is_empty(),
            "held until the checkpoint"
        );
        let stats = ctl.command("stats");
        assert_eq!(stats["ok"], true, "{stats}");
        assert_eq!(stats["stats"]["held"]["frames"], 1, "{stats}");
        assert_eq!(
            stats["stats"]["checkpoints"]["requested"]["payload"], 1,
            "{stats}"
        );

        let done = ctl.command("checkpoint-done");
        assert_eq!(done, serde_json::json!({"v":1,"ok":true,"epoch":1}));
        let (got, _) = read_frames(&mut out, 1, vnet);
        assert_eq!(got, pf[2..]);

        let bad = ctl.command("nonsense");
        assert_eq!(bad["ok"], false);
        assert!(
            bad["error"].as_str().unwrap().contains("unknown cmd"),
            "{bad}"
        );
        assert!(
            proxy.log_text().contains("checkpoint requested"),
            "{}",
            proxy.log_text()
        );
        assert!(proxy.stop().success());
    }
}

#[test]
fn compare_ctl_subcommand_talks_to_control_socket() {
    let mut proxy = Proxy::start_compare(&["--control", "{dir}/ctl.sock"]);
    drop(proxy.connect("ctl.sock"));
    let ctl = proxy.path("ctl.sock").display().to_string();
    let run = |cmd: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
            .args(["ctl", "--control", &format!("unix:{ctl}"), cmd])
            .output()
            .unwrap()
    };
    let out = run("stats");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["stats"]["epoch"], 0);
    let out = run("checkpoint-done");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["epoch"], 1);
    assert!(proxy.stop().success());
}
