//! QEMU 7.2's own netfilters (Debian's `qemu-system-x86`) producing and consuming
//! the framing of `colo-proxy compare` and `colo-proxy rewrite`: `filter-mirror`
//! and `filter-redirector` outdevs feed colo-proxy's inputs, and a
//! `filter-redirector` indev takes colo-proxy's output back into a netdev.
//!
//! The tests, each with and without vnet headers: (1) a mirror and a redirector feed
//! compare's inputs; (2) the primary host's redirectors around compare, client to
//! PVM and back; (3) rewrite between the secondary host's mirror and redirectors;
//! (4) both hosts at once, compare and rewrite together.
//!
//! # Wiring (one QEMU, `-M none`, no guest, no NIC)
//!
//! ```text
//! test as PVM ══ stream netdev pvm ─ hub port ┐       ┌ hub port ─ stream netdev hn0 ══ test as client
//!                                             hub 0 ──┘        (the primary's tap)
//! test as SVM ══ stream netdev svm ─ hub port ┐       ┌ hub port ─ stream netdev hn1 ══ test
//!                                             hub 1 ──┘        (the secondary's tap)
//! ```
//!
//! - Every netdev is `-netdev stream,server=off,addr.type=unix` connecting to a
//!   listener of this test, which writes and reads QEMU's stream framing (be32
//!   length, then the frame; never a vnet header length).
//! - A netdev without a peer drops what it sends before any filter runs
//!   (`qemu_send_packet` returns early), and `-M none` has no NIC to be the peer; so
//!   each netdev gets a `-netdev hubport,hubid=N,netdev=X` as its peer, and a hub
//!   forwards what one port sends to all its other ports. A frame the test writes
//!   into `pvm` is therefore sent by `pvm` (its `queue=tx` filters run), goes through
//!   hub 0 and is received by `hn0` (its `queue=rx` filters run), which writes it to
//!   the test's `hn0` socket: the path of PVM output to the client.
//! - A `filter-redirector` indev with `queue=rx` injects into its netdev as if the
//!   hub had delivered the frame (it leaves on that netdev's socket); with
//!   `queue=tx` it injects as if the netdev had sent it (it crosses the hub).
//! - Filter order matters: on one netdev `queue=rx` filters run newest first, and a
//!   frame an indev injects passes only the filters created before that indev. The
//!   indev redirector (`redire0`, compare output to the client) must therefore be
//!   created before the outdev redirector (`redire1`, PVM output to compare) on the
//!   same netdev; the other way round QEMU 7.2 steals the released frames again and
//!   loops them back into compare (seen by experiment).
//! - Socket netdevs have `vnet_hdr_len` 0 (only a tap under virtio-net sets it), so
//!   QEMU's filters with `vnet_hdr_support=on` write a be32 0 after the length;
//!   colo-proxy takes it and writes it back unchanged, and the indev redirector
//!   consumes it.
//! - The barrier before the test sends is QMP's `info network` showing every stream
//!   netdev connected: QMP answers only once the main loop runs (after every filter
//!   has been created), and a client stream netdev keeps its link down, silently
//!   dropping what the hub delivers to it, until the main loop has handled its
//!   connect.
//!
//! Without QEMU (or with one older than 7.2, which has no `-netdev stream`) each
//! test prints `SKIPPED: <reason>` and returns.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use colo_core::Frame;
use colo_core::classify::TcpFlags;
use colo_core::sim::{FlowAddrs, TcpSender, Towards, udp_frame};
use common::{
    C_ISN, Control, P_ISN, Proxy, QEMU, Qemu, S_ISN, qemu_path, read_for, read_frames, seg,
    wait_for_paths, wire,
};

/// How long a socket must stay silent to count as "nothing more came".
const QUIET: Duration = Duration::from_millis(300);

/// What QEMU is given besides its fixed options.
struct Wiring {
    /// Stream netdevs: name and the hub their hub port joins.
    netdevs: &'static [(&'static str, u32)],
    /// Socket chardevs: id and the path of the colo-proxy endpoint they connect to.
    chardevs: Vec<(&'static str, PathBuf)>,
    /// Netfilter objects, in creation order.
    filters: Vec<String>,
}

/// The four netdevs of the module comment.
const NETDEVS: &[(&str, u32)] = &[("pvm", 0), ("hn0", 0), ("svm", 1), ("hn1", 1)];

/// A running QEMU with the test's ends of its stream netdevs.
struct Lab {
    qemu: Qemu,
    nets: HashMap<&'static str, UnixStream>,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn start(bin: &str, wiring: &Wiring) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = Vec::new();
        let mut listeners = Vec::new();
        for &(name, hub) in wiring.netdevs {
            let path = dir.path().join(format!("{name}.sock"));
            let listener = UnixListener::bind(&path).expect("bind netdev socket");
            listeners.push((name, path.clone(), listener));
            args.push("-netdev".into());
            args.push(format!(
                "stream,id={name},server=off,addr.type=unix,addr.path={}",
                path.display()
            ));
            args.push("-netdev".into());
            args.push(format!("hubport,id={name}-port,hubid={hub},netdev={name}"));
        }
        for (id, path) in &wiring.chardevs {
            args.push("-chardev".into());
            args.push(format!("socket,id={id},path={}", path.display()));
        }
        for filter in &wiring.filters {
            args.push("-object".into());
            args.push(filter.clone());
        }
        let qmp = dir.path().join("qmp.sock");
        args.push("-qmp".into());
        args.push(format!("unix:{},server=on,wait=off", qmp.display()));
        let mut qemu = Qemu::start(bin, &args, dir.path().join("qemu.log"));
        let mut nets = HashMap::new();
        let mut paths = Vec::new();
        for (name, path, listener) in &listeners {
            nets.insert(*name, qemu.accept(listener, name));
            paths.push((*name, path.clone()));
        }
        qemu.wait_ready(&qmp, &paths);
        Self {
            qemu,
            nets,
            _dir: dir,
        }
    }

    fn net(&mut self, name: &str) -> &mut UnixStream {
        self.nets.get_mut(name).expect("netdev of the wiring")
    }

    /// Write `frames` into netdev `name` as its far end.
    fn send(&mut self, name: &str, frames: &[Frame]) {
        self.net(name)
            .write_all(&wire(frames, false))
            .expect("write into a netdev");
    }

    /// Read `n` frames netdev `name` sends out: the frames and the raw bytes.
    fn recv(&mut self, name: &str, n: usize) -> (Vec<Frame>, Vec<u8>) {
        read_frames(self.net(name), n, false)
    }

    /// Whether netdev `name` sends nothing for [`QUIET`].
    fn quiet(&mut self, name: &str) -> bool {
        read_for(self.net(name), QUIET).is_empty()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.qemu.assert_running();
        }
    }
}

/// The QEMU binary, if it is installed and has `-netdev stream` (QEMU 7.2 and later);
/// otherwise prints why the test is skipped.
fn qemu_with_stream_netdev() -> Option<String> {
    let Some(bin) = qemu_path() else {
        println!("SKIPPED: {QEMU} not found");
        return None;
    };
    let out = std::process::Command::new(&bin)
        .args(["-netdev", "help"])
        .output()
        .expect("run qemu -netdev help");
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "stream")
    {
        println!("SKIPPED: {bin} has no -netdev stream (needs QEMU 7.2 or later)");
        return None;
    }
    Some(bin)
}

/// The netfilters of QEMU's documented COLO setup, by their ids there (see the
/// module comment), without the vnet option. `m0` on the primary's tap copies the
/// client's traffic to the secondary; `M0_PVM` is the same mirror on the PVM's
/// output instead.
const M0: &str = "filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0";
const M0_PVM: &str = "filter-mirror,id=m0,netdev=pvm,queue=tx,outdev=compare0";
const REDIRE0: &str = "filter-redirector,id=redire0,netdev=hn0,queue=rx,indev=compare_out";
const REDIRE1: &str = "filter-redirector,id=redire1,netdev=hn0,queue=rx,outdev=compare0";
const F1: &str = "filter-redirector,id=f1,netdev=hn1,queue=tx,indev=red0";
const F2: &str = "filter-redirector,id=f2,netdev=hn1,queue=rx,outdev=red1";

/// `specs` in creation order, each with `vnet_hdr_support=on` when `vnet`.
fn filters(specs: &[&str], vnet: bool) -> Vec<String> {
    let v = if vnet { ",vnet_hdr_support=on" } else { "" };
    specs.iter().map(|spec| format!("{spec}{v}")).collect()
}

/// The chardevs to `colo-proxy compare`'s primary input and outdev.
fn compare_chardevs(compare: &Proxy) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("compare0", compare.path("pri.sock")),
        ("compare_out", compare.path("out.sock")),
    ]
}

/// The chardevs to `colo-proxy rewrite`'s to-secondary-in, to-secondary-out and
/// from-secondary-in.
fn rewrite_chardevs(rewrite: &Proxy) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("mirror0", rewrite.path("to_in.sock")),
        ("red0", rewrite.path("to_out.sock")),
        ("red1", rewrite.path("from_in.sock")),
    ]
}

/// VM output over every kind the issue names: TCP and UDP over IPv4 and IPv6, and
/// 802.1Q-tagged TCP and UDP, interleaved.
fn vm_output() -> Vec<Frame> {
    let tagged = |n| FlowAddrs {
        vlan: Some(42),
        ..FlowAddrs::v4(n)
    };
    let mut t4 = TcpSender::new(FlowAddrs::v4(1), 1_000, 5_000);
    let mut t6 = TcpSender::new(FlowAddrs::v6(2), 2_000, 6_000);
    let mut tv = TcpSender::new(tagged(3), 3_000, 7_000);
    let frames = vec![
        t4.syn_ack(),
        t6.syn_ack(),
        tv.syn_ack(),
        t4.data(b"HTTP/1.1 200 OK\r\n\r\nover IPv4"),
        udp_frame(&FlowAddrs::v4(4), Towards::Client, b"datagram over IPv4"),
        t6.data(b"HTTP/1.1 200 OK\r\n\r\nover IPv6"),
        udp_frame(&FlowAddrs::v6(5), Towards::Client, b"datagram over IPv6"),
        tv.data(b"HTTP/1.1 200 OK\r\n\r\ntagged"),
        udp_frame(&tagged(6), Towards::Client, b"tagged datagram"),
        t4.data(&[b'4'; 1400]),
        t6.data(&[b'6'; 1400]),
        t4.fin(),
        t6.fin(),
        tv.fin(),
    ];
    assert!(
        frames.iter().any(|f| f.data[12..14] == [0x81, 0x00]),
        "the traffic has an 802.1Q-tagged frame"
    );
    frames
}

/// `colo-proxy compare` listening on `pri.sock`, `sec.sock`, `out.sock` and the
/// control socket `ctl.sock`, with its control socket connected.
fn start_compare(vnet: bool) -> (Proxy, Control) {
    let mut extra = vec!["--control", "unix:{dir}/ctl.sock"];
    if vnet {
        extra.push("--vnet-hdr-support");
    }
    let mut proxy = Proxy::start_compare(&extra);
    wait_for_paths(
        &mut proxy,
        &["pri.sock", "sec.sock", "out.sock", "ctl.sock"],
    );
    let ctl = Control::new(proxy.connect("ctl.sock"));
    (proxy, ctl)
}

/// Both VMs send a UDP datagram over IPv6 that reads differently on the secondary
/// (the SVM's first): the divergence asks for a checkpoint on the control socket.
/// Returns the primary's frame, which is held until `checkpoint-done`.
fn diverge(lab: &mut Lab, ctl: &mut Control) -> Frame {
    let addrs = FlowAddrs::v6(7);
    let pri = udp_frame(&addrs, Towards::Client, b"reading=1111");
    let sec = udp_frame(&addrs, Towards::Client, b"reading=2222");
    lab.send("svm", &[sec]);
    lab.send("pvm", std::slice::from_ref(&pri));
    let ev = ctl.event("checkpoint-requested");
    println!("checkpoint event: {ev}");
    assert_eq!(ev["v"], 1, "{ev}");
    assert_eq!(ev["reason"], "datagram", "{ev}");
    assert_eq!(
        ev["flow"], "udp [fd00::1]:80 <-> [fd00::7]:1031",
        "the IPv6 datagram diverged: {ev}"
    );
    pri
}

/// (1) filter-mirror (PVM output, `queue=tx` on `pvm`) feeds primary_in and
/// filter-redirector (SVM output, `queue=rx` on `hn1`) feeds secondary_in; identical
/// traffic comes out of colo-proxy's outdev exactly once, in order, with the
/// framing of the input; a divergent datagram asks for a checkpoint.
fn mirror_and_redirector_feed_compare(vnet: bool) {
    let Some(bin) = qemu_with_stream_netdev() else {
        return;
    };
    let (mut proxy, mut ctl) = start_compare(vnet);
    let mut out = proxy.connect("out.sock");
    let mut lab = Lab::start(
        &bin,
        &Wiring {
            netdevs: NETDEVS,
            chardevs: vec![
                ("compare0", proxy.path("pri.sock")),
                ("red1", proxy.path("sec.sock")),
            ],
            filters: filters(&[M0_PVM, F2], vnet),
        },
    );

    let frames = vm_output();
    lab.send("svm", &frames);
    lab.send("pvm", &frames);
    let (got, raw) = read_frames(&mut out, frames.len(), vnet);
    assert_eq!(got, frames, "released in order, unchanged");
    assert_eq!(
        raw,
        wire(&frames, vnet),
        "outdev framing: be32 len{}",
        if vnet { " + be32 vnet_hdr_len 0" } else { "" }
    );
    assert!(
        read_for(&mut out, QUIET).is_empty(),
        "each frame released exactly once"
    );
    // filter-mirror copies and lets the frame go on: the client side got the PVM's
    // output too; filter-redirector stole the SVM's from the secondary's tap.
    let (_, raw) = lab.recv("hn0", frames.len());
    assert_eq!(raw, wire(&frames, false), "filter-mirror passes frames on");
    assert!(lab.quiet("hn1"), "filter-redirector passed a frame on");
    assert!(lab.quiet("pvm") && lab.quiet("svm"), "nothing flows back");

    let pri = diverge(&mut lab, &mut ctl);
    assert!(
        read_for(&mut out, QUIET).is_empty(),
        "held until the checkpoint"
    );
    let done = ctl.command("checkpoint-done");
    assert_eq!(done["ok"], true, "{done}");
    let (got, _) = read_frames(&mut out, 1, vnet);
    assert_eq!(got, [pri], "released after checkpoint-done");
    let stats = ctl.command("stats");
    let s = &stats["stats"];
    let n = frames.len() + 1;
    assert_eq!(s["frames_in"]["primary"], n, "{stats}");
    assert_eq!(s["frames_in"]["secondary"], n, "{stats}");
    assert_eq!(s["released"]["frames"], n, "{stats}");
    assert_eq!(s["released"]["by_flush"], 1, "{stats}");
    assert_eq!(s["checkpoints"]["requested"]["datagram"], 1, "{stats}");
    // Seven flows: TCP and UDP over IPv4, IPv6 and a VLAN, and the diverging one.
    assert_eq!(s["connections"]["created"], 7, "{stats}");
    println!(
        "vnet={vnet}: {n} frames from QEMU's filters, {} released ({} after the checkpoint), outdev {} bytes",
        s["released"]["frames"], s["released"]["by_flush"], s["outdev"]["written_bytes"]
    );
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

/// (2) The primary host of QEMU's documented COLO setup with colo-proxy in
/// place of colo-compare: `redire1` steals PVM output into primary_in, `f2` the
/// SVM's into secondary_in, and `redire0` takes colo-proxy's outdev back into the
/// client's netdev; the client reads exactly the bytes the PVM wrote.
fn redirectors_around_compare(vnet: bool) {
    let Some(bin) = qemu_with_stream_netdev() else {
        return;
    };
    let (mut proxy, mut ctl) = start_compare(vnet);
    let mut chardevs = compare_chardevs(&proxy);
    chardevs.push(("red1", proxy.path("sec.sock")));
    let mut lab = Lab::start(
        &bin,
        &Wiring {
            netdevs: NETDEVS,
            chardevs,
            // The indev redirector first: see the module comment.
            filters: filters(&[REDIRE0, REDIRE1, F2], vnet),
        },
    );

    let frames = vm_output();
    lab.send("svm", &frames);
    lab.send("pvm", &frames);
    let (got, raw) = lab.recv("hn0", frames.len());
    assert_eq!(raw, wire(&frames, false), "the client gets the PVM's bytes");
    assert_eq!(got, frames);
    assert!(lab.quiet("hn0"), "each frame released exactly once");
    assert!(lab.quiet("hn1"), "filter-redirector passed a frame on");
    assert!(lab.quiet("pvm") && lab.quiet("svm"), "nothing flows back");

    let pri = diverge(&mut lab, &mut ctl);
    assert!(lab.quiet("hn0"), "held until the checkpoint");
    let done = ctl.command("checkpoint-done");
    assert_eq!(done["ok"], true, "{done}");
    let (got, _) = lab.recv("hn0", 1);
    assert_eq!(got, [pri], "released to the client after checkpoint-done");
    println!(
        "vnet={vnet}: {} frames PVM -> redire1 -> colo-proxy -> redire0 -> client, byte-identical",
        frames.len() + 1
    );
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

#[test]
fn qemu_filters_mirror_and_redirector_feed_compare() {
    mirror_and_redirector_feed_compare(false);
}

#[test]
fn qemu_filters_mirror_and_redirector_feed_compare_vnet() {
    mirror_and_redirector_feed_compare(true);
}

#[test]
fn qemu_filters_redirectors_around_compare() {
    redirectors_around_compare(false);
}

#[test]
fn qemu_filters_redirectors_around_compare_vnet() {
    redirectors_around_compare(true);
}

/// `colo-proxy rewrite` listening on `to_in.sock`, `to_out.sock`, `from_in.sock` and
/// the control socket `ctl.sock`; its from-secondary-out is `from_secondary_out`
/// (`{dir}` is its directory). Returns it with its control socket connected.
fn start_rewrite(vnet: bool, from_secondary_out: &str) -> (Proxy, Control) {
    let mut extra = vec!["--control", "unix:{dir}/ctl.sock"];
    if vnet {
        extra.push("--vnet-hdr-support");
    }
    let mut proxy = Proxy::start_rewrite(from_secondary_out, &extra);
    wait_for_paths(
        &mut proxy,
        &["to_in.sock", "to_out.sock", "from_in.sock", "ctl.sock"],
    );
    let ctl = Control::new(proxy.connect("ctl.sock"));
    (proxy, ctl)
}

/// (3) The secondary host with `colo-proxy rewrite` in place of filter-rewriter:
/// the primary's `filter-mirror` (client traffic, `queue=tx` on `hn0`) feeds
/// to-secondary-in, `f1` (`queue=tx` indev on `hn1`) takes to-secondary-out to the
/// SVM, and `f2` (`queue=rx` outdev on `hn1`) steals the SVM's output into
/// from-secondary-in; from-secondary-out is read by the test (colo-compare's
/// secondary_in in real life). A passive open where the SVM chose another ISN is
/// translated both ways.
fn rewrite_between_redirectors(vnet: bool) {
    let Some(bin) = qemu_with_stream_netdev() else {
        return;
    };
    let (mut proxy, mut ctl) = start_rewrite(vnet, "unix:{dir}/from_out.sock");
    let mut from_out = proxy.connect("from_out.sock");
    let mut lab = Lab::start(
        &bin,
        &Wiring {
            netdevs: NETDEVS,
            chardevs: rewrite_chardevs(&proxy),
            filters: filters(&[M0, F1, F2], vnet),
        },
    );
    let syn_ack = TcpFlags::SYN.union(TcpFlags::ACK);
    let mut from_secondary = |lab: &mut Lab, f: Frame| {
        lab.send("svm", &[f]);
        let (mut got, _) = read_frames(&mut from_out, 1, vnet);
        got.remove(0)
    };
    let to_secondary = |lab: &mut Lab, f: Frame| {
        lab.send("hn0", std::slice::from_ref(&f));
        let (got, _) = lab.recv("pvm", 1);
        assert_eq!(got, [f], "filter-mirror passes client frames to the PVM");
        let (mut got, _) = lab.recv("svm", 1);
        got.remove(0)
    };

    let syn = seg(Towards::Vm, C_ISN, 0, TcpFlags::SYN, b"");
    assert_eq!(to_secondary(&mut lab, syn.clone()), syn, "SYN untouched");
    let sa = seg(Towards::Client, S_ISN, C_ISN + 1, syn_ack, b"");
    assert_eq!(
        from_secondary(&mut lab, sa.clone()),
        sa,
        "SYN-ACK untouched"
    );
    // The client acknowledges the primary's SYN-ACK: into the secondary's space.
    let ack = seg(Towards::Vm, C_ISN + 1, P_ISN + 1, TcpFlags::ACK, b"");
    assert_eq!(
        to_secondary(&mut lab, ack),
        seg(Towards::Vm, C_ISN + 1, S_ISN + 1, TcpFlags::ACK, b""),
        "client ACK moved into the SVM's sequence space (checksum included)"
    );
    // The SVM's answer: into the primary's space.
    let data = seg(
        Towards::Client,
        S_ISN + 1,
        C_ISN + 1,
        TcpFlags::ACK,
        b"hello",
    );
    assert_eq!(
        from_secondary(&mut lab, data),
        seg(
            Towards::Client,
            P_ISN + 1,
            C_ISN + 1,
            TcpFlags::ACK,
            b"hello"
        ),
        "SVM data moved into the PVM's sequence space (checksum included)"
    );
    let req = seg(Towards::Vm, C_ISN + 1, P_ISN + 6, TcpFlags::ACK, b"GET");
    assert_eq!(
        to_secondary(&mut lab, req),
        seg(Towards::Vm, C_ISN + 1, S_ISN + 6, TcpFlags::ACK, b"GET"),
    );
    assert!(
        lab.quiet("hn1"),
        "f2 passed SVM output to the secondary's tap"
    );
    assert!(lab.quiet("svm") && lab.quiet("pvm"), "a frame came twice");
    let stats = ctl.command("stats");
    assert_eq!(stats["stats"]["rewritten"], 3, "{stats}");
    assert_eq!(stats["stats"]["opens"]["offsets_learned"], 1, "{stats}");
    println!(
        "vnet={vnet}: colo-proxy rewrite between QEMU's mirror and redirectors: {} frames rewritten, {} offset learned",
        stats["stats"]["rewritten"], stats["stats"]["opens"]["offsets_learned"]
    );
    assert!(proxy.stop().success(), "{}", proxy.log_text());
}

#[test]
fn qemu_filters_rewrite_between_redirectors() {
    rewrite_between_redirectors(false);
}

#[test]
fn qemu_filters_rewrite_between_redirectors_vnet() {
    rewrite_between_redirectors(true);
}

/// (4) Both hosts of QEMU's documented setup in one QEMU, with `colo-proxy compare`
/// for colo-compare and `colo-proxy rewrite` for filter-rewriter: the client's
/// traffic is mirrored (`m0`) through rewrite into the SVM, the SVM's output is
/// stolen (`f2`) through rewrite into compare's secondary_in, the PVM's (`redire1`)
/// into primary_in, and compare's outdev goes back to the client (`redire0`). The
/// VMs chose different ISNs, so compare only sees equal streams if rewrite did its
/// job; a diverging reply asks for a checkpoint.
fn full_pair_through_qemu_filters(vnet: bool) {
    let Some(bin) = qemu_with_stream_netdev() else {
        return;
    };
    let (mut compare, mut compare_ctl) = start_compare(vnet);
    let to_compare = format!("unix:{},connect", compare.path("sec.sock").display());
    let (mut rewrite, mut rewrite_ctl) = start_rewrite(vnet, &to_compare);
    let mut chardevs = compare_chardevs(&compare);
    chardevs.extend(rewrite_chardevs(&rewrite));
    let mut lab = Lab::start(
        &bin,
        &Wiring {
            netdevs: NETDEVS,
            chardevs,
            filters: filters(&[M0, REDIRE0, REDIRE1, F1, F2], vnet),
        },
    );
    let syn_ack = TcpFlags::SYN.union(TcpFlags::ACK);

    // The client's frames reach the PVM as they are and the SVM rewritten.
    let client = |lab: &mut Lab, f: Frame, at_svm: Frame| {
        lab.send("hn0", std::slice::from_ref(&f));
        let (got, _) = lab.recv("pvm", 1);
        assert_eq!(got, [f], "client frame at the PVM");
        let (got, _) = lab.recv("svm", 1);
        assert_eq!(got, [at_svm], "client frame at the SVM");
    };
    // Both VMs answer; the client gets the PVM's answer, byte for byte.
    let answer = |lab: &mut Lab, pvm: Frame, svm: Frame| {
        lab.send("svm", &[svm]);
        lab.send("pvm", std::slice::from_ref(&pvm));
        let (got, raw) = lab.recv("hn0", 1);
        assert_eq!(raw, wire(std::slice::from_ref(&pvm), false));
        assert_eq!(got, [pvm]);
    };

    let syn = seg(Towards::Vm, C_ISN, 0, TcpFlags::SYN, b"");
    client(&mut lab, syn.clone(), syn);
    answer(
        &mut lab,
        seg(Towards::Client, P_ISN, C_ISN + 1, syn_ack, b""),
        seg(Towards::Client, S_ISN, C_ISN + 1, syn_ack, b""),
    );
    let ack = seg(Towards::Vm, C_ISN + 1, P_ISN + 1, TcpFlags::ACK, b"");
    client(
        &mut lab,
        ack,
        seg(Towards::Vm, C_ISN + 1, S_ISN + 1, TcpFlags::ACK, b""),
    );
    let req = seg(Towards::Vm, C_ISN + 1, P_ISN + 1, TcpFlags::ACK, b"GET /");
    client(
        &mut lab,
        req,
        seg(Towards::Vm, C_ISN + 1, S_ISN + 1, TcpFlags::ACK, b"GET /"),
    );
    let reply =
        |isn: u32, body: &[u8]| seg(Towards::Client, isn + 1, C_ISN + 6, TcpFlags::ACK, body);
    answer(
        &mut lab,
        reply(P_ISN, b"200 OK\n"),
        reply(S_ISN, b"200 OK\n"),
    );
    assert!(lab.quiet("hn0"), "each frame released exactly once");

    // The VMs disagree on the next bytes: held, checkpoint asked for.
    let pvm = seg(
        Towards::Client,
        P_ISN + 8,
        C_ISN + 6,
        TcpFlags::ACK,
        b"time=1111",
    );
    let svm = seg(
        Towards::Client,
        S_ISN + 8,
        C_ISN + 6,
        TcpFlags::ACK,
        b"time=2222",
    );
    lab.send("svm", &[svm]);
    lab.send("pvm", std::slice::from_ref(&pvm));
    let ev = compare_ctl.event("checkpoint-requested");
    println!("checkpoint event: {ev}");
    assert_eq!(ev["reason"], "payload", "{ev}");
    assert!(lab.quiet("hn0"), "held until the checkpoint");
    // The checkpoint makes the SVM a copy of the PVM; both proxies are told.
    let done = rewrite_ctl.command("checkpoint-done");
    assert_eq!(done["ok"], true, "{done}");
    let done = compare_ctl.command("checkpoint-done");
    assert_eq!(done["ok"], true, "{done}");
    let (got, _) = lab.recv("hn0", 1);
    assert_eq!(got, [pvm], "released to the client after checkpoint-done");
    assert!(
        lab.quiet("hn1"),
        "f2 passed SVM output to the secondary's tap"
    );

    let stats = compare_ctl.command("stats");
    let s = &stats["stats"];
    assert_eq!(s["released"]["frames"], 3, "{stats}");
    assert_eq!(s["divergences"]["payload"], 1, "{stats}");
    let rstats = rewrite_ctl.command("stats");
    assert_eq!(rstats["stats"]["opens"]["offsets_learned"], 1, "{rstats}");
    println!(
        "vnet={vnet}: client <-> QEMU filters <-> colo-proxy rewrite + compare: {} released, {} rewritten",
        s["released"]["frames"], rstats["stats"]["rewritten"]
    );
    assert!(rewrite.stop().success(), "{}", rewrite.log_text());
    assert!(compare.stop().success(), "{}", compare.log_text());
}

#[test]
fn qemu_filters_full_pair_compare_and_rewrite() {
    full_pair_through_qemu_filters(false);
}

#[test]
fn qemu_filters_full_pair_compare_and_rewrite_vnet() {
    full_pair_through_qemu_filters(true);
}
