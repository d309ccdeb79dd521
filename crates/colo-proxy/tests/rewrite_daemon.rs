//! `colo-proxy rewrite` over Unix sockets: a passive open where the secondary VM
//! picked another ISN than the primary is translated both ways (the secondary's
//! sequence numbers into the primary's space, the client's acknowledgements into
//! the secondary's), with valid TCP checksums, and `checkpoint-done` on the control
//! socket zeroes the offsets.

mod common;

use colo_core::Frame;
use colo_core::classify::TcpFlags;
use colo_core::sim::Towards;
use common::{C_ISN, Control, P_ISN, Proxy, S_ISN, read_frames, seg, wire, with_vnet};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// `(seq, ack)` of a frame, after checking its TCP checksum against a full
/// recomputation.
fn seq_ack(frame: &Frame) -> (u32, u32) {
    let eth = frame.ethernet_bytes();
    let p = SlicedPacket::from_ethernet(eth).expect("parses");
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        panic!("not TCP")
    };
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let full = tcp
        .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
        .unwrap();
    assert_eq!(tcp.checksum(), full, "TCP checksum after the proxy");
    (tcp.sequence_number(), tcp.acknowledgment_number())
}

struct Rig {
    proxy: Proxy,
    to_in: std::os::unix::net::UnixStream,
    to_out: std::os::unix::net::UnixStream,
    from_in: std::os::unix::net::UnixStream,
    from_out: std::os::unix::net::UnixStream,
    vnet: bool,
}

impl Rig {
    fn start(vnet: bool) -> (Self, Control) {
        let mut extra = vec!["--control", "unix:{dir}/ctl.sock"];
        if vnet {
            extra.push("--vnet-hdr-support");
        }
        let mut proxy = Proxy::start_rewrite("unix:{dir}/from_out.sock", &extra);
        let to_out = proxy.connect("to_out.sock");
        let from_out = proxy.connect("from_out.sock");
        let from_in = proxy.connect("from_in.sock");
        let to_in = proxy.connect("to_in.sock");
        let ctl = Control::new(proxy.connect("ctl.sock"));
        (
            Self {
                proxy,
                to_in,
                to_out,
                from_in,
                from_out,
                vnet,
            },
            ctl,
        )
    }

    /// Client frame in on to_secondary_in, what comes out of to_secondary_out.
    fn send_to_secondary(&mut self, f: Frame) -> Frame {
        use std::io::Write as _;
        let f = with_vnet(f, self.vnet);
        self.to_in.write_all(&wire(&[f], self.vnet)).unwrap();
        let (mut got, _) = read_frames(&mut self.to_out, 1, self.vnet);
        got.remove(0)
    }

    /// Secondary VM frame in on from_secondary_in, what comes out of from_secondary_out.
    fn send_from_secondary(&mut self, f: Frame) -> Frame {
        use std::io::Write as _;
        let f = with_vnet(f, self.vnet);
        self.from_in.write_all(&wire(&[f], self.vnet)).unwrap();
        let (mut got, _) = read_frames(&mut self.from_out, 1, self.vnet);
        got.remove(0)
    }
}

fn passive_open_rewritten_then_checkpoint_zeroes_offsets(vnet: bool) {
    let (mut rig, mut ctl) = Rig::start(vnet);
    let syn_ack = TcpFlags::SYN.union(TcpFlags::ACK);

    // Handshake: SYN and SYN-ACK pass as they are.
    let syn = seg(Towards::Vm, C_ISN, 0, TcpFlags::SYN, b"");
    let out = rig.send_to_secondary(syn.clone());
    assert_eq!(out, with_vnet(syn, vnet), "client SYN passes untouched");
    let sa = seg(Towards::Client, S_ISN, C_ISN + 1, syn_ack, b"");
    let out = rig.send_from_secondary(sa.clone());
    assert_eq!(
        out,
        with_vnet(sa, vnet),
        "secondary SYN-ACK passes untouched"
    );

    // The client acknowledges the primary's SYN-ACK: moved into the secondary's space.
    let ack = seg(Towards::Vm, C_ISN + 1, P_ISN + 1, TcpFlags::ACK, b"");
    let out = rig.send_to_secondary(ack);
    assert_eq!(out.vnet_hdr_len, if vnet { 10 } else { 0 });
    assert_eq!(seq_ack(&out), (C_ISN + 1, S_ISN + 1));

    // The secondary's data: moved into the primary's space.
    let data = seg(
        Towards::Client,
        S_ISN + 1,
        C_ISN + 1,
        TcpFlags::ACK,
        b"hello",
    );
    let out = rig.send_from_secondary(data);
    assert_eq!(seq_ack(&out), (P_ISN + 1, C_ISN + 1));
    assert!(out.data.ends_with(b"hello"));

    // A client request acknowledging it.
    let req = seg(Towards::Vm, C_ISN + 1, P_ISN + 6, TcpFlags::ACK, b"GET");
    let out = rig.send_to_secondary(req);
    assert_eq!(seq_ack(&out), (C_ISN + 1, S_ISN + 6));

    let s = ctl.command("stats");
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["stats"]["rewritten"], 3, "{s}");
    assert_eq!(s["stats"]["opens"]["offsets_learned"], 1, "{s}");
    assert_eq!(s["stats"]["connections"], 1, "{s}");

    // A checkpoint makes the secondary a copy of the primary: offsets are zero.
    let r = ctl.command("checkpoint-done");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["epoch"], 1, "{r}");
    let data = seg(
        Towards::Client,
        P_ISN + 6,
        C_ISN + 4,
        TcpFlags::ACK,
        b"world",
    );
    let out = rig.send_from_secondary(data.clone());
    assert_eq!(seq_ack(&out), (P_ISN + 6, C_ISN + 4));
    assert_eq!(
        out,
        with_vnet(data, vnet),
        "nothing to rewrite after the checkpoint"
    );
    let ack = seg(Towards::Vm, C_ISN + 4, P_ISN + 11, TcpFlags::ACK, b"");
    let out = rig.send_to_secondary(ack.clone());
    assert_eq!(
        out,
        with_vnet(ack, vnet),
        "nothing to rewrite after the checkpoint"
    );

    let r = ctl.command("failover");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(ctl.command("stats")["stats"]["failover"], true);
    assert!(rig.proxy.stop().success(), "{}", rig.proxy.log_text());
}

#[test]
fn rewrite_passive_open_and_checkpoint() {
    passive_open_rewritten_then_checkpoint_zeroes_offsets(false);
}

#[test]
fn rewrite_passive_open_and_checkpoint_vnet_hdr() {
    passive_open_rewritten_then_checkpoint_zeroes_offsets(true);
}

#[test]
fn rewrite_rejects_shared_endpoints() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args([
            "rewrite",
            "--to-secondary-in",
            "unix:/tmp/colo-rw-x",
            "--to-secondary-out",
            "unix:/tmp/colo-rw-x",
            "--from-secondary-in",
            "unix:/tmp/colo-rw-y",
            "--from-secondary-out",
            "unix:/tmp/colo-rw-z",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("same endpoint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
