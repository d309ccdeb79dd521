//! `colo-proxy primary` and `colo-proxy secondary` as real processes, linked over a
//! real socket. The test plays the client, the primary VM and the secondary VM on
//! QEMU-framed stream ports, with TCP frames from `colo_core::sim`: the two VMs use
//! different ISNs and segment their output differently, as real guests do.

mod common;

use std::time::Duration;

use colo_core::Frame;
use colo_core::classify::{TcpFlags, classify};
use colo_core::sim::{FlowAddrs, TcpSender, client_tcp as client_seg};
use common::{
    Control, FramedPeer, Proxy, start_primary, start_secondary, wait_for_stats, with_vnet,
};

const ISN_P: u32 = 1_000;
const ISN_S: u32 = 7_000_000;
const CLIENT_ISN: u32 = 50_000;

/// Both proxies and the test's three peers.
struct Lab {
    primary: Proxy,
    secondary: Proxy,
    pctl: Control,
    sctl: Control,
    client: FramedPeer,
    pvm: FramedPeer,
    svm: FramedPeer,
}

fn lab(primary_extra: &[&str], secondary_extra: &[&str]) -> Lab {
    let sdir = tempfile::tempdir().unwrap();
    let link = format!("unix:{}/link.sock,connect", sdir.path().display());
    let mut secondary = start_secondary(sdir, secondary_extra);
    let mut primary = start_primary(tempfile::tempdir().unwrap(), &link, primary_extra);
    let mut pctl = Control::new(primary.connect("ctl.sock"));
    let mut sctl = Control::new(secondary.connect("ctl.sock"));
    let client = FramedPeer::new(primary.connect("client.sock"));
    let pvm = FramedPeer::new(primary.connect("pvm.sock"));
    let svm = FramedPeer::new(secondary.connect("svm.sock"));
    wait_for_stats(&mut pctl, "primary: link and ports up", |s| {
        s["link"]["up"] == true && s["peers"]["client"] == true && s["peers"]["pvm"] == true
    });
    wait_for_stats(&mut sctl, "secondary: link and svm up", |s| {
        s["link"]["up"] == true && s["peers"]["svm"] == true
    });
    Lab {
        primary,
        secondary,
        pctl,
        sctl,
        client,
        pvm,
        svm,
    }
}

fn seq_ack(frame: &Frame) -> (u32, u32) {
    let c = classify(frame.ethernet_bytes());
    let t = c.tcp().expect("a TCP frame");
    (t.seq.0, t.ack.0)
}

/// The client opens a connection to the VM through both proxies; returns the two
/// VMs' senders, each acknowledging the client's SYN.
fn open(lab: &mut Lab, addrs: &FlowAddrs) -> (TcpSender, TcpSender) {
    let syn = client_seg(addrs, CLIENT_ISN, 0, TcpFlags::SYN, b"");
    lab.client.send(std::slice::from_ref(&syn));
    assert_eq!(lab.pvm.next(), syn, "client SYN reaches the primary VM");
    assert_eq!(lab.svm.next(), syn, "and, mirrored, the secondary VM");
    let mut p = TcpSender::new(*addrs, ISN_P, CLIENT_ISN + 1);
    let mut s = TcpSender::new(*addrs, ISN_S, CLIENT_ISN + 1);
    let syn_ack = p.syn_ack();
    lab.pvm.send(std::slice::from_ref(&syn_ack));
    lab.svm.send(&[s.syn_ack()]);
    assert_eq!(
        lab.client.next(),
        syn_ack,
        "the primary's SYN-ACK is released"
    );
    let ack = client_seg(addrs, CLIENT_ISN + 1, ISN_P + 1, TcpFlags::ACK, b"");
    lab.client.send(std::slice::from_ref(&ack));
    assert_eq!(lab.pvm.next(), ack);
    let rewritten = lab.svm.next();
    assert_eq!(
        seq_ack(&rewritten),
        (CLIENT_ISN + 1, ISN_S + 1),
        "the secondary VM sees the ACK in its own sequence space"
    );
    (p, s)
}

fn requested_total(stats: &serde_json::Value) -> u64 {
    stats["checkpoints"]["requested"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

#[test]
fn primary_secondary_identical_output_released_once_in_order() {
    let mut lab = lab(&[], &[]);
    let addrs = FlowAddrs::v4(3);
    let (mut p, mut s) = open(&mut lab, &addrs);
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let pf = p.segments(&body, &[1000, 400]);
    let sf = s.segments(&body, &[700]);
    lab.pvm.send(&pf);
    lab.svm.send(&sf);
    assert_eq!(lab.client.take(pf.len()), pf, "released once, in order");
    assert!(
        lab.client.quiet(Duration::from_millis(300)),
        "nothing twice"
    );
    let st = lab.pctl.command("stats");
    let st = &st["stats"];
    assert_eq!(requested_total(st), 0, "{st}");
    assert_eq!(st["released"]["frames"], 1 + pf.len(), "{st}");
    assert_eq!(st["frames_in"]["secondary"], 1 + sf.len(), "{st}");
    assert_eq!(st["client_in"]["frames"], 2, "{st}");
    assert_eq!(st["mirror"]["mirrored"], 2, "{st}");
    assert_eq!(st["link"]["up"], true, "{st}");
    assert_eq!(st["mode"], "compare", "{st}");
    let ss = lab.sctl.command("stats");
    assert_eq!(
        ss["stats"]["frames_in"]["client_via_link"]["frames"], 2,
        "{ss}"
    );
    assert_eq!(
        ss["stats"]["frames_in"]["svm"]["frames"],
        1 + sf.len(),
        "{ss}"
    );
    assert!(lab.primary.stop().success());
    assert!(lab.secondary.stop().success());
}

#[test]
fn primary_secondary_divergence_requests_checkpoint_then_done_flushes() {
    let mut lab = lab(&[], &[]);
    let addrs = FlowAddrs::v4(4);
    let (mut p, mut s) = open(&mut lab, &addrs);
    let same = p.data(b"hello, ");
    lab.pvm.send(&[same.clone(), p.data(b"time=1111")]);
    lab.svm.send(&[s.data(b"hello, "), s.data(b"time=2222")]);
    let ev = lab.pctl.event("checkpoint-requested");
    assert_eq!(ev["reason"], "payload", "{ev}");
    assert!(ev["flow"].as_str().unwrap().contains("10.0.0.1:80"), "{ev}");
    assert_eq!(lab.client.next(), same, "the matching part is released");
    assert!(
        lab.client.quiet(Duration::from_millis(200)),
        "the divergent frame is held"
    );

    // Checkpoint done on the primary: held output flushed, and forwarded to the
    // secondary's rewriter.
    let done = lab.pctl.command("checkpoint-done");
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["forwarded"], true, "{done}");
    let flushed = lab.client.next();
    assert_eq!(seq_ack(&flushed).0, ISN_P + 1 + 7);
    wait_for_stats(&mut lab.sctl, "checkpoint forwarded", |s| {
        s["checkpoints"]["link"] == 1 && s["checkpoints"]["last_link_epoch"] == 1
    });
    // The same checkpoint told to the secondary too: not applied twice.
    let twin = lab.sctl.command("checkpoint-done");
    assert_eq!(twin["applied"], false, "{twin}");
    let ss = lab.sctl.command("stats");
    assert_eq!(ss["stats"]["checkpoints"]["paired"], 1, "{ss}");
    assert_eq!(ss["stats"]["epoch"], 1, "{ss}");
    assert!(lab.primary.stop().success());
    assert!(lab.secondary.stop().success());
}

#[test]
fn primary_degraded_while_link_is_cut_then_compares_after_checkpoint() {
    let mut lab = lab(&[], &[]);
    let addrs = FlowAddrs::v4(5);
    let (mut p, _s) = open(&mut lab, &addrs);

    // The secondary goes away: primary output is released unchecked.
    assert!(lab.secondary.stop().success());
    let ev = lab.pctl.event("degraded");
    assert_eq!(ev["reason"], "link disconnected", "{ev}");
    let f = p.data(b"unchecked");
    lab.pvm.send(std::slice::from_ref(&f));
    assert_eq!(lab.client.next(), f);
    let st = lab.pctl.command("stats");
    assert_eq!(st["stats"]["mode"], "pass-through", "{st}");
    assert_eq!(st["stats"]["link"]["up"], false, "{st}");
    // Client traffic still reaches the primary VM; the mirror skips it.
    let c = client_seg(&addrs, CLIENT_ISN + 1, p.next_seq, TcpFlags::ACK, b"");
    lab.client.send(std::slice::from_ref(&c));
    assert_eq!(lab.pvm.next(), c);

    // The secondary comes back (same link address): comparing again after a checkpoint.
    let dir = std::mem::replace(&mut lab.secondary.dir, tempfile::tempdir().unwrap());
    let mut secondary = start_secondary(dir, &[]);
    lab.pctl.event("secondary-back");
    let mut sctl = Control::new(secondary.connect("ctl.sock"));
    wait_for_stats(&mut sctl, "link back", |s| s["link"]["up"] == true);
    let st = lab.pctl.command("stats");
    assert_eq!(st["stats"]["mode"], "awaiting-checkpoint", "{st}");
    assert_eq!(st["stats"]["mirror"]["skipped"], 1, "{st}");
    lab.pctl.command("checkpoint-done");
    let st = lab.pctl.command("stats");
    assert_eq!(st["stats"]["mode"], "compare", "{st}");
    assert!(lab.primary.log_text().contains("degraded mode"));
    assert!(lab.primary.stop().success());
    assert!(secondary.stop().success());
}

#[test]
fn secondary_failover_faces_the_client_with_arp_and_dup_acks() {
    let mut lab = lab(&[], &[]);
    let addrs = FlowAddrs::v4(6);
    let (mut p, mut s) = open(&mut lab, &addrs);
    let pf = p.data(b"before failover");
    lab.pvm.send(std::slice::from_ref(&pf));
    lab.svm.send(&[s.data(b"before failover")]);
    assert_eq!(lab.client.next(), pf);

    // The primary host dies; the secondary takes over.
    assert!(lab.primary.stop().success());
    let mut client2 = FramedPeer::new(lab.secondary.connect("client.sock"));
    let reply = lab.sctl.command("failover");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["gratuitous_arp"],
        serde_json::json!(["10.0.0.1"]),
        "{reply}"
    );
    assert_eq!(reply["dup_acks"], 3, "{reply}");
    let ev = lab.sctl.event("failover-done");
    assert_eq!(ev["dup_acks"], 3, "{ev}");

    let arp = client2.next();
    let d = &arp.data[..];
    assert_eq!(&d[12..14], &[8, 6], "gratuitous ARP first");
    assert_eq!(&d[28..32], &[10, 0, 0, 1]);
    assert_eq!(&d[38..42], &[10, 0, 0, 1]);
    assert_eq!(&d[0..6], &[0xff; 6]);
    let dups = client2.take(3);
    assert!(dups.iter().all(|f| f == &dups[0]), "three identical ACKs");
    assert_eq!(
        seq_ack(&dups[0]),
        (p.next_seq, CLIENT_ISN + 1),
        "in the client's view: the primary's sequence space"
    );
    let t = classify(dups[0].ethernet_bytes());
    let t = t.tcp().unwrap();
    assert!(t.flags.contains(TcpFlags::ACK) && t.payload.is_empty());

    // The secondary VM's output now goes to the client, rewritten.
    lab.svm.send(&[s.data(b"after")]);
    let after = client2.next();
    assert_eq!(
        seq_ack(&after).0,
        p.next_seq,
        "rewritten into the primary's space"
    );
    // And the client's frames reach the secondary VM through the rewriter.
    let c = client_seg(&addrs, CLIENT_ISN + 1, p.next_seq + 5, TcpFlags::ACK, b"");
    client2.send(&[c]);
    assert_eq!(seq_ack(&lab.svm.next()), (CLIENT_ISN + 1, s.next_seq));
    let ss = lab.sctl.command("stats");
    assert_eq!(ss["stats"]["failover"], true, "{ss}");
    assert_eq!(ss["stats"]["frames_in"]["client_port"]["frames"], 1, "{ss}");
    assert!(lab.secondary.stop().success());
}

#[test]
fn secondary_failover_without_client_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sec = Proxy::start_role_in(
        "secondary",
        dir,
        &[
            "--svm",
            "stream:unix:{dir}/svm.sock",
            "--link",
            "unix:{dir}/link.sock",
            "--control",
            "unix:{dir}/ctl.sock",
        ],
    );
    let mut ctl = Control::new(sec.connect("ctl.sock"));
    let r = ctl.command("failover");
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("--client"), "{r}");
    assert!(sec.stop().success());
}

#[test]
fn primary_secondary_carry_vnet_headers_end_to_end() {
    let sdir = tempfile::tempdir().unwrap();
    let link = format!("unix:{}/link.sock,connect", sdir.path().display());
    let mut secondary = start_secondary(sdir, &["--vnet-hdr-support"]);
    let mut primary = start_primary(
        tempfile::tempdir().unwrap(),
        &link,
        &["--vnet-hdr-support=on"],
    );
    let mut pctl = Control::new(primary.connect("ctl.sock"));
    let mut client = FramedPeer::with_vnet(primary.connect("client.sock"), true);
    let mut pvm = FramedPeer::with_vnet(primary.connect("pvm.sock"), true);
    let mut svm = FramedPeer::with_vnet(secondary.connect("svm.sock"), true);
    wait_for_stats(&mut pctl, "link up", |s| s["link"]["up"] == true);
    let addrs = FlowAddrs::v4(8);
    let syn = with_vnet(client_seg(&addrs, CLIENT_ISN, 0, TcpFlags::SYN, b""), true);
    client.send(std::slice::from_ref(&syn));
    assert_eq!(pvm.next(), syn, "vnet header kept to the primary VM");
    assert_eq!(svm.next(), syn, "and across the link to the secondary VM");
    let mut p = TcpSender::new(addrs, ISN_P, CLIENT_ISN + 1);
    let mut s = TcpSender::new(addrs, ISN_S, CLIENT_ISN + 1);
    let syn_ack = with_vnet(p.syn_ack(), true);
    pvm.send(std::slice::from_ref(&syn_ack));
    svm.send(&[with_vnet(s.syn_ack(), true)]);
    let got = client.next();
    assert_eq!(got, syn_ack, "released with its vnet header");
    assert_eq!(got.vnet_hdr_len, 10);
    assert!(primary.stop().success());
    assert!(secondary.stop().success());
}
