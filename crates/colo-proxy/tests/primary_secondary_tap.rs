//! A `tap:` client port with a real Linux stack behind it: `colo-proxy primary`
//! creates the TAP device, the test moves it into a network namespace of its own
//! and sends a UDP datagram from there. The kernel's ARP request crosses the proxy to
//! the primary VM port; the "VM" (the test) answers; the reply crosses back into the
//! namespace, which then sends the queued datagram: both directions, real frames.
//! Needs root and /dev/net/tun; prints SKIPPED otherwise.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use colo_core::Frame;
use colo_core::sim::VM_MAC;
use common::{Control, FramedPeer, Proxy};

/// Removes the namespace on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

fn skip_reason() -> Option<String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (TAP devices and namespaces need CAP_NET_ADMIN)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the ip command (iproute2) is missing".into());
    }
    None
}

const NS_ADDR: [u8; 4] = [10, 213, 0, 1];
const VM_ADDR: [u8; 4] = [10, 213, 0, 2];

fn arp_reply(to_mac: [u8; 6]) -> Frame {
    let mut d = Vec::with_capacity(60);
    d.extend_from_slice(&to_mac);
    d.extend_from_slice(&VM_MAC);
    d.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    d.extend_from_slice(&VM_MAC);
    d.extend_from_slice(&VM_ADDR);
    d.extend_from_slice(&to_mac);
    d.extend_from_slice(&NS_ADDR);
    d.resize(60, 0);
    Frame::ethernet(d)
}

#[test]
fn tap_client_port_carries_real_kernel_frames_both_ways() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let tag = std::process::id() % 100_000;
    let tap = format!("cptap{tag}");
    let ns = Netns(format!("colo-tap-test-{tag}"));
    let tap_port = format!("tap:{tap}");
    let mut primary = Proxy::start_role(
        "primary",
        &[
            "--client",
            &tap_port,
            "--pvm",
            "stream:unix:{dir}/pvm.sock",
            "--link",
            "unix:{dir}/link.sock",
            "--control",
            "unix:{dir}/ctl.sock",
        ],
    );
    let mut ctl = Control::new(primary.connect("ctl.sock"));
    let mut pvm = FramedPeer::new(primary.connect("pvm.sock"));
    // No secondary here: release the primary's output unchecked.
    assert_eq!(ctl.command("failover")["ok"], true);

    ip(&["netns", "add", &ns.0]);
    ip(&["link", "set", "dev", &tap, "netns", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "dev", "lo", "up"]);
    ip(&["-n", &ns.0, "addr", "add", "10.213.0.1/24", "dev", &tap]);
    ip(&["-n", &ns.0, "link", "set", "dev", &tap, "up"]);

    // A datagram to the "VM": the kernel first asks who has 10.213.0.2.
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.0, "bash", "-c"])
        .arg("echo colo-tap-test > /dev/udp/10.213.0.2/9")
        .status()
        .expect("run bash in the namespace");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let request = loop {
        assert!(
            Instant::now() < deadline,
            "no ARP request crossed the proxy"
        );
        let f = pvm.next();
        let d = &f.data[..];
        // Other kernel chatter (IPv6 neighbour discovery, MLD) may come first.
        if d.len() >= 42 && d[12..14] == [8, 6] && d[20..22] == [0, 1] && d[38..42] == VM_ADDR {
            break f;
        }
    };
    let ns_mac: [u8; 6] = request.data[6..12].try_into().unwrap();
    assert_eq!(&request.data[28..32], &NS_ADDR);

    // The VM answers through the proxy into the namespace; the kernel sends the datagram.
    pvm.send(&[arp_reply(ns_mac)]);
    let datagram = loop {
        assert!(Instant::now() < deadline, "the queued datagram never came");
        let f = pvm.next();
        let d = &f.data[..];
        if d.len() >= 34 && d[12..14] == [8, 0] && d[23] == 17 && d[30..34] == VM_ADDR {
            break f;
        }
    };
    assert_eq!(
        &datagram.data[0..6],
        &VM_MAC,
        "addressed with the MAC the reply taught"
    );
    assert!(
        datagram.data.windows(13).any(|w| w == b"colo-tap-test"),
        "the payload"
    );
    let st = ctl.command("stats");
    assert!(
        st["stats"]["client_in"]["frames"].as_u64() >= Some(2),
        "{st}"
    );
    assert!(
        st["stats"]["client"]["written_frames"].as_u64() >= Some(1),
        "{st}"
    );
    assert!(primary.stop().success());
}
