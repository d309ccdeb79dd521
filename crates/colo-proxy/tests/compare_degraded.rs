//! `colo-proxy compare` without a secondary: when `secondary_in`'s peer goes away the
//! proxy releases what it held and passes primary output through unchecked
//! (`degraded`), and compares again after the secondary is back (`secondary-back`)
//! and a checkpoint has completed. A `failover` command makes pass-through final.

mod common;

use std::time::{Duration, Instant};

use colo_core::Frame;
use colo_core::sim::{FlowAddrs, TcpSender};
use common::{Control, Proxy, read_for, read_frames, wire, write_split};

fn conn(n: u32) -> TcpSender {
    TcpSender::new(FlowAddrs::v4(n), 10_000 * n, 77)
}

/// Poll `stats` until `pred` holds.
fn wait_stats(ctl: &mut Control, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = ctl.command("stats");
        if pred(&s["stats"]) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start() -> Proxy {
    Proxy::start_compare(&["--control", "unix:{dir}/ctl.sock"])
}

#[test]
fn compare_degraded_while_secondary_is_gone_then_compares_after_checkpoint() {
    let mut proxy = start();
    let mut out = proxy.connect("out.sock");
    let mut ctl = Control::new(proxy.connect("ctl.sock"));
    let mut pri = proxy.connect("pri.sock");
    let sec = proxy.connect("sec.sock");
    ctl.event("peer-connected");
    wait_stats(&mut ctl, "all peers up", |s| {
        s["peers"]["secondary_in"] == true && s["peers"]["primary_in"] == true
    });

    // The primary answers; the secondary has not yet: everything is held.
    let mut a = conn(1);
    let held: Vec<Frame> = vec![a.syn_ack(), a.data(b"first"), a.data(b"second")];
    write_split(&mut pri, &wire(&held, false), 1);
    wait_stats(&mut ctl, "primary frames held", |s| {
        s["held"]["frames"] == held.len()
    });
    assert!(read_for(&mut out, Duration::from_millis(100)).is_empty());

    // The secondary goes away mid-stream: held frames are released.
    drop(sec);
    let ev = ctl.event("degraded");
    assert_eq!(ev["reason"], "secondary_in disconnected", "{ev}");
    assert_eq!(ev["released_held"], held.len(), "{ev}");
    assert_eq!(read_frames(&mut out, held.len(), false).0, held);

    // Later primary frames go out unchecked.
    let later = vec![a.data(b"third"), a.data(b"fourth")];
    write_split(&mut pri, &wire(&later, false), 2);
    assert_eq!(read_frames(&mut out, later.len(), false).0, later);
    let s = ctl.command("stats");
    assert_eq!(s["stats"]["mode"], "pass-through", "{s}");
    assert_eq!(s["stats"]["released"]["unchecked"], later.len(), "{s}");
    assert!(proxy.log_text().contains("degraded mode"));

    // The secondary comes back: still unchecked until a checkpoint.
    let mut sec = proxy.connect("sec.sock");
    ctl.event("secondary-back");
    let s = ctl.command("stats");
    assert_eq!(s["stats"]["mode"], "awaiting-checkpoint", "{s}");
    let mut b = conn(2);
    let unchecked = vec![b.syn_ack(), b.data(b"not compared")];
    write_split(&mut pri, &wire(&unchecked, false), 3);
    assert_eq!(read_frames(&mut out, unchecked.len(), false).0, unchecked);

    // After the checkpoint it compares again: a divergence is detected.
    let r = ctl.command("checkpoint-done");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(ctl.command("stats")["stats"]["mode"], "compare");
    let mut p = conn(3);
    let mut s3 = conn(3);
    let pf = vec![p.syn_ack(), p.data(b"time=1111")];
    let sf = vec![s3.syn_ack(), s3.data(b"time=2222")];
    write_split(&mut pri, &wire(&pf, false), 4);
    write_split(&mut sec, &wire(&sf, false), 5);
    let ev = ctl.event("checkpoint-requested");
    assert_eq!(ev["reason"], "payload", "{ev}");
    // The SYN-ACK matched and went out; the diverging segment is held.
    assert_eq!(read_frames(&mut out, 1, false).0, pf[..1]);
    assert!(read_for(&mut out, Duration::from_millis(100)).is_empty());
    assert!(proxy.stop().success());
}

#[test]
fn compare_failover_releases_everything_for_good() {
    let mut proxy = start();
    let mut out = proxy.connect("out.sock");
    let mut ctl = Control::new(proxy.connect("ctl.sock"));
    let mut pri = proxy.connect("pri.sock");
    let sec = proxy.connect("sec.sock");
    wait_stats(&mut ctl, "all peers up", |s| {
        s["peers"]["secondary_in"] == true && s["peers"]["primary_in"] == true
    });

    let mut a = conn(1);
    let held = vec![a.syn_ack(), a.data(b"held")];
    write_split(&mut pri, &wire(&held, false), 1);
    wait_stats(&mut ctl, "primary frames held", |s| {
        s["held"]["frames"] == held.len()
    });

    let r = ctl.command("failover");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["mode"], "pass-through", "{r}");
    assert_eq!(read_frames(&mut out, held.len(), false).0, held);

    // The secondary leaving and coming back changes nothing any more.
    drop(sec);
    let _sec = proxy.connect("sec.sock");
    wait_stats(&mut ctl, "secondary back", |s| {
        s["peers"]["secondary_in"] == true
    });
    let r = ctl.command("checkpoint-done");
    assert_eq!(r["ok"], true, "{r}");
    let s = ctl.command("stats");
    assert_eq!(s["stats"]["mode"], "pass-through", "{s}");
    assert_eq!(s["stats"]["failover"], true, "{s}");
    let later = vec![a.data(b"after failover")];
    write_split(&mut pri, &wire(&later, false), 2);
    assert_eq!(read_frames(&mut out, later.len(), false).0, later);
    assert!(proxy.stop().success());
}
