//! `--notify-dev`: the Xen COLO notify protocol, byte for byte.

mod common;

use std::io::Write as _;
use std::time::Duration;

use colo_core::sim::{FlowAddrs, TcpSender};
use common::{Proxy, read_for, read_frames, wire, write_split};

fn msg(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn read_exact(stream: &mut impl std::io::Read, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    stream.read_exact(&mut v).expect("read notify");
    v
}

#[test]
fn compare_notify_dev_speaks_xen_protocol() {
    let mut proxy = Proxy::start_compare(&[
        "--notify-dev",
        "unix:{dir}/notify.sock",
        "--vnet-hdr-support",
    ]);
    let mut notify = proxy.connect("notify.sock");
    notify
        .write_all(&msg(b"COLO_USERSPACE_PROXY_INIT"))
        .unwrap();
    assert_eq!(
        read_exact(&mut notify, 29),
        msg(b"COLO_COMPARE_GET_XEN_INIT")
    );

    let mut pri = proxy.connect("pri.sock");
    let mut sec = proxy.connect("sec.sock");
    let mut out = proxy.connect("out.sock");
    let addrs = FlowAddrs::v4(3);
    let mut p = TcpSender::new(addrs, 5, 6);
    let mut s = TcpSender::new(addrs, 5, 6);
    let vnet = |f| common::with_vnet(f, true);
    let pf = vec![vnet(p.syn_ack()), vnet(p.data(b"abc1"))];
    let sf = vec![vnet(s.syn_ack()), vnet(s.data(b"abc2"))];
    write_split(&mut pri, &wire(&pf, true), 1);
    write_split(&mut sec, &wire(&sf, true), 2);

    // Outgoing notify frames never carry vnet_hdr_len, whatever --vnet-hdr-support says.
    assert_eq!(read_exact(&mut notify, 17), msg(b"DO_CHECKPOINT"));
    assert_eq!(read_frames(&mut out, 1, true).0, pf[..1]);
    assert!(read_for(&mut out, Duration::from_millis(200)).is_empty());

    // An unknown message is logged, counted and harmless.
    notify.write_all(&msg(b"HELLO")).unwrap();
    notify.write_all(&msg(b"COLO_CHECKPOINT")).unwrap();
    assert_eq!(read_frames(&mut out, 1, true).0, pf[1..]);
    let log = proxy.log_text();
    assert!(log.contains("unsupported notify message"), "{log}");
    assert!(log.contains("from=\"notify-dev\""), "{log}");
    assert!(proxy.stop().success());
}
