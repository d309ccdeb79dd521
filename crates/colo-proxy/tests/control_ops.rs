//! Operator commands on a running proxy's control socket: `set-log-level` changes
//! the tracing filter at run time, and `set-flow-policy` / `get-flow-policy` /
//! `--pass-port` let known-nondeterministic flows through without comparing.

mod common;

use std::time::{Duration, Instant};

use colo_core::sim::{FlowAddrs, Towards, udp_frame};
use common::{Control, Proxy, compare_args, ctl, ctl_raw, read_for, read_frames, wire};
use serde_json::json;

/// Wait until the proxy's log contains `needle`.
fn wait_log(proxy: &Proxy, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if proxy.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn set_log_level_changes_the_filter_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start_logged(
        "warn",
        "compare",
        dir,
        &compare_args(&["--control", "unix:{dir}/ctl.sock"]),
    );
    let mut c = Control::new(proxy.connect("ctl.sock"));
    // At warn, the debug line for a control client is not written.
    let stats = c.command("stats");
    assert_eq!(stats["ok"], true);
    assert!(!proxy.log_text().contains("control client connected"));

    let r = c.request(&json!({"v":1,"cmd":"set-log-level","filter":"debug","tag":"a"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["old"], "warn", "{r}");
    assert_eq!(r["new"], "debug", "{r}");
    assert_eq!(r["tag"], "a");
    drop(proxy.connect("ctl.sock"));
    assert!(
        wait_log(&proxy, "control client connected"),
        "debug lines are written now:\n{}",
        proxy.log_text()
    );

    // A bad directive is refused and the filter stays.
    let r = c.request(&json!({"v":1,"cmd":"set-log-level","filter":"colo_proxy=loud"}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("invalid filter"),
        "{r}"
    );
    let r = c.request(&json!({"v":1,"cmd":"set-log-level"}));
    assert_eq!(r["ok"], false, "{r}");

    // The same through `colo-proxy ctl`.
    let (ok, r) = ctl(
        &proxy.path("ctl.sock"),
        &["set-log-level", "warn,colo_proxy=info"],
    );
    assert!(ok, "{r}");
    assert_eq!(r["old"], "debug", "the bad directive changed nothing: {r}");
    assert_eq!(r["new"], "warn,colo_proxy=info", "{r}");
    let (ok, r) = ctl(&proxy.path("ctl.sock"), &["set-log-level", "x=y=z"]);
    assert!(!ok && r["ok"] == false, "{r}");
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

#[test]
fn pass_policy_releases_without_comparing_and_is_listed_and_counted() {
    let mut proxy =
        Proxy::start_compare(&["--control", "{dir}/ctl.sock", "--pass-port", "udp:123"]);
    let mut c = Control::new(proxy.connect("ctl.sock"));
    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut out = proxy.connect("out.sock");
    let ntp = FlowAddrs {
        vm_port: 123,
        ..FlowAddrs::v4(1)
    };
    let mdns = FlowAddrs {
        vm_port: 5353,
        ..FlowAddrs::v4(2)
    };

    // NTP (pass from the start): released with no secondary output at all.
    let reply = udp_frame(&ntp, Towards::Client, b"time=1111");
    std::io::Write::write_all(&mut pri, &wire(std::slice::from_ref(&reply), false)).unwrap();
    let (got, _) = read_frames(&mut out, 1, false);
    assert_eq!(got, vec![reply]);
    // The secondary's different reply is discarded: no checkpoint, nothing out.
    let other = udp_frame(&ntp, Towards::Client, b"time=2222");
    std::io::Write::write_all(&mut sec, &wire(&[other], false)).unwrap();

    // mDNS is compared: held until a policy lets it through.
    let held = udp_frame(&mdns, Towards::Client, b"printer.local");
    std::io::Write::write_all(&mut pri, &wire(std::slice::from_ref(&held), false)).unwrap();
    assert!(read_for(&mut out, Duration::from_millis(200)).is_empty());
    let (ok, r) = ctl(
        &proxy.path("ctl.sock"),
        &["set-flow-policy", "udp:5353", "pass"],
    );
    assert!(ok, "{r}");
    assert_eq!(r["before"], "compare", "{r}");
    assert_eq!(r["released_held"], 1, "{r}");
    let (got, _) = read_frames(&mut out, 1, false);
    assert_eq!(got, vec![held]);

    let r = c.command("get-flow-policy");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["default"], "compare");
    let rules = r["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{r}");
    assert_eq!(rules[0]["match"], "udp:123");
    assert_eq!(rules[0]["policy"], "pass");
    assert_eq!(rules[0]["released_frames"], 1, "{r}");
    assert_eq!(rules[0]["discarded_frames"], 1, "{r}");
    assert_eq!(rules[1]["match"], "udp:5353");

    let s = c.command("stats");
    assert_eq!(s["stats"]["released"]["by_policy"], 2, "{s}");
    assert_eq!(s["stats"]["dropped"]["secondary"]["policy"], 1, "{s}");
    assert_eq!(
        s["stats"]["checkpoints"]["requested"]["datagram"], 0,
        "no checkpoint for a passed flow: {s}"
    );
    assert_eq!(s["stats"]["flow_policies"].as_array().unwrap().len(), 2);

    // Back to compare: the next mDNS reply waits for the secondary again.
    let r = c.request(&json!({"v":1,"cmd":"set-flow-policy",
        "match":{"proto":"udp","port":5353},"policy":"compare"}));
    assert_eq!(r["before"], "pass", "{r}");
    let again = udp_frame(&mdns, Towards::Client, b"again");
    std::io::Write::write_all(&mut pri, &wire(std::slice::from_ref(&again), false)).unwrap();
    assert!(read_for(&mut out, Duration::from_millis(200)).is_empty());
    std::io::Write::write_all(&mut sec, &wire(std::slice::from_ref(&again), false)).unwrap();
    let (got, _) = read_frames(&mut out, 1, false);
    assert_eq!(got, vec![again]);

    // Refusals say what is accepted.
    let r = c.request(&json!({"v":1,"cmd":"set-flow-policy","match":"udp:53","policy":"drop"}));
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("compare or pass"),
        "{r}"
    );
    let (code, _, stderr) = ctl_raw(&proxy.path("ctl.sock"), &["set-flow-policy", "udp:53"]);
    assert_eq!(code, Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("set-flow-policy PROTO:[ADDR:]PORT pass|compare"),
        "{stderr}"
    );
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

#[test]
fn rewrite_refuses_flow_policy_but_sets_log_level() {
    let mut proxy = Proxy::start_rewrite(
        "unix:{dir}/from_out.sock",
        &["--control", "unix:{dir}/ctl.sock"],
    );
    let mut c = Control::new(proxy.connect("ctl.sock"));
    let r = c.command("get-flow-policy");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("rewrite role has no flow policy"),
        "{r}"
    );
    let r = c.request(&json!({"v":1,"cmd":"set-log-level","filter":"info"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["old"], "info,colo_proxy=debug", "{r}");
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}
